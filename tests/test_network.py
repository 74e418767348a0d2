import networkx as nx
import numpy as np
import pytest

import genenet as gn


def test_from_edges_sign_forms_and_order():
    net = gn.Network.from_edges([("A", "B", "+"), ("B", "C", -1), ("C", "A", "repression"), ("A", "C", "activation"),
                                 ("C", "C", 1)])
    assert net.genes == ["A", "B", "C"]
    assert [e.sign for e in net.edges] == [1, -1, -1, 1, 1]
    assert net.n_genes == 3 and net.n_edges == 5
    assert net.regulators("C") == ["B", "A", "C"]
    assert [e.sign for e in net.in_edges("C")] == [-1, 1, 1]
    assert net.regulators("B") == ["A"]
    source, target, sign = net.edges[1]
    assert (source, target, sign) == ("B", "C", -1) and net.edges[1].kind == "repression"
    assert [str(e) for e in net.out_edges("A")] == ["A -> B", "A -> C"]
    assert net.edge_index("A", "C") == 3


def test_explicit_gene_order_and_isolated_gene():
    net = gn.Network.from_edges([("A", "B", "-")], genes=["B", "A", "Z"])
    assert net.genes == ["B", "A", "Z"]
    assert net.regulators("Z") == []
    assert net.adjacency()[1, 0] == -1


@pytest.mark.parametrize("bad", ["x", 2, 0, "++", None, True])
def test_unknown_sign_is_named(bad):
    with pytest.raises(ValueError, match="unknown sign"):
        gn.Network.from_edges([("A", "B", bad)])


def test_duplicate_edge_empty_and_unknown_gene():
    with pytest.raises(ValueError, match="duplicate edge 'A' -> 'B'"):
        gn.Network.from_edges([("A", "B", "+"), ("A", "B", "-")])
    with pytest.raises(ValueError, match="empty network"):
        gn.Network.from_edges([])
    with pytest.raises(KeyError, match="'Q'"):
        gn.Network.from_edges([("A", "Q", "+")], genes=["A", "B"])
    net = gn.Network.from_edges([("A", "B", "+")])
    with pytest.raises(KeyError, match="unknown gene 'Q'"):
        net.regulators("Q")
    with pytest.raises(ValueError, match="triple"):
        gn.Network.from_edges([("A", "B")])


def test_networkx_roundtrip():
    net = gn.Network.from_edges([("A", "B", "+"), ("B", "A", "-"), ("B", "B", "-")], genes=["A", "B", "C"])
    g = net.to_networkx()
    assert isinstance(g, nx.DiGraph) and g["B"]["A"]["sign"] == -1
    back = gn.Network.from_networkx(g)
    assert back.genes == net.genes and set(back.edges) == set(net.edges)
    g2 = nx.DiGraph()
    g2.add_edge("X", "Y")
    with pytest.raises(ValueError, match="no 'sign' attribute"):
        gn.Network.from_networkx(g2)


def test_topo_and_tsv_roundtrip(tmp_path):
    net = gn.Network.from_edges([("A", "B", "+"), ("B", "A", "-"), ("A", "A", "+")])
    gn.write_topo(net, tmp_path / "n.topo")
    assert (tmp_path / "n.topo").read_text().splitlines()[:2] == ["Source Target Type", "A B 1"]
    gn.write_tsv(net, tmp_path / "n.tsv")
    for path in (tmp_path / "n.topo", tmp_path / "n.tsv"):
        back = gn.read_network(path)
        assert back.edges == net.edges


def test_topo_bad_type_names_line(tmp_path):
    (tmp_path / "bad.topo").write_text("Source Target Type\nA B 1\nB A 3\n")
    with pytest.raises(ValueError, match=r"bad.topo:3.*type '3'"):
        gn.read_topo(tmp_path / "bad.topo")
    (tmp_path / "bad.tsv").write_text("A\tB\tmaybe\n")
    with pytest.raises(ValueError, match="unknown sign"):
        gn.read_tsv(tmp_path / "bad.tsv")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="unknown network file type '.json'"):
        gn.read_network(tmp_path / "x.json")
    with pytest.raises(FileNotFoundError, match="missing.topo"):
        gn.read_network(tmp_path / "missing.topo")


def test_bundled_networks():
    names = gn.bundled_networks()
    for name in ("toggle_switch", "repressilator", "myeloid", "tcim"):
        assert name in names
    tcim = gn.load_network("tcim")
    assert tcim.n_genes == 32 and tcim.n_edges == 159
    rep = gn.load_network("repressilator")
    assert all(e.sign == -1 for e in rep.edges) and rep.n_genes == 3
    with pytest.raises(KeyError, match="unknown network 'nope'"):
        gn.load_network("nope")
    assert np.all(np.isin(tcim.signs, [-1, 1]))


def test_random_network():
    net = gn.Network.random(30, regulators=3, seed=4)
    assert net.n_genes == 30 and net.n_edges == 90
    assert all(len(net.regulators(g)) == 3 for g in net.genes)
    assert gn.Network.random(30, 3, seed=4) == net and gn.Network.random(30, 3, seed=5) != net
    no_loops = gn.Network.random(5, 4, seed=0, self_loops=False)
    assert all(e.source != e.target for e in no_loops.edges)
    with pytest.raises(ValueError, match="regulators must lie in"):
        gn.Network.random(3, 4)
