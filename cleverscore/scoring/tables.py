"""The paper's Table 2: attack distortions next to CLEVER scores, per network and target type.

Joins `attacks.py` CSVs with `clever.py --csv` output on (image, target). A pair counts when
CLEVER scored it (order 1) and every attack in the CSV succeeded on it; each cell is the mean over
those pairs. CW Linf is the Linf distortion of the CW L2 examples; I-FGSM L2 and Linf come from the
I-FGSM attack in that norm. An attack the CSV does not hold leaves its columns empty (`—`). When
the CSV has `best` rows (`attacks.py --attacks ...,best`), Best L2 and Best Linf columns show the
smallest distortion any attack found, and the order checks use them instead of CW's.

With `collect_gradients.py --certify` behind the CLEVER CSV (its `certified_radius` column), the
mean certified radius in L2 and Linf is added as the proof beside the estimate and the attacks:
per pair, certified radius <= minimal distortion <= CW distortion must hold, and CLEVER, an
estimate of the minimal distortion, should fall between them (see `order_violations`).
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
# (output column, header, attack, distortion): present when the attacks CSV has `best` rows
BEST = (("best_l2", "Best L2", "best", "l2"), ("best_linf", "Best Linf", "best", "linf"))
# (output column, header, clever.py norm): the proof columns, present when the CLEVER CSV has radii
CERTIFIED = (("cert_l2", "Certified L2", "L2"), ("cert_linf", "Certified Linf", "Li"))
NOT_CERTIFIED = "—"
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
    """One row per (id, info) that CLEVER scored and every attack in `attacks` broke, a column per COLUMNS entry.

    The BEST columns follow when `attacks` has best rows, then the CERTIFIED columns, NaN where the
    pair has no certified radius; they never drop a pair. Columns of attacks missing from the CSV stay NaN.
    """
    clever = clever[clever["order"] == 1]
    wide = clever.pivot_table(index=["id", "info"], columns="norm", values="score", aggfunc="min")
    pairs = pd.DataFrame(index=wide.index)
    present = set(attacks["attack"])
    needed = []
    for column, _, source, value in COLUMNS + (BEST if "best" in present else ()):
        if source == "clever":
            pairs[column] = wide[value] if value in wide.columns else float("nan")
        elif source in present:
            broken = attacks[(attacks["attack"] == source) & success(attacks)]
            pairs[column] = broken.groupby(["id", "info"])[value].min()
        else:
            pairs[column] = float("nan")
            continue
        needed.append(column)
    pairs = pairs.dropna(subset=needed)
    radii = certified_radii(clever)
    for column, _, norm in CERTIFIED:
        pairs[column] = radii[norm].reindex(pairs.index) if norm in radii.columns else float("nan")
    return pairs.reset_index()


def success(attacks: pd.DataFrame) -> pd.Series:
    """The success column as booleans (a CSV read back holds True/False, or their strings)."""
    return attacks["success"].astype(str).str.lower().isin(("true", "1"))


def failure_lines(name: str, attacks: pd.DataFrame, pairs: pd.DataFrame) -> list[str]:
    """`[PAIRS]` lines: per attack and target type, the pairs it failed on, which the table leaves out."""
    failed = attacks[~success(attacks)]
    lines = []
    for (attack, info), group in failed.groupby(["attack", "info"], sort=True):
        tried = int(((attacks["attack"] == attack) & (attacks["info"] == info)).sum())
        lines.append(f"[PAIRS] {name}: {attack} failed on {len(group)} of {tried} {info} pairs; "
                     f"the table leaves them out ({int((pairs['info'] == info).sum())} {info} pairs kept)")
    return lines


def certified_radii(clever: pd.DataFrame) -> pd.DataFrame:
    """Per (id, info), the certified radius per norm (columns L1, L2, Li); empty without the column.

    CLEVER CSVs of runs without --certify (or of older versions) have the column empty or lack it.
    """
    if "certified_radius" not in clever.columns:
        return pd.DataFrame()
    radii = pd.to_numeric(clever["certified_radius"], errors="coerce")
    bad = clever["certified_radius"][radii.isna() & clever["certified_radius"].notna()]
    if len(bad):
        raise UsageError(f"the clever CSV's certified_radius column holds a non-number ({bad.iloc[0]!r})")
    known = clever.assign(certified_radius=radii).dropna(subset=["certified_radius"])
    return known.groupby(["id", "info", "norm"])["certified_radius"].min().unstack("norm")


def summary(networks: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """Mean of every column per network and target type (rows in the paper's order).

    A certified mean is NaN ("not certified") unless every pair of the cell has a radius: a mean
    over the certified pairs only would describe other pairs than the columns beside it.
    """
    rows = []
    for name, pairs in networks:
        for info, _ in TARGETS:
            chosen = pairs[pairs["info"] == info]
            if len(chosen):
                row = {"network": name, "target": info, "n": len(chosen)}
                row.update({column: chosen[column].mean(skipna=False) for column, *_ in COLUMNS + BEST
                            if column in chosen})
                row.update({column: chosen[column].mean(skipna=False) for column, *_ in CERTIFIED})
                rows.append(row)
    return pd.DataFrame(rows, columns=["network", "target", "n", *all_columns()])


def all_columns() -> list[str]:
    return [c for c, *_ in COLUMNS + BEST] + [c for c, *_ in CERTIFIED]


def markdown(table: pd.DataFrame) -> str:
    """One markdown table per target type: a row per network, means to 3 decimals.

    The certified columns appear when some network has radii; a cell without shows NOT_CERTIFIED.
    """
    shown = [(c, h) for c, h, *_ in COLUMNS]
    if any(table[c].notna().any() for c, *_ in BEST):
        shown += [(c, h) for c, h, *_ in BEST]
    certified = any(table[c].notna().any() for c, *_ in CERTIFIED)
    if certified:
        shown += [(c, h) for c, h, _ in CERTIFIED]
    header = "| Network | n | " + " | ".join(h for _, h in shown) + " |"
    rule = "|---|---:|" + "---:|" * len(shown)
    parts = []
    for info, title in TARGETS:
        rows = table[table["target"] == info]
        if not len(rows):
            continue
        lines = [f"### {title}", "", header, rule]
        for _, row in rows.iterrows():
            cells = " | ".join(NOT_CERTIFIED if pd.isna(row[c]) else f"{row[c]:.3f}" for c, _ in shown)
            lines.append(f"| {row['network']} | {int(row['n'])} | {cells} |")
        parts.append("\n".join(lines))
    note = (f"\n\nCertified: the mean certified radius (collect_gradients.py --certify); {NOT_CERTIFIED} where "
            "some pair of the row has none.") if certified else ""
    return "\n\n".join(parts) + note + "\n"


# CSV round trips and float32 distances: a certified radius this close to CW counts as below it
CERTIFIED_TOLERANCE = 1e-6
# norm -> (CLEVER column, certified column, CW column, best column)
ORDERED = {"L2": ("clever_l2", "cert_l2", "cw_l2", "best_l2"),
           "Linf": ("clever_linf", "cert_linf", "cw_linf", "best_linf")}


def found_column(pairs: pd.DataFrame, norm: str) -> tuple[str, str]:
    """(column, name) of the found examples the order is checked against: best where the pairs have it, else CW."""
    _, _, cw, best = ORDERED[norm]
    return (best, "best") if best in pairs and pairs[best].notna().all() and len(pairs) else (cw, "CW")


def order_violations(pairs: pd.DataFrame, norm: str) -> dict[str, pd.Series]:
    """Which pairs break certified <= CLEVER <= found example in `norm` ("L2" or "Linf"), as boolean Series.

    The found example is the best attack's where the pairs have one, else CW's (`found_column`).
    `clever_above_cw`: CLEVER overstated robustness (an attack found a closer example).
    `certified_above_cw`: a proof contradicted by an example, so a bug in the certifier or the attack.
    `clever_below_certified`: CLEVER under a proven radius: conservative, harmless, but off its target.
    Pairs without a certified radius break neither certified comparison.
    """
    clever, cert, _, _ = ORDERED[norm]
    cw = found_column(pairs, norm)[0]
    return {"clever_above_cw": pairs[clever] > pairs[cw],
            "certified_above_cw": pairs[cert] > pairs[cw] * (1 + CERTIFIED_TOLERANCE),
            "clever_below_certified": pairs[clever] < pairs[cert]}


def violation_lines(networks: list[tuple[str, pd.DataFrame]]) -> list[str]:
    """One `[ORDER]` line per network and norm, and a `[WARNING]` where a proof fails."""
    lines = []
    for name, pairs in networks:
        for norm, (_, cert, _, _) in ORDERED.items():
            counts = {key: int(flag.sum()) for key, flag in order_violations(pairs, norm).items()}
            found = found_column(pairs, norm)[1]
            lines.append(f"[ORDER] {name} {norm}: {len(pairs)} pairs, {int(pairs[cert].notna().sum())} certified; "
                         f"CLEVER above {found} on {counts['clever_above_cw']} (overstated), below the certified "
                         f"radius on {counts['clever_below_certified']}; certified above {found} on "
                         f"{counts['certified_above_cw']}")
            if counts["certified_above_cw"]:
                lines.append(f"[WARNING] {name} {norm}: the certified radius exceeds the {found} distortion on "
                             f"{counts['certified_above_cw']} pair(s): a proof contradicted by an example, "
                             "a bug in the certifier or in the attack's distances")
    return lines
