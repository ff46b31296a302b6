"""The closing table of a clever.py run: per target type and norm, what a person reads first.

Each row holds the summary CLEVER score (the mean over images, or the minimum with `--min`;
untargeted: per image the minimum over its classes first) with its 95% rerun interval, and,
when every file holds them, the mean certified radius, exact minimal distortion and best attack
distortion, reduced the same way. The counts say how many files were flagged beyond the
sampled ball or as a plateau. The numbers come from the same per-file values as the `--csv`
rows, so a script can check one against the other.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cleverscore.scoring.folder import INFO_ORDER, FileScores, reduce_scores, score_triple


@dataclass(frozen=True)
class SummaryRow:
    """One (target type, norm) line of the table; None where the files do not hold that value."""

    info: str
    norm: str
    images: int
    score: float
    rerun: tuple[float, float]
    certified: float | None
    exact: float | None
    attack: float | None
    beyond_ball: int
    plateau: int
    files: int


def _groups(results: list[FileScores], untargeted: bool) -> dict[str, list[list[FileScores]]]:
    """Per target type, the units that are summarised: one file each, or (untargeted) one image's files."""
    if untargeted:
        per_image: dict[int, list[FileScores]] = defaultdict(list)
        for r in results:
            per_image[r.id].append(r)
        return {"untargeted": list(per_image.values())}
    by_info: dict[str, list[list[FileScores]]] = defaultdict(list)
    for r in results:
        by_info[r.info].append([r])
    order = [i for i in INFO_ORDER if i in by_info] + sorted(i for i in by_info if i not in INFO_ORDER)
    return {info: by_info[info] for info in order}


def _reduced_column(units: list[list[FileScores]], k: int, column: Callable[[FileScores], list],
                    use_min: bool) -> float | None:
    """A per-file column (certified radius, ...) of norm k: smallest per unit, then mean (or min) over units."""
    values = [[column(r)[k] if column(r) else None for r in unit] for unit in units]
    if any(v is None for unit in values for v in unit):
        return None
    per_unit = [min(unit) for unit in values]
    return min(per_unit) if use_min else sum(per_unit) / len(per_unit)


def summary_rows(results: list[FileScores], untargeted: bool, use_min: bool, cap: bool = False) -> list[SummaryRow]:
    """The table's rows for first-order files (order 2 files have their [STATS] lines only)."""
    first_order = [r for r in results if r.order == 1]
    rows = []
    for info, units in _groups(first_order, untargeted).items():
        files = [r for unit in units for r in unit]
        for k, norm in enumerate(files[0].norms):
            per_unit = [reduce_scores([score_triple(r, k, cap, "rerun") for r in unit], use_min=True)
                        for unit in units]
            score, lo, hi = reduce_scores(per_unit, use_min)
            rows.append(SummaryRow(
                info, norm.label, len({r.id for r in files}), score, (lo, hi),
                _reduced_column(units, k, lambda r: r.certified_radii, use_min),
                _reduced_column(units, k, lambda r: r.exact_distortion, use_min),
                _reduced_column(units, k, lambda r: r.attack_distortion, use_min),
                sum(bool(r.beyond_ball(k)) for r in files),
                sum(bool(r.brackets and r.brackets[k].plateau) for r in files),
                len(files)))
    return rows


def _number(x: float | None) -> str:
    if x is None:
        return "-"
    return "inf" if math.isinf(x) else f"{x:.5g}"


def table_lines(rows: Sequence[SummaryRow], folder: str, use_min: bool, cap: bool) -> list[str]:
    """The table as text lines; columns without any value (no --certify, no attacks) are left out."""
    if not rows:
        return []
    how = "minimum" if use_min else "mean"
    head = f"CLEVER scores for {folder}: {how} over images, 95% rerun interval" + (", capped at the ball" if cap else "")
    columns: list[tuple[str, Callable[[SummaryRow], str]]] = [
        ("target", lambda r: r.info), ("norm", lambda r: r.norm), ("images", lambda r: str(r.images)),
        ("CLEVER", lambda r: _number(r.score)),
        ("rerun 95%", lambda r: f"[{_number(r.rerun[0])}, {_number(r.rerun[1])}]"),
    ]
    optional = [("certified", lambda r: r.certified), ("exact", lambda r: r.exact), ("attack", lambda r: r.attack)]
    for name, get in optional:
        if any(get(r) is not None for r in rows):
            columns.append((name, lambda r, get=get: _number(get(r))))
    columns += [("beyond ball", lambda r: f"{r.beyond_ball}/{r.files}"), ("plateau", lambda r: f"{r.plateau}/{r.files}")]
    cells = [[name for name, _ in columns]] + [[get(r) for _, get in columns] for r in rows]
    widths = [max(len(row[c]) for row in cells) for c in range(len(columns))]
    text = ["  ".join(cell.ljust(w) if c < 2 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths))).rstrip()
            for row in cells]
    return [head, *text]
