"""The paper's Table 2: attack distortions next to CLEVER scores, per network and target type.

Joins `attacks.py` CSVs with `clever.py --csv` output on (image, target). A pair counts when
CLEVER scored it (order 1) and every attack succeeded on it; each cell is the mean over those
pairs. CW Linf is the Linf distortion of the CW L2 examples; I-FGSM L2 and Linf come from the
I-FGSM attack in that norm.
"""

from __future__ import annotations

import pandas as pd

from cleverscore.errors import UsageError

TARGETS = (("least", "Least likely target"), ("random", "Random target"), ("top2", "Top-2 target"))
# (output column, header, attack or "clever", which distortion / score)
COLUMNS = (
    ("cw_l2", "CW L2", "cw_l2", "l2"),
    ("cw_linf", "CW Linf", "cw_l2", "linf"),
    ("ifgsm_l2", "I-FGSM L2", "ifgsm_l2", "l2"),
    ("ifgsm_linf", "I-FGSM Linf", "ifgsm_li", "linf"),
    ("clever_l2", "CLEVER L2", "clever", "L2"),
    ("clever_linf", "CLEVER Linf", "clever", "Li"),
)
ATTACK_COLUMNS = ["id", "info", "attack", "success", "l2", "linf"]
CLEVER_COLUMNS = ["id", "info", "norm", "score", "order"]


def read_table(path: str, needed: list[str], what: str) -> pd.DataFrame:
    """A CSV with the columns it must have, or a one-line error."""
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UsageError(f"cannot read {what} CSV {path}: {err}") from err
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise UsageError(f"{what} CSV {path} lacks column(s) {', '.join(missing)}")
    return table


def per_pair(attacks: pd.DataFrame, clever: pd.DataFrame) -> pd.DataFrame:
    """One row per (id, info) that CLEVER scored and every attack broke, one column per COLUMNS entry."""
    clever = clever[clever["order"] == 1]
    wide = clever.pivot_table(index=["id", "info"], columns="norm", values="score", aggfunc="min")
    pairs = pd.DataFrame(index=wide.index)
    for column, _, source, value in COLUMNS:
        if source == "clever":
            pairs[column] = wide[value] if value in wide.columns else float("nan")
            continue
        broken = attacks[(attacks["attack"] == source) & attacks["success"].astype(bool)]
        pairs[column] = broken.groupby(["id", "info"])[value].min()
    return pairs.dropna().reset_index()


def summary(networks: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """Mean of every column per network and target type (rows in the paper's order)."""
    rows = []
    for name, pairs in networks:
        for info, _ in TARGETS:
            chosen = pairs[pairs["info"] == info]
            if len(chosen):
                row = {"network": name, "target": info, "n": len(chosen)}
                row.update({column: chosen[column].mean() for column, *_ in COLUMNS})
                rows.append(row)
    return pd.DataFrame(rows, columns=["network", "target", "n", *[c for c, *_ in COLUMNS]])


def markdown(table: pd.DataFrame) -> str:
    """One markdown table per target type: a row per network, means to 3 decimals."""
    header = "| Network | n | " + " | ".join(h for _, h, *_ in COLUMNS) + " |"
    rule = "|---|---:|" + "---:|" * len(COLUMNS)
    parts = []
    for info, title in TARGETS:
        rows = table[table["target"] == info]
        if not len(rows):
            continue
        lines = [f"### {title}", "", header, rule]
        for _, row in rows.iterrows():
            cells = " | ".join(f"{row[c]:.3f}" for c, *_ in COLUMNS)
            lines.append(f"| {row['network']} | {int(row['n'])} | {cells} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def scatter(networks: list[tuple[str, pd.DataFrame]], path: str) -> None:
    """CLEVER L2 against CW L2 per (image, target), one colour per network, with y = x.

    Log axes, so that CIFAR's distortions (around 0.1-1) and MNIST's (around 1-5) both show.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cleverscore.mat_files import write_atomically

    fig, ax = plt.subplots(figsize=(5.5, 5))
    values = pd.concat([pd.concat([p["clever_l2"], p["cw_l2"]]) for _, p in networks])
    values = values[values > 0]
    low, high = values.min() / 1.3, values.max() * 1.3
    for name, pairs in networks:
        ax.scatter(pairs["clever_l2"], pairs["cw_l2"], s=12, alpha=0.7, label=name)
    ax.plot([low, high], [low, high], "k--", lw=1, label="y = x")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("CLEVER L2 score")
    ax.set_ylabel("CW L2 distortion")
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
