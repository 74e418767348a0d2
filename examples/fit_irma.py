"""Fit a Hill model of IRMA, the 5-gene synthetic yeast network, to its switch-on and switch-off data.

Data: data/irma (Cantone et al. 2009; qPCR, one averaged series per experiment). Switch-on
(glucose -> galactose): samples 2..16 at t = 0, 20, ..., 280 min; switch-off (galactose ->
glucose): samples 2..21 at t = 0, 10, ..., 190 min (sample 1, the pre-shift state, is dropped;
see data/irma/SOURCE.md for why this reading of the time axis). The two media are two parameter
regimes (galactose activates Gal4-driven SWI5 transcription), so each experiment gets its own fit.
Network: data/networks/irma.tsv. Free: production, degradation and threshold; residuals in
log space (qPCR errors are multiplicative), a weak L2 prior on the log-parameters (one series
cannot pin down all 17 of them); initial states = first sample; 8 Latin-hypercube starts in one
batch, Levenberg-Marquardt. Prints losses and parameters, writes fit_irma.png.

    python examples/fit_irma.py [--out fit_irma.png]
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import genenet as gn  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"


def load(name: str, step: float) -> gn.ExpressionData:
    """One experiment as ExpressionData: drop the pre-shift sample, minutes from the shift."""
    wide = pd.read_csv(DATA / "irma" / f"irma_switch_{name}.tsv", sep="\t", index_col="gene").T
    wide = wide.iloc[1:].reset_index(drop=True)
    wide["time"] = step * np.arange(len(wide))
    wide["condition"] = f"switch-{name}"
    return gn.ExpressionData.from_wide(wide, condition="condition")


def fit_one(net: gn.Network, data: gn.ExpressionData, seed: int) -> gn.FitResult:
    wide = data.wide()
    level = wide.max()[list(net.genes)].to_numpy()
    k0 = np.full(net.n_genes, 0.03)  # per minute: mRNA half-lives of ~20-30 min
    start = gn.Hill(net, production=2 * k0 * level, degradation=k0, hill=2.0, fold=10.0)
    # a weak L2 prior on the log-parameters (around the start) keeps unidentifiable ones finite
    return gn.fit(start, data, free=["production", "degradation", "threshold"], method="lm", noise="log",
                  l2=0.05, multistart=8, seed=seed, progress=False, max_iter=100)


def main(out: str = "fit_irma.png") -> None:
    net = gn.load_network(DATA / "networks" / "irma.tsv")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row, (name, step) in enumerate((("on", 20.0), ("off", 10.0))):
        data = load(name, step)
        res = fit_one(net, data, seed=row)
        n_conv = int(res.starts.converged.sum())
        print(f"switch-{name}: loss {res.loss:.3f} (log-space residuals, {len(data)} points), "
              f"{n_conv}/8 starts converged; best start's reason: {res.reason}")
        table = res.params[["name", "entry", "value", "ci_low", "ci_high"]]
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        res.plot(axes=[axes[row]])
        axes[row].set_yscale("log")
        axes[row].set_xlabel("minutes after the medium shift")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="fit_irma.png")
    main(parser.parse_args().out)
