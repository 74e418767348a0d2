"""Property-based checks (hypothesis) of networks and Hill kinetics."""

import numpy as np
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import genenet as gn

CPU = torch.device("cpu")


@st.composite
def networks(draw):
    n = draw(st.integers(1, 6))
    genes = [f"g{i}" for i in range(n)]
    pairs = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=12, unique=True))
    signs = draw(st.lists(st.sampled_from(["+", "-"]), min_size=len(pairs), max_size=len(pairs)))
    return gn.Network.from_edges([(genes[a], genes[b], s) for (a, b), s in zip(pairs, signs)], genes=genes)


@settings(max_examples=40, deadline=None)
@given(networks())
def test_topo_roundtrip_any_network(tmp_path_factory, net):
    assume(net.n_edges > 0)  # a .topo file lists edges only: an edgeless network cannot be written
    path = tmp_path_factory.mktemp("n") / "net.topo"
    gn.write_topo(net, path)
    back = gn.read_topo(path)
    assert back.edges == net.edges
    isolated = [g for g in net.genes if not net.in_edges(g) and not net.out_edges(g)]
    assert set(back.genes) == set(net.genes) - set(isolated)


@settings(max_examples=40, deadline=None)
@given(networks(), st.integers(0, 2**31 - 1))
def test_hill_production_between_its_bounds(net, seed):
    # every factor H lies in [1/lambda, 1], so g prod(1/lambda) <= production <= g
    model = gn.Hill.random(net, n=4, seed=seed)
    x = torch.as_tensor(np.random.default_rng(seed).uniform(0, 200, (4, net.n_genes)))
    p = model.row_params(None, 4, device=CPU, dtype=torch.float64)
    prod = model.production(torch.zeros(4), x, p).detach()
    g = p["production"].detach()
    low = g.clone()
    for e, edge in enumerate(net.edges):
        low[:, net.index(edge.target)] /= p["fold"].detach()[:, e]
    assert (prod <= g * (1 + 1e-12)).all()
    assert (prod >= low * (1 - 1e-12)).all()
    np.testing.assert_allclose(model.degradation(None, x, p).detach(), p["degradation"].detach() * x)
