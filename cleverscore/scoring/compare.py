"""Before and after: is model B more robust than model A, and how sure is that?

Pure functions over two lists of `clever.py` rows (one dict per (file, norm), with `id`, `info`,
`norm`, `score` and, when available, the score's 95% interval `score_lo`, `score_hi`), plus the
writers of the paired table and the plot. `clever.py --compare DIR_A DIR_B` scores both folders
and hands the rows here.

Pairing: by (image id, target type `info`, norm). Top-2 and least-likely targets are chosen by
each model, so the same type may be a different class in A and in B; the question is "how far is
this image from its top-2 (least-likely) class", asked of both models. Untargeted folders (info
`class<j>`, or every row with `untargeted=True`) are reduced first to one row per (image, norm):
the minimum score over the classes, with interval [min of the lower ends, min of the upper ends].
Images present in one folder only are listed and left out.

Summary per (info, norm): the number of pairs, the mean score of A and of B, the ratio B/A of the
means and its 95% interval, and a verdict. How the interval is made is explained in
`ratio_interval`. Where the folders also hold certified radii or attack distortions, their B/A
says whether CLEVER's verdict is backed (`final_verdict`): a "more robust" that the proofs or the
found examples do not show is named as a disagreement, the usual sign of gradient masking.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cleverscore.errors import UsageError

LEVEL = 0.95  # the confidence level of the ratio's interval (the per-score intervals are 95% too)
Z_SCORE_INTERVAL = 1.959963984540054  # the standard normal's 97.5% quantile: half-width of a 95% interval in sigmas
REPLICATES = 4000  # bootstrap replicates: the 2.5% and 97.5% quantiles move by < 0.5% of the width between seeds
SEED = 20180418  # fixed, so that a comparison prints the same interval every time it is run
INFO_ORDER = ("least", "random", "top2", "untargeted")
NORM_ORDER = ("L1", "L2", "Li")
UNTARGETED = "untargeted"
_CLASS_INFO = re.compile(r"^class\d+$")

MORE_ROBUST_B = "B is more robust"
MORE_ROBUST_A = "A is more robust"
NO_DIFFERENCE = "no difference shown at this sample size"

# A "more robust" verdict is backed by evidence whose ratio shows at least this gain (B/A >= 1.1, or
# <= 1/1.1 for A) whenever CLEVER's does: a defense whose attacks gain under 10% is no defense to trust.
MIN_GAIN = 1.1
# Exit status of `clever.py --compare` when a "more robust" verdict is contradicted by the evidence
# (0: every verdict backed or resting on CLEVER alone; 1: files skipped or images left out).
EXIT_DISAGREEMENT = 3
GRADIENT_MASKING = "gradient masking is the usual cause"

PAIR_COLUMNS = ["id", "info", "norm", "true_label", "target_a", "target_b", "score_a", "score_a_lo", "score_a_hi",
                "score_b", "score_b_lo", "score_b_hi", "ratio", "file_a", "file_b"]
SUMMARY_COLUMNS = ["info", "norm", "pairs", "mean_a", "mean_b", "ratio", "ratio_lo", "ratio_hi", "verdict", "bound",
                   "certified_ratio", "certified_lo", "certified_hi", "certified_verdict", "attack_ratio", "attack_lo",
                   "attack_hi", "attack_verdict", "agreement", "disagreeing", "final_verdict"]


@dataclass
class Comparison:
    """Paired rows, the summary per (info, norm), and the (id, info) keys found in one folder only."""

    pairs: list[dict]
    summary: list[dict]
    only_a: list[tuple[int, str]] = field(default_factory=list)
    only_b: list[tuple[int, str]] = field(default_factory=list)
    not_finite: list[tuple[int, str, str]] = field(default_factory=list)


# Which noise a comparison redraws each score from (`--compare_bound`):
RERUN = "rerun"  # where another seed's score falls: the question "would another run give this ordering?"
END_POINT = "end_point"  # where the sampled law's end point may lie: conservative, often unbounded for CNNs
BOUNDS = (RERUN, END_POINT)


def score_interval(row: dict, bound: str = END_POINT) -> tuple[float, float]:
    """The interval a score is redrawn from; [score, score] for rows written before such intervals existed.

    For `rerun` it is the spread of this score's own estimator: the rerun interval says where
    another run's score falls, and the difference of two runs has sqrt(2) times the spread of one.
    """
    score = float(row["score"])
    keys = ("score_rerun_lo", "score_rerun_hi") if bound == RERUN else ("score_lo", "score_hi")
    lo, hi = row.get(keys[0]), row.get(keys[1])
    lo = score if lo is None or not math.isfinite(float(lo)) else float(lo)
    hi = score if hi is None or not math.isfinite(float(hi)) else float(hi)
    lo, hi = min(lo, score), max(hi, score)
    if bound == RERUN:
        lo, hi = score - (score - lo) / math.sqrt(2.0), score + (hi - score) / math.sqrt(2.0)
    return lo, hi


def _finite_column(row: dict, key: str) -> float | None:
    value = row.get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def is_class_info(info: str) -> bool:
    """True for the target type of an untargeted collection's files (`class<j>`)."""
    return bool(_CLASS_INFO.match(str(info)))


def _info_order(info: str) -> tuple:
    return (INFO_ORDER.index(info), "") if info in INFO_ORDER else (len(INFO_ORDER), info)


def _norm_order(norm: str) -> tuple:
    return (NORM_ORDER.index(norm), "") if norm in NORM_ORDER else (len(NORM_ORDER), norm)


def first_order(rows: Iterable[dict]) -> list[dict]:
    """The first-order rows (second-order files bound a different quantity and are not compared)."""
    return [r for r in rows if int(r.get("order", 1)) == 1]


def reduce_untargeted(rows: Sequence[dict], everything: bool = False, bound: str = END_POINT) -> list[dict]:
    """Replace the `class<j>` rows (all rows if `everything`) by one row per (image, norm).

    Its score is the minimum over the classes and its interval [min score_lo, min score_hi]: the
    smallest of several scores is below each upper end and above the smallest lower end.
    """
    keep, groups = [], defaultdict(list)
    for row in rows:
        if everything or is_class_info(row["info"]):
            groups[(int(row["id"]), str(row["norm"]))].append(row)
        else:
            keep.append(row)
    for (image, norm), members in groups.items():
        best = min(members, key=lambda r: float(r["score"]))
        intervals = [score_interval(r, bound) for r in members]
        keep.append({"id": image, "info": UNTARGETED, "norm": norm, "true_label": best.get("true_label", -1),
                     "target_label": best.get("target_label", -1), "score": float(best["score"]),
                     "draw_lo": min(lo for lo, _ in intervals), "draw_hi": min(hi for _, hi in intervals),
                     **{key: _min_or_none([_finite_column(r, key) for r in members]) for key in EVIDENCE},
                     "file": best.get("file", "")})
    return keep


# Columns that bound the minimal distortion from outside the statistics: a proof below, a found example above.
EVIDENCE = ("certified_radius", "attack_distortion")
EVIDENCE_NAMES = tuple(zip(EVIDENCE, ("certified", "attack")))  # column -> its name in the lines


def _min_or_none(values: list[float | None]) -> float | None:
    """The untargeted value of an image: the minimum over its classes, when every class has one."""
    return None if not values or any(v is None for v in values) else min(values)


def _index(rows: Sequence[dict], side: str) -> dict[tuple[int, str, str], dict]:
    """Rows by (id, info, norm); two files for one key (e.g. two activations in one folder) are an error."""
    indexed: dict[tuple[int, str, str], dict] = {}
    for row in rows:
        key = (int(row["id"]), str(row["info"]), str(row["norm"]))
        if key in indexed:
            raise UsageError(f"folder {side} has two files for image {key[0]}, target type {key[1]}: "
                             f"{Path(indexed[key].get('file', '?')).name} and {Path(row.get('file', '?')).name}; "
                             f"compare needs one per (image, target type)")
        indexed[key] = row
    return indexed


def pair_rows(rows_a: Sequence[dict], rows_b: Sequence[dict], untargeted: bool = False,
              bound: str = RERUN) -> Comparison:
    """Pair two folders' rows by (image id, info, norm); the summary is left empty (see `compare_rows`).

    Raises:
        UsageError: one image has different true labels in A and B (the folders hold different
            images), or a folder has two files for one (image, target type).
    """
    a = _index(reduce_untargeted(first_order(rows_a), untargeted, bound), "A")
    b = _index(reduce_untargeted(first_order(rows_b), untargeted, bound), "B")
    for key in sorted(a.keys() & b.keys()):
        label_a, label_b = int(a[key].get("true_label", -1)), int(b[key].get("true_label", -1))
        if label_a != label_b:
            raise UsageError(f"image {key[0]} has true label {label_a} in A but {label_b} in B: "
                             f"the two folders hold different images")
    pairs, not_finite = [], []
    for key in sorted(a.keys() & b.keys(), key=lambda k: (_info_order(k[1]), _norm_order(k[2]), k[0])):
        ra, rb = a[key], b[key]
        sa, sb = float(ra["score"]), float(rb["score"])
        if not (math.isfinite(sa) and math.isfinite(sb)):
            not_finite.append(key)
            continue
        (a_lo, a_hi), (b_lo, b_hi) = _draw_interval(ra, bound), _draw_interval(rb, bound)
        pairs.append({"id": key[0], "info": key[1], "norm": key[2], "true_label": int(ra.get("true_label", -1)),
                      "target_a": int(ra.get("target_label", -1)), "target_b": int(rb.get("target_label", -1)),
                      "score_a": sa, "score_a_lo": a_lo, "score_a_hi": a_hi,
                      "score_b": sb, "score_b_lo": b_lo, "score_b_hi": b_hi,
                      "ratio": sb / sa if sa > 0 else math.inf,
                      "file_a": str(ra.get("file", "")), "file_b": str(rb.get("file", "")),
                      **{f"{key}_{side}": _finite_column(row, key) for key in EVIDENCE
                         for side, row in (("a", ra), ("b", rb))}})

    def images(side: dict, other: dict) -> list[tuple[int, str]]:
        return sorted({(k[0], k[1]) for k in side.keys() - other.keys()}, key=lambda k: (k[0], _info_order(k[1])))

    return Comparison(pairs, [], images(a, b), images(b, a), not_finite)


def _draw_interval(row: dict, bound: str) -> tuple[float, float]:
    """The interval a paired score is redrawn from (an untargeted row carries its reduced one)."""
    if "draw_lo" in row:
        return float(row["draw_lo"]), float(row["draw_hi"])
    return score_interval(row, bound)


def draw_scores(score: np.ndarray, lo: np.ndarray, hi: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Scores redrawn from their sampling distributions, given standard normal draws `z`.

    Each score's distribution is normal with sigma (score - lo) / 1.96 below the point estimate and
    (hi - score) / 1.96 above it, clipped at 0. Its median is the estimate and its 2.5% and 97.5%
    quantiles are the interval's ends: the three numbers known, matched exactly, whatever the
    asymmetry. It is a distribution of where the true score may lie (the interval's confidence
    distribution), not of the estimator around the truth, which would mirror the asymmetry.
    Clipping at 0 keeps scores non-negative; with lo = 0 (the Lipschitz constant not bounded above
    by the samples) it leaves at most 2.5% of draws at 0, which is what such an interval says: the
    data do not rule out a tiny score. A lopsided interval moves the draws' mean away from the
    estimate (for [0, 1.05 s] to about 0.8 s), on purpose: a score that may be far lower than
    estimated should weigh in the ratio's interval that way.
    """
    sigma = np.where(z < 0, score - lo, hi - score) / Z_SCORE_INTERVAL
    return np.maximum(score + sigma * z, 0.0)


def ratio_interval(a: Sequence[float], a_lo: Sequence[float], a_hi: Sequence[float], b: Sequence[float],
                   b_lo: Sequence[float], b_hi: Sequence[float], replicates: int = REPLICATES,
                   seed: int | Sequence[int] = SEED, level: float = LEVEL) -> tuple[float, float, float]:
    """The ratio mean(b) / mean(a) over paired scores, and its `level` interval.

    A paired bootstrap over images in which every resampled score is also redrawn from its own
    sampling distribution (`draw_scores`): each replicate draws n image indices with replacement
    (the same ones for A and B, which keeps the pairing), redraws A's and B's score of each drawn
    image independently (they come from separate sampling runs), and takes the ratio of the means.
    The interval is the percentile interval of the replicates.

    Why both: the image resampling answers "would other images of this dataset give the same
    ratio?", the redraw "would another sampling run on these images?". The redraw matters most
    when there are few images or when most of the per-image spread cancels in the pairing. The
    observed scores already carry their sampling noise once, so the interval counts that noise
    about twice: it is conservative (wider than needed) in the noise part, never narrower. The
    measured false-alarm rate (A against a rerun of A) is reported in docs/reproduction.md.
    When one model's score intervals are lopsided (score_lo = 0, say) and the other's are not, the
    interval can exclude the ratio of the observed means: the draws of that model's scores sit
    mostly below its estimates (see `draw_scores`), and the verdict follows the interval.

    Args:
        a, a_lo, a_hi: A's scores and their 95% interval ends, one entry per pair.
        b, b_lo, b_hi: the same for B, in the same order.
        replicates: bootstrap replicates.
        seed: seeds NumPy's generator, so the interval is reproducible.
        level: the interval's confidence level.
    Returns:
        (ratio of the observed means, lower end, upper end). With no pairs, three NaNs.
    """
    arrays = [np.asarray(x, dtype=np.float64) for x in (a, a_lo, a_hi, b, b_lo, b_hi)]
    n = arrays[0].size
    if n == 0:
        return math.nan, math.nan, math.nan
    a, a_lo, a_hi, b, b_lo, b_hi = arrays
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n, size=(replicates, n))
    mean_a = draw_scores(a[picks], a_lo[picks], a_hi[picks], rng.standard_normal((replicates, n))).mean(axis=1)
    mean_b = draw_scores(b[picks], b_lo[picks], b_hi[picks], rng.standard_normal((replicates, n))).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(mean_a > 0, mean_b / mean_a, np.inf)
    tail = (1.0 - level) / 2.0
    # inverted_cdf picks replicate values: no interpolation between a finite ratio and inf
    lo, hi = np.quantile(ratios, [tail, 1.0 - tail], method="inverted_cdf")
    return _ratio(a.mean(), b.mean()), float(lo), float(hi)


def _ratio(mean_a: float, mean_b: float) -> float:
    return float(mean_b / mean_a) if mean_a > 0 else math.inf


def verdict(lo: float, hi: float) -> str:
    """Which model is more robust: the whole interval above 1 (B), below 1 (A), or neither."""
    if lo > 1.0:
        return MORE_ROBUST_B
    if hi < 1.0:
        return MORE_ROBUST_A
    return NO_DIFFERENCE


def group_seed(seed: int, info: str, norm: str) -> list[int]:
    """A seed per (info, norm), so one group's interval does not depend on which other groups exist."""
    return [seed, zlib.crc32(info.encode()), zlib.crc32(norm.encode())]


def evidence_ratio(pairs: Sequence[dict], key: str, replicates: int, seed) -> tuple[float, float, float] | None:
    """B/A of the mean certified radius (or attack distortion) with its image-bootstrap interval.

    None unless every pair has the value on both sides. These are no estimates: a certified
    radius is a proof and an attack's distortion a found example, so only the images are redrawn.
    """
    a = [p.get(f"{key}_a") for p in pairs]
    b = [p.get(f"{key}_b") for p in pairs]
    if not pairs or any(v is None for v in a + b):
        return None
    return ratio_interval(a, a, a, b, b, b, replicates=replicates, seed=seed)


def agreement(verdicts: Sequence[str]) -> str:
    """Whether CLEVER, the certified radii and the attacks point the same way."""
    if len(verdicts) < 2:
        return ""
    if len(set(verdicts)) == 1:
        return "agree" if verdicts[0] != NO_DIFFERENCE else "agree: no difference shown"
    return "disagree"


def gain(ratio: float, claim: str) -> float:
    """How much more robust the claimed model is by a ratio B/A: the ratio for B, its inverse for A."""
    if claim == MORE_ROBUST_B:
        return ratio
    return 1.0 / ratio if ratio > 0 else math.inf


def shortfall(claim: str, clever_ratio: float, ratio: float, lo: float, hi: float) -> str:
    """Why evidence with ratio B/A = `ratio` [`lo`, `hi`] does not back CLEVER's `claim`; '' when it does.

    It does not when its interval contains 1, when it points the other way (falls below 1 where
    CLEVER says B, rises above where CLEVER says A), or when it shows less than a MIN_GAIN gain
    where CLEVER shows at least that much.
    """
    if lo <= 1.0 <= hi:
        return "contains 1"
    if claim == MORE_ROBUST_B and hi < 1.0:
        return "falls"
    if claim == MORE_ROBUST_A and lo > 1.0:
        return "rises"
    if gain(ratio, claim) < MIN_GAIN <= gain(clever_ratio, claim):
        return f"shows under {MIN_GAIN:g}x"
    return ""


def final_verdict(row: dict) -> tuple[str, list[str]]:
    """The verdict line's text for a summary row (log_lines.compare_verdict), and the evidence that contradicts it.

    A "more robust" is contradicted by the certified radii or the attacks when `shortfall` finds
    a reason; a "no difference" never is.
    """
    from cleverscore.log_lines import compare_verdict

    names = [name for _, name in EVIDENCE_NAMES if f"{name}_ratio" in row]
    claim = row["verdict"]
    against = []
    if claim != NO_DIFFERENCE:
        for name in names:
            ratio, lo, hi = row[f"{name}_ratio"], row[f"{name}_lo"], row[f"{name}_hi"]
            why = shortfall(claim, row["ratio"], ratio, lo, hi)
            if why:
                against.append((name, ratio, lo, hi, why))
    return compare_verdict(claim, names, against, GRADIENT_MASKING), [a[0] for a in against]


def disagreements(summary: Sequence[dict]) -> list[dict]:
    """The summary rows whose "more robust" verdict the certified radii or attacks contradict."""
    return [row for row in summary if row.get("disagreeing")]


def exit_status(comparison: Comparison, inputs_left_out: bool) -> int:
    """`clever.py --compare`'s exit status: EXIT_DISAGREEMENT, else 1 for skipped files or left-out images, else 0."""
    if disagreements(comparison.summary):
        return EXIT_DISAGREEMENT
    return 1 if inputs_left_out else 0


def summarise(pairs: Sequence[dict], replicates: int = REPLICATES, seed: int = SEED,
              bound: str = RERUN) -> list[dict]:
    """One summary row per (info, norm), in the printing order."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for p in pairs:
        groups[(p["info"], p["norm"])].append(p)
    rows = []
    for (info, norm) in sorted(groups, key=lambda k: (_info_order(k[0]), _norm_order(k[1]))):
        chosen = groups[(info, norm)]
        columns = [[p[c] for p in chosen] for c in ("score_a", "score_a_lo", "score_a_hi",
                                                     "score_b", "score_b_lo", "score_b_hi")]
        ratio, lo, hi = ratio_interval(*columns, replicates=replicates, seed=group_seed(seed, info, norm))
        row = {"info": info, "norm": norm, "pairs": len(chosen), "mean_a": float(np.mean(columns[0])),
               "mean_b": float(np.mean(columns[3])), "ratio": ratio, "ratio_lo": lo, "ratio_hi": hi,
               "verdict": verdict(lo, hi), "bound": bound}
        verdicts = [row["verdict"]]
        for key, name in EVIDENCE_NAMES:
            found = evidence_ratio(chosen, key, replicates, group_seed(seed, info, norm))
            if found is not None:
                row.update({f"{name}_ratio": found[0], f"{name}_lo": found[1], f"{name}_hi": found[2],
                            f"{name}_verdict": verdict(found[1], found[2])})
                verdicts.append(row[f"{name}_verdict"])
        row["agreement"] = agreement(verdicts)
        row["final_verdict"], against = final_verdict(row)
        row["disagreeing"] = ";".join(against)
        rows.append(row)
    return rows


def compare_rows(rows_a: Sequence[dict], rows_b: Sequence[dict], untargeted: bool = False,
                 replicates: int = REPLICATES, seed: int = SEED, bound: str = RERUN) -> Comparison:
    """Pair two folders' rows and summarise them (see the module docstring); `bound` picks the redrawn noise."""
    if bound not in BOUNDS:
        raise UsageError(f"unknown `compare_bound` {bound!r}; choose one of {', '.join(BOUNDS)}")
    comparison = pair_rows(rows_a, rows_b, untargeted, bound)
    comparison.summary = summarise(comparison.pairs, replicates, seed, bound)
    return comparison


def mat_dataset(mat: dict, path: str | Path) -> str:
    """Which images a result file was made on: the `--data_path`, else the `--dataset` it records.

    Files without recorded arguments fall back to their folder's name prefix (`mnist_normal` -> mnist).
    """
    args = mat.get("args")
    if args is not None and getattr(args, "dtype", None) is not None and args.dtype.names:
        fields = {name: _mat_text(args[name][0, 0]) for name in args.dtype.names}
        if fields.get("data_path") or fields.get("dataset"):
            return fields.get("data_path") or fields["dataset"]
    return Path(path).parent.name.split("_")[0]


def _mat_text(value) -> str:
    """A string saved by scipy.io.savemat ('' comes back as an empty array)."""
    array = np.asarray(value)
    return str(array.ravel()[0]).strip() if array.size else ""


def folder_datasets(files: Iterable[str]) -> set[str]:
    """The datasets recorded in a folder's result files (read again: a few kB each)."""
    from cleverscore.mat_files import load_mat

    return {mat_dataset(load_mat(f), f) for f in sorted(set(files)) if f}


def check_same_dataset(datasets_a: set[str], datasets_b: set[str]) -> None:
    """UsageError unless both folders were made on one and the same dataset."""
    if len(datasets_a) > 1 or len(datasets_b) > 1 or datasets_a != datasets_b:
        raise UsageError(f"the folders hold different images: A is from {', '.join(sorted(datasets_a)) or '?'}, "
                         f"B from {', '.join(sorted(datasets_b)) or '?'}; compare needs the same images")


def report_lines(comparison: Comparison) -> list[str]:
    """The printed `[COMPARE]` lines: left-out images first, then one verdict line per (info, norm)."""
    from cleverscore.log_lines import compare_evidence_line, compare_left_out_line, compare_line

    lines = []
    for side, keys in (("A", comparison.only_a), ("B", comparison.only_b)):
        if keys:
            lines.append(compare_left_out_line(f"only in {side}", keys))
    if comparison.not_finite:
        lines.append(compare_left_out_line("score not finite", sorted({(k[0], k[1]) for k in comparison.not_finite})))
    for s in comparison.summary:
        lines.append(compare_line(s["info"], s["norm"], s["pairs"], s["mean_a"], s["mean_b"], s["ratio"],
                                  s["ratio_lo"], s["ratio_hi"], s["final_verdict"], s["bound"]))
        if "certified_ratio" in s or "attack_ratio" in s:
            lines.append(compare_evidence_line(s))
    return lines


def summary_path(csv: str | Path) -> Path:
    """Where --compare writes its summary table: `<stem>_summary.csv` beside the pairs' CSV."""
    path = Path(csv)
    return path.with_name(f"{path.stem}_summary{path.suffix or '.csv'}")


def write_tables(comparison: Comparison, csv: str = "", json: str = "", names: tuple[str, str] = ("", "")) -> None:
    """--csv: the paired rows to CSV, the summary beside it (`<stem>_summary.csv`);
    --json: one object with the pairs, the summary and the left-out images. Written atomically;
    JSON by the json module, as clever.py's, so that an infinite ratio stays `Infinity`.
    """
    if not (csv or json):
        return
    import json as jsonlib

    import pandas as pd

    from cleverscore.mat_files import write_atomically

    pairs = pd.DataFrame(comparison.pairs, columns=PAIR_COLUMNS)
    summary = pd.DataFrame(comparison.summary, columns=SUMMARY_COLUMNS)
    if csv:
        path = Path(csv)
        write_atomically(path, lambda tmp: pairs.to_csv(tmp, index=False))
        write_atomically(summary_path(path), lambda tmp: summary.to_csv(tmp, index=False))
    if json:
        document = {
            "a": names[0], "b": names[1], "level": LEVEL, "replicates": REPLICATES, "seed": SEED,
            "summary": comparison.summary, "pairs": comparison.pairs,
            "only_in_a": [{"id": i, "info": info} for i, info in comparison.only_a],
            "only_in_b": [{"id": i, "info": info} for i, info in comparison.only_b],
        }
        write_atomically(json, lambda tmp: Path(tmp).write_text(jsonlib.dumps(document, indent=1)))


def plot_pairs(comparison: Comparison, path: str, names: tuple[str, str] = ("A", "B")) -> None:
    """Score of A (x) against score of B (y) per pair, with both intervals as bars and y = x.

    One column of panels per target type, one row per norm (their scales differ by 10-100x).
    Linear axes from 0, so that an interval reaching down to 0 shows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cleverscore.mat_files import write_atomically

    infos = sorted({p["info"] for p in comparison.pairs}, key=_info_order)
    norms = sorted({p["norm"] for p in comparison.pairs}, key=_norm_order)
    if not infos:
        raise UsageError("no pairs to plot")
    fig, axes = plt.subplots(len(norms), len(infos), figsize=(3.6 * len(infos), 3.4 * len(norms)), squeeze=False)
    summary = {(s["info"], s["norm"]): s for s in comparison.summary}
    for row, norm in enumerate(norms):
        for col, info in enumerate(infos):
            ax = axes[row][col]
            chosen = [p for p in comparison.pairs if p["info"] == info and p["norm"] == norm]
            if not chosen:
                ax.set_visible(False)
                continue
            x = np.array([p["score_a"] for p in chosen])
            y = np.array([p["score_b"] for p in chosen])
            xerr = [x - [p["score_a_lo"] for p in chosen], [p["score_a_hi"] for p in chosen] - x]
            yerr = [y - [p["score_b_lo"] for p in chosen], [p["score_b_hi"] for p in chosen] - y]
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt="o", ms=3, lw=0.8, capsize=2, alpha=0.8)
            top = 1.05 * max(np.max(x + xerr[1]), np.max(y + yerr[1]))
            ax.plot([0, top], [0, top], "k--", lw=1, label="y = x")
            ax.set_xlim(0, top)
            ax.set_ylim(0, top)
            s = summary.get((info, norm))
            title = f"{info}, {norm}"
            if s is not None:
                title += f": B/A = {s['ratio']:.2f} [{s['ratio_lo']:.2f}, {s['ratio_hi']:.2f}]"
            ax.set_title(title, fontsize=8)
            ax.set_xlabel(f"CLEVER score, A ({names[0]})", fontsize=8)
            ax.set_ylabel(f"CLEVER score, B ({names[1]})", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
