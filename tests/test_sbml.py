"""SBML import against the SBML Test Suite (the even half of its time-course cases without events or
packages, tests/data/sbml-test-suite) and BioModels: every case the reader accepts must match the
suite's expected values within the suite's own tolerances; what it refuses it refuses by name."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import genenet as gn
from genenet.io.sbml import sbml_values
from reference import central_difference_gradient

DATA = Path(__file__).parent / "data"
SUITE = DATA / "sbml-test-suite"
MANIFEST = pd.read_csv(SUITE / "MANIFEST.tsv", sep="\t", comment="#", header=None, dtype=str,
                       names=["case", "file", "cls", "tier", "abs", "rel", "gen", "components", "tags"])


def _settings(case: str) -> dict:
    lines = (SUITE / case / f"{case}-settings.txt").read_text().splitlines()
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lines if ":" in line)}


def run_case(case: str, file: str) -> str:
    """'pass', or 'refused: <why>'; an AssertionError when an accepted case disagrees."""
    try:
        model = gn.read_sbml(SUITE / case / file)
    except ValueError as e:
        return f"refused: {e}"
    s = _settings(case)
    ref = pd.read_csv(SUITE / case / f"{case}-results.csv")
    # the first column is the time; a model may name its own ids 'time' or 'Time' (pandas renames repeats)
    columns = [c.strip() for c in (SUITE / case / f"{case}-results.csv").read_text().splitlines()[0].split(",")]
    traj = gn.simulate(model, ref.iloc[:, 0].to_numpy(), rtol=1e-10, atol=1e-12)
    names = [v.strip() for v in s["variables"].split(",") if v.strip()]
    amounts = [v.strip() for v in s.get("amount", "").split(",") if v.strip()]
    values = sbml_values(model, traj, names, amounts)
    for name in names:
        got = values[name][0].numpy()
        want = ref.iloc[:, 1 + columns[1:].index(name)].astype(float).to_numpy()  # "INF", "NaN" too
        tol = float(s["absolute"]) + float(s["relative"]) * np.abs(want)
        same = (got == want) | (np.isnan(got) & np.isnan(want))  # the suite's inf and NaN results match themselves
        with np.errstate(invalid="ignore"):  # inf - inf where both are inf: matched above
            err = np.abs(got - want)
        assert np.all(same | (err <= tol)), f"case {case}, {name}: max error {err.max():.3g}"
    return "pass"


# a fixed sample for the default run (every 8th case: all kinds of components); the whole suite is `slow`
SAMPLE = MANIFEST.iloc[::8]


# a model that reads but fails to compile natively would only warn and run on the torch loop: an error here
@pytest.mark.filterwarnings("error::genenet.native.NativeKernelWarning")
@pytest.mark.parametrize("case, file", list(zip(SAMPLE.case, SAMPLE.file)))
def test_suite_sample(case, file):
    out = run_case(case, file)
    assert out == "pass" or out.startswith("refused: "), out


@pytest.mark.slow
def test_suite_tier0_reactions_only_all_pass():
    # the cases with reactions and plain math only: all read, none disagrees
    tier0 = MANIFEST[MANIFEST.tier == "tier0"]
    outcomes = [run_case(c, f) for c, f in zip(tier0.case, tier0.file)]
    passed = sum(o == "pass" for o in outcomes)
    refused = [o for o in outcomes if o != "pass"]
    assert not refused and passed == len(tier0), refused


@pytest.mark.slow
@pytest.mark.filterwarnings("error::genenet.native.NativeKernelWarning")
def test_whole_suite():
    outcomes = {c: run_case(c, f) for c, f in zip(MANIFEST.case, MANIFEST.file)}
    passed = sum(o == "pass" for o in outcomes.values())
    refused = {c: o for c, o in outcomes.items() if o != "pass"}
    assert passed == len(outcomes), refused  # every case of the subset


def test_refusals_name_the_construct():
    events = (DATA / "sbml-test-suite").parent / "events.xml"
    events.write_text("""<?xml version="1.0" encoding="UTF-8"?>
<sbml xmlns="http://www.sbml.org/sbml/level3/version2/core" level="3" version="2">
  <model id="m"><listOfCompartments><compartment id="c" size="1" constant="true"/></listOfCompartments>
  <listOfSpecies><species id="A" compartment="c" initialAmount="1" hasOnlySubstanceUnits="false"
     boundaryCondition="false" constant="false"/></listOfSpecies>
  <listOfEvents><event id="pulse" useValuesFromTriggerTime="true"><trigger initialValue="false" persistent="true">
    <math xmlns="http://www.w3.org/1998/Math/MathML"><apply><gt/><csymbol encoding="text"
      definitionURL="http://www.sbml.org/sbml/symbols/time"> t </csymbol><cn> 1 </cn></apply></math></trigger>
    <listOfEventAssignments><eventAssignment variable="A"><math xmlns="http://www.w3.org/1998/Math/MathML">
      <cn> 0 </cn></math></eventAssignment></listOfEventAssignments></event></listOfEvents>
  </model></sbml>""")
    try:
        with pytest.raises(ValueError, match="events are not supported: pulse"):
            gn.read_sbml(events)
        with pytest.raises(ValueError, match="events are not supported: pulse"):
            gn.read_sbml(events.read_text())  # the SBML text itself
    finally:
        events.unlink()
    with pytest.raises(FileNotFoundError):
        gn.read_sbml(DATA / "nothing.xml")
    with pytest.raises(ValueError, match="not a readable SBML model"):
        gn.read_sbml("<sbml>")


@pytest.mark.heavy
def test_repressilator_from_biomodels_oscillates_and_takes_perturbations():
    model = gn.read_sbml(DATA / "BIOMD0000000012.xml")
    assert {"PX", "PY", "PZ", "X", "Y", "Z"} <= set(model.genes)
    t = np.linspace(0, 600, 601)  # the period is about 125 (time units of the file)
    traj = gn.simulate(model, t, perturbations=[gn.Condition([]), gn.Knockout("X")], rtol=1e-6, atol=1e-9)
    px = traj["PX"].detach().numpy()  # (2, T)
    late = px[0, 300:]
    peaks = np.nonzero((late[1:-1] > late[:-2]) & (late[1:-1] > late[2:]))[0]
    assert len(peaks) >= 2 and late.max() > 10 * late.min()  # sustained oscillation
    assert px[1, -1] < 1e-6 * late.max()  # no mRNA X: no protein X


def test_cell_cycle_conserved_cdc2_steady_state_in_its_class():
    # Tyson 1991: total cdc2 (free + cyclin-bound forms) is conserved; the reduced steady-state system keeps it
    model = gn.read_sbml(DATA / "BIOMD0000000005.xml")
    laws = model.conservation_laws()
    assert laws is not None
    x0 = gn.simulate(model, [0.0]).y[:, 0].detach()
    ss = gn.steady_state(model, method="integrate")
    L = np.asarray(laws[0])
    np.testing.assert_allclose(ss.x.numpy() @ L.T, x0.numpy() @ L.T, rtol=1e-8, atol=1e-10)


def test_assigned_ids_compartments_and_amounts_by_id_on_the_trajectory():
    # S is a concentration in a compartment of size 2; 'flux' an assignment rule over S and k: per row
    doc = """<?xml version="1.0" encoding="UTF-8"?>
<sbml xmlns="http://www.sbml.org/sbml/level3/version2/core" level="3" version="2">
  <model id="m"><listOfCompartments><compartment id="cell" size="2" constant="true"/></listOfCompartments>
  <listOfSpecies><species id="S" compartment="cell" initialConcentration="1" hasOnlySubstanceUnits="false"
    boundaryCondition="false" constant="false"/></listOfSpecies>
  <listOfParameters><parameter id="k" value="0.5" constant="true"/>
    <parameter id="flux" constant="false"/></listOfParameters>
  <listOfRules><assignmentRule variable="flux"><math xmlns="http://www.w3.org/1998/Math/MathML">
    <apply><times/><ci>k</ci><ci>S</ci></apply></math></assignmentRule></listOfRules>
  <listOfReactions><reaction id="decay" reversible="false"><listOfReactants>
    <speciesReference species="S" stoichiometry="1" constant="true"/></listOfReactants>
    <kineticLaw><math xmlns="http://www.w3.org/1998/Math/MathML"><apply><times/><ci>cell</ci><ci>k</ci><ci>S</ci>
    </apply></math></kineticLaw></reaction></listOfReactions></model></sbml>"""
    model = gn.read_sbml(doc)
    t = np.linspace(0, 4, 9)
    k = np.array([0.5, 1.0, 2.0])
    traj = gn.simulate(model, t, params={"k": k[:, None]}, rtol=1e-10, atol=1e-12)
    exact = np.exp(-np.outer(k, t))  # dS/dt = -k S in concentration
    np.testing.assert_allclose(traj["S"].detach().numpy(), exact, rtol=1e-8)
    np.testing.assert_allclose(traj["flux"].detach().numpy(), k[:, None] * exact, rtol=1e-8)
    np.testing.assert_allclose(traj.amount("S").detach().numpy(), 2 * exact, rtol=1e-8)
    np.testing.assert_allclose(traj["cell"].detach().numpy(), 2.0)


def _l3(body: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<sbml xmlns="http://www.sbml.org/sbml/level3/version2/core" '
            f'level="3" version="2"><model id="m">{body}</model></sbml>')


MATH = 'xmlns="http://www.w3.org/1998/Math/MathML"'
TIME_CSYMBOL = '<csymbol encoding="text" definitionURL="http://www.sbml.org/sbml/symbols/time">t</csymbol>'


def test_growing_compartment_keeps_amounts_and_reads_concentrations():
    # dV/dt = g (V0 = 1); reaction S -> at k [S] V = k n: the amount decays as exp(-k t), the concentration
    # also dilutes: [S] = 2 exp(-k t) / (1 + g t)
    doc = _l3(f"""<listOfCompartments><compartment id="C" size="1" constant="false"/></listOfCompartments>
  <listOfSpecies><species id="S" compartment="C" initialConcentration="2" hasOnlySubstanceUnits="false"
    boundaryCondition="false" constant="false"/></listOfSpecies>
  <listOfParameters><parameter id="k" value="0.7" constant="true"/><parameter id="g" value="0.5" constant="true"/>
  </listOfParameters>
  <listOfRules><rateRule variable="C"><math {MATH}><ci>g</ci></math></rateRule></listOfRules>
  <listOfReactions><reaction id="decay" reversible="false"><listOfReactants>
    <speciesReference species="S" stoichiometry="1" constant="true"/></listOfReactants>
    <kineticLaw><math {MATH}><apply><times/><ci>k</ci><ci>S</ci><ci>C</ci></apply></math></kineticLaw>
  </reaction></listOfReactions>""")
    model = gn.read_sbml(doc)
    t = np.linspace(0, 4, 9)
    traj = gn.simulate(model, t, perturbations=[gn.Condition([]), gn.Knockout("S")], rtol=1e-10, atol=1e-12)
    n = 2 * np.exp(-0.7 * t)
    np.testing.assert_allclose(traj["C"][0].detach().numpy(), 1 + 0.5 * t, rtol=1e-9)
    np.testing.assert_allclose(traj["S"][0].detach().numpy(), n / (1 + 0.5 * t), rtol=1e-8)
    np.testing.assert_allclose(traj.amount("S")[0].detach().numpy(), n, rtol=1e-8)
    assert float(traj["S"][1].detach().abs().max()) == 0.0  # a knockout of S: no start, nothing made
    got = sbml_values(model, traj, ["S"], amounts=["S"])["S"][0].numpy()
    np.testing.assert_allclose(got, n, rtol=1e-8)
    table = traj.to_frame(rows=[0])  # tables and plots show the concentration too
    np.testing.assert_allclose(table[table.gene == "S"].value.to_numpy(), n / (1 + 0.5 * t), rtol=1e-8)


def test_stoichiometry_a_rule_changes_and_models_without_states():
    # the product stoichiometry of 'make' is nS = 1 + t (an assignment rule on its species reference):
    # dS/dt = k (1 + t), S = k (t + t^2 / 2); 'p' has no state: p = 2 t + q, q = 3 from an initial assignment
    doc = _l3(f"""<listOfCompartments><compartment id="C" size="1" constant="true"/></listOfCompartments>
  <listOfSpecies><species id="S" compartment="C" initialAmount="0" hasOnlySubstanceUnits="true"
    boundaryCondition="false" constant="false"/></listOfSpecies>
  <listOfParameters><parameter id="k" value="0.3" constant="true"/><parameter id="q" constant="true"/>
    <parameter id="p" constant="false"/></listOfParameters>
  <listOfInitialAssignments><initialAssignment symbol="q"><math {MATH}><apply><quotient/><cn>7</cn><cn>2</cn>
    </apply></math></initialAssignment></listOfInitialAssignments>
  <listOfRules><assignmentRule variable="nS"><math {MATH}><apply><plus/><cn>1</cn>{TIME_CSYMBOL}</apply></math>
    </assignmentRule>
    <assignmentRule variable="p"><math {MATH}><apply><plus/><apply><times/><cn>2</cn>{TIME_CSYMBOL}</apply>
      <ci>q</ci></apply></math></assignmentRule></listOfRules>
  <listOfReactions><reaction id="make" reversible="false"><listOfProducts>
    <speciesReference id="nS" species="S" constant="false"/></listOfProducts>
    <kineticLaw><math {MATH}><ci>k</ci></math></kineticLaw></reaction></listOfReactions>""")
    model = gn.read_sbml(doc)
    t = np.linspace(0, 3, 7)
    traj = gn.simulate(model, t, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(traj["S"][0].detach().numpy(), 0.3 * (t + t ** 2 / 2), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(traj["nS"][0].detach().numpy(), 1 + t)
    np.testing.assert_allclose(traj["p"][0].detach().numpy(), 2 * t + 3)  # quotient truncates: 7 / 2 -> 3
    # a perturbation of the reaction reaches its companion (the part its changing stoichiometry makes)
    half = gn.read_sbml(doc, targets={"E": ["make"]})
    tr = gn.simulate(half, t, perturbations=[gn.Knockdown("E", 0.5)], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(tr["S"][0].detach().numpy(), 0.15 * (t + t ** 2 / 2), rtol=1e-8, atol=1e-12)
    # no states at all: the assignments alone, rows for each parameter set
    alone = gn.read_sbml(_l3(f"""<listOfParameters><parameter id="a" value="2" constant="true"/>
  <parameter id="b" constant="false"/></listOfParameters><listOfRules><assignmentRule variable="b">
  <math {MATH}><apply><rem/><apply><minus/><apply><times/><ci>a</ci>{TIME_CSYMBOL}</apply></apply><cn>3</cn></apply>
  </math></assignmentRule></listOfRules>"""))
    assert alone.genes == []
    tr = gn.simulate(alone, t, params={"a": np.array([[2.0], [1.0]])})
    assert tr.y.shape == (2, 7, 0) and tr.success
    np.testing.assert_allclose(tr["b"].numpy(), np.fmod(-np.outer([2.0, 1.0], t), 3))  # rem: the sign of -a t


@pytest.mark.parametrize("kind", ["hill", "two_stage", "sigmoid"])
def test_write_sbml_round_trip_simulates_the_same(kind, tmp_path):
    net = gn.Network.from_edges([("A", "B", "-"), ("B", "A", "-"), ("A", "C", "+"), ("C", "C", "+")])
    if kind == "hill":
        model = gn.Hill(net, production=[4.0, 3.0, 2.0], degradation=[1.0, 0.7, 0.5], threshold=[1.5, 2.0, 1.0, 0.8],
                        hill=[2.0, 3.0, 1.5, 4.0], fold=[5.0, 8.0, 3.0, 10.0])
    elif kind == "two_stage":
        model = gn.TwoStage(net, transcription=[4.0, 3.0, 2.0], protein_degradation=[0.5, 0.4, 0.3])
    else:  # the logistic written out as 1 / (1 + exp(-u))
        model = gn.Sigmoid(net, production=[4.0, 3.0, 2.0], weight=[-2.0, -1.5, 3.0, 0.5], bias=[0.5, -0.2, -1.0])
    path = tmp_path / "model.xml"
    text = gn.write_sbml(model, path)
    assert path.read_text() == text and "<sbml" in text
    back = gn.read_sbml(path)
    t = np.linspace(0, 10, 11)
    x0 = np.linspace(0.2, 1.5, len(model.genes))
    ref = gn.simulate(model, t, x0=x0, rtol=1e-10, atol=1e-12).y[0].detach().numpy()
    got = gn.simulate(back, t, x0=x0, rtol=1e-10, atol=1e-12).y[0].detach().numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-7, atol=1e-9)
    if kind == "hill":
        assert back.genes == ["A", "B", "C"] and float(back.params["threshold_A_B"].detach()) == 1.5


# every gene-regulation model of shared/data/biomodels without events (139 and 316 have events: refused)
BIOMODELS = ["BIOMD0000000005", "BIOMD0000000012", "BIOMD0000000016", "BIOMD0000000021", "BIOMD0000000035",
             "BIOMD0000000055", "BIOMD0000000065", "BIOMD0000000156", "BIOMD0000000201", "BIOMD0000000507"]


@pytest.mark.heavy
@pytest.mark.parametrize("biomodel", BIOMODELS)
def test_biomodels_match_libroadrunner(biomodel):
    # an independent SBML simulator (libroadrunner's CVODE) on the same files, both at rtol 1e-10: every
    # species within 1e-6 relative at every save time (the floor: 1e-6 of the species' largest value)
    import roadrunner

    path = str(DATA / f"{biomodel}.xml")
    rr = roadrunner.RoadRunner(path)
    rr.integrator.relative_tolerance, rr.integrator.absolute_tolerance = 1e-10, 1e-12
    rr.integrator.maximum_num_steps = 100000
    res = rr.simulate(0, 30, 31)
    cols = [c.strip("[]") for c in res.colnames[1:]]
    model = gn.read_sbml(path)
    with torch.no_grad():
        traj = gn.simulate(model, np.asarray(res[:, 0]), method="rodas5", rtol=1e-10, atol=1e-12)
    assert traj.success
    values = sbml_values(model, traj, cols)
    for k, c in enumerate(cols):
        want = np.asarray(res[:, k + 1])
        np.testing.assert_allclose(values[c][0].numpy(), want, rtol=1e-6, atol=1e-6 * np.abs(want).max() + 1e-300,
                                   err_msg=f"{biomodel} {c}")


@pytest.mark.heavy
@pytest.mark.parametrize("biomodel", ["BIOMD0000000005", "BIOMD0000000012", "BIOMD0000000021", "BIOMD0000000156",
                                      "BIOMD0000000201"])
def test_biomodels_steady_states_match_libroadrunner(biomodel):
    # where roadrunner's NLEQ (with its moiety reduction) finds a steady state with no negative species, genenet's
    # steady_state from the file's start finds the same one (the others: roadrunner fails, or finds a negative one)
    import roadrunner

    path = str(DATA / f"{biomodel}.xml")
    rr = roadrunner.RoadRunner(path)
    rr.conservedMoietyAnalysis = True
    rr.steadyState()
    names, want = [s.strip("[]") for s in rr.steadyStateSelections], np.asarray(rr.getSteadyStateValues())
    scale = max(np.abs(want).max(), 1.0)
    assert (want >= -1e-12 * scale).all()  # (156: zeros to rounding)
    model = gn.read_sbml(path)
    with torch.no_grad():
        ss = gn.steady_state(model)
    assert bool(np.all(ss.converged))
    got = ss.x.reshape(-1).numpy()[[model.genes.index(n) for n in names]]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9 * scale)


@pytest.mark.heavy
def test_imported_repressilator_gradient_and_fit_recover_its_rate_constants():
    # the repressilator from BioModels, its own trajectory with 2 % noise: gradients of the imported model's
    # loss match central finite differences, and lm recovers the mRNA lifetime and the maximal translation
    # rate from 30 % / 20 % off: the true values inside the fit's 95 % Gauss-Newton intervals, which are tight
    from genenet.fit import FitProblem

    true = gn.read_sbml(DATA / "BIOMD0000000012.xml")
    t = np.linspace(0, 120, 41)
    traj = gn.simulate(true, t, rtol=1e-10, atol=1e-12)
    data = gn.ExpressionData.from_trajectory(traj, noise=0.02, seed=1)
    x0 = traj.y[0, 0].detach().numpy()  # the file's start (the data's noisy first point would bias the fit)
    tau, ps = float(true.params["tau_mRNA"].detach()), float(true.params["ps_a"].detach())
    start = gn.read_sbml(DATA / "BIOMD0000000012.xml")
    start.set_params(tau_mRNA=1.3 * tau, ps_a=0.8 * ps)
    prob = FitProblem(start, data, free=["tau_mRNA", "ps_a"], x0=x0, rtol=1e-10, atol=1e-12)
    th = prob.theta0[None]
    _, g = prob.gradient(th)
    fd = central_difference_gradient(prob.loss, th)
    torch.testing.assert_close(g, fd, rtol=1e-5, atol=1e-7)
    res = gn.fit(start, data, free=["tau_mRNA", "ps_a"], x0=x0, method="lm", progress=False)
    assert res.converged
    table = res.params.set_index("name")
    for name, value in (("tau_mRNA", tau), ("ps_a", ps)):
        lo, hi = table.loc[name, "ci_low"], table.loc[name, "ci_high"]
        assert lo <= value <= hi and hi - lo < 0.1 * value, (name, value, lo, hi)
