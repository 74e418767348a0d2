"""Structure learning on the DREAM4 size-10 time series (networks 1-4, bundled in data/dream4).

For each network: infer_network fits the additive-sigmoid model on the fully connected
network by gradient matching with an L1 penalty, estimating the unobserved perturbation of
each time course (on for t < 500) as an unknown input per course and gene. Edges are
ranked by strength and scored against the gold standard (AUROC, AUPR), next to two
baselines computed here on the same data: |correlation| of levels and least-squares linear
ODE regression dx/dt ~ A x + b. Then the fitted model of network 1 is simulated for its five
courses, with the estimated inputs applied as pulses of the bias on [0, 500), and plotted
against the data (dream4_fit.png).

    python examples/dream4.py [--out dream4_fit.png]
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import genenet as gn  # noqa: E402


def simulate_courses(inferred: gn.InferredNetwork, data: gn.ExpressionData) -> gn.Trajectory:
    """The fitted model per course: start at the first sample, the estimated inputs on for t < 500."""
    model = inferred.model
    bias = model.params["bias"].detach()[0].numpy()
    conditions, x0 = {}, []
    for cond in data.conditions:
        delta = inferred.inputs.loc[cond]
        conditions[cond] = [gn.Pulse(gn.SetParameter("bias", float(bias[model.genes.index(g)] + delta[g]), gene=g),
                                     0.0, 500.0) for g in model.genes]
        first = data.wide(cond).sort_index().iloc[0]
        x0.append([first[g] for g in model.genes])
    times = np.unique(data.times)
    # rows are conditions x 1 parameter set; each row starts at its course's first sample
    return gn.simulate(model, times, x0=np.array(x0), perturbations=conditions, device="cpu")


def main(out: str = "dream4_fit.png") -> None:
    rows = []
    for n in (1, 2, 3, 4):
        data, gold = gn.load_dream4(n)
        inferred = gn.infer_network(data, input_window=(0.0, 500.0))
        ours = inferred.score(gold)
        corr = gn.score_edges(gn.baseline_scores(data, "correlation"), gold)
        lin = gn.score_edges(gn.baseline_scores(data, "linear-ode"), gold)
        rows.append([ours["auroc"], ours["aupr"], corr["auroc"], corr["aupr"], lin["auroc"], lin["aupr"]])
        if n == 1:
            first, first_data = inferred, data
    print(f"{'network':>8} | {'genenet':^15} | {'|correlation|':^15} | {'linear ODE':^15}")
    print(f"{'':>8} | {'AUROC':>7} {'AUPR':>7} | {'AUROC':>7} {'AUPR':>7} | {'AUROC':>7} {'AUPR':>7}")
    for n, r in zip((1, 2, 3, 4), rows):
        print(f"{n:>8} | {r[0]:7.3f} {r[1]:7.3f} | {r[2]:7.3f} {r[3]:7.3f} | {r[4]:7.3f} {r[5]:7.3f}")
    m = np.mean(rows, axis=0)
    print(f"{'mean':>8} | {m[0]:7.3f} {m[1]:7.3f} | {m[2]:7.3f} {m[3]:7.3f} | {m[4]:7.3f} {m[5]:7.3f}")
    print("\nnetwork 1, strongest inferred edges:")
    print(first.edges.head(8).to_string(index=False))

    traj = simulate_courses(first, first_data)
    genes = first.model.genes
    fig, axes = plt.subplots(1, 5, figsize=(18, 3.6), sharey=True)
    for ax, cond in zip(axes, first_data.conditions):
        wide = first_data.wide(cond).sort_index()
        row = first_data.conditions.index(cond)
        for i, g in enumerate(genes[:5]):
            ax.plot(wide.index, wide[g], "o", ms=3, color=f"C{i}")
            ax.plot(traj.t.numpy(), traj.y[row, :, i].detach().numpy(), "-", color=f"C{i}", label=g)
        ax.axvline(500, color="grey", lw=0.5)
        ax.set_title(f"network 1, {cond}")
        ax.set_xlabel("time")
    axes[0].set_ylabel("expression (first 5 genes)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="dream4_fit.png")
    main(parser.parse_args().out)
