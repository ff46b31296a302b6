"""The Table 2 command's plot: per (image, target), certified radius <= CLEVER score <= CW distortion.

One panel per norm (L2, Linf). A pair is drawn at x = its CW distortion (its best attack's where
the attacks CSV has `best` rows, see tables.found_column): a circle at its CLEVER
score, a triangle at its certified radius (when certified), joined by a segment. The diagonal
y = x is the CW distortion itself, so everything should lie on or below it: a circle above it
(red ring) is a CLEVER score that overstated robustness, a triangle above it (red cross) a proof
that an example contradicts, i.e. a bug. Log axes, so that CIFAR's distortions (around 0.1-1)
and MNIST's (around 1-5) both show.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cleverscore.scoring.tables import ORDERED, found_column, order_violations


def _limits(networks: list[tuple[str, pd.DataFrame]], columns: tuple[str, ...]) -> tuple[float, float]:
    values = np.concatenate([p[c].to_numpy(float) for _, p in networks for c in columns if c in p])
    values = values[np.isfinite(values) & (values > 0)]
    if not len(values):  # nothing positive to place on log axes: any range will do
        return 0.1, 10.0
    return values.min() / 1.3, values.max() * 1.3


def _panel(ax, networks: list[tuple[str, pd.DataFrame]], norm: str) -> None:
    from matplotlib.ticker import NullFormatter

    clever, cert, cw, best = ORDERED[norm]
    low, high = _limits(networks, (clever, cert, cw, best))
    overstated = bugs = 0
    names = sorted({found_column(pairs, norm)[1] for _, pairs in networks})
    found = " or ".join(names)
    for k, (name, pairs) in enumerate(networks):
        colour = f"C{k % 10}"
        x = pairs[found_column(pairs, norm)[0]].to_numpy(float)
        y, c = pairs[clever].to_numpy(float), pairs[cert].to_numpy(float)
        # an infinite radius (the whole input box certified) is drawn at the top edge
        c = np.where(np.isinf(c), high, c)
        has = np.isfinite(c) & (c > 0)
        ax.vlines(x[has], c[has], y[has], colors=colour, lw=0.6, alpha=0.5)
        ax.scatter(x, y, s=14, color=colour, alpha=0.8, label=f"{name} CLEVER")
        if has.any():
            ax.scatter(x[has], c[has], s=14, marker="v", color=colour, alpha=0.8, label=f"{name} certified")
        flags = order_violations(pairs, norm)
        up, bug = flags["clever_above_cw"].to_numpy(), flags["certified_above_cw"].to_numpy()
        # labelled once per panel, so the legend explains the red marks without repeating them
        ax.scatter(x[up], y[up], s=60, facecolors="none", edgecolors="red", lw=1.2,
                   label=f"CLEVER above {found}" if up.any() and not overstated else None)
        ax.scatter(x[bug], c[bug], s=70, marker="x", color="red", lw=1.5,
                   label=f"certified above {found} (bug)" if bug.any() and not bugs else None)
        overstated, bugs = overstated + int(up.sum()), bugs + int(bug.sum())
    ax.plot([low, high], [low, high], "k--", lw=1, label=f"y = x ({found})")
    ax.set(xscale="log", yscale="log", xlim=(low, high), ylim=(low, high), xlabel=f"{found} {norm} distortion",
           ylabel=f"{norm}: CLEVER score (o), certified radius (v)",
           title=f"{norm}: CLEVER above {found} on {overstated}, certified above {found} on {bugs}")
    ax.title.set_fontsize(9)
    for axis in (ax.xaxis, ax.yaxis):  # minor log labels overlap on short ranges
        axis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=7)


def scatter(networks: list[tuple[str, pd.DataFrame]], path: str) -> None:
    """Write the plot (PNG) of every network's pairs to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cleverscore.mat_files import write_atomically

    fig, axes = plt.subplots(1, len(ORDERED), figsize=(11, 5))
    for ax, norm in zip(axes, ORDERED):
        _panel(ax, networks, norm)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
