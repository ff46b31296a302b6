"""Scoring a folder of `.mat` files: read each file's maxima, fit them, print the original's lines.

`score_files` fits every file (the `[DEBUG][L1]` lines), skipping unusable ones with a warning;
`summarise` makes the `[STATS]` summary (targeted per info, or untargeted per image);
`write_tables` writes the CSV/JSON rows. clever.py and `--compare` both call these.
"""

from __future__ import annotations

import math
import multiprocessing
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cleverscore.errors import UsageError
from cleverscore.log_lines import (
    beyond_ball_line,
    bound_line,
    debug_fit_line,
    debug_maxsamp_line,
    fallback_line,
    plateau_line,
    searched_above_line,
    stats_cert_line,
    stats_ci_line,
    stats_line,
    untargeted_image_line,
    warning_summary_lines,
)
from cleverscore.mat_files import (
    MODEL_ID_KEY,
    load_mat,
    parse_mat_name,
    recorded_model_id,
    recorded_model_path,
    write_atomically,
    write_failures_reported,
)
from cleverscore.norms import L2, NORMS, LpNorm, by_flag, supported_radius
from cleverscore.scoring.brackets import Bracket, consistent_interval, consistent_rerun
from cleverscore.scoring.fit import (
    C_INIT,
    WeibullFit,
    clever_score,
    fit_many,
    second_order_bound,
)
from cleverscore.scoring.intervals import EndPointInterval, end_point_interval, mean_interval
from cleverscore.scoring.rerun import rerun_interval, rerun_score_interval
from cleverscore.settings import ScoreSettings

INFO_ORDER = ("least", "random", "top2")


@dataclass
class FileScores:
    """CLEVER scores of one (image, target) file, in NORMS order (L1, L2, Linf) (L2 only for order 2).

    `intervals` are the 95% intervals of the Lipschitz (order 2: curvature) estimates and
    `score_intervals` those of the scores; `radii` the radius each score is supported by (None
    when the file does not record its sampled ball).
    """

    id: int
    true_label: int
    target_label: int
    info: str
    g_x0: float
    scores: list[float]
    fits: list[WeibullFit]
    path: str = ""
    norms: tuple[LpNorm, ...] = NORMS
    order: int = 1
    intervals: list[EndPointInterval] = field(default_factory=list)
    score_intervals: list[tuple[float, float]] = field(default_factory=list)
    radii: list[float | None] = field(default_factory=list)
    num_classes: int = 0
    partial: bool = False
    lipschitz: list[float] = field(default_factory=list)  # the estimates behind the scores
    searched: list[float | None] = field(default_factory=list)  # norms found by --search_steps
    brackets: list[Bracket] = field(default_factory=list)  # certain bounds beside each estimate (order 1)
    certified_radii: list[float | None] = field(default_factory=list)  # per norm, --certify's radius
    lipschitz_radii: list[float | None] = field(default_factory=list)  # per norm, the Lipschitz bound's radius
    certified_by: list[str | None] = field(default_factory=list)  # per norm, which proof gave the radius
    exact_lipschitz: list[float | None] = field(default_factory=list)  # per norm, --exact's constant (Li only)
    exact_distortion: list[float | None] = field(default_factory=list)  # per norm, --exact's minimal distortion
    attack_distortion: list[float | None] = field(default_factory=list)  # per norm, a found example's distortion
    rerun_intervals: list[tuple[float, float]] = field(default_factory=list)  # Lipschitz: another seed's (95%)
    score_rerun_intervals: list[tuple[float, float]] = field(default_factory=list)  # the scores'

    def intervals_of(self, kind: str) -> list[tuple[float, float]]:
        """The scores' 95% intervals of one kind: 'end_point' or 'rerun'."""
        return self.score_rerun_intervals if kind == "rerun" else self.score_intervals

    def beyond_ball(self, k: int) -> bool | None:
        radius = self.radii[k] if self.radii else None
        return None if radius is None else bool(self.scores[k] > radius)

    def rows(self, method: str) -> list[dict]:
        """One table row per norm, as written by --csv and --json."""
        return [{"file": self.path, "id": self.id, "true_label": self.true_label, "target_label": self.target_label,
                 "info": self.info, "norm": norm.label, "g_x0": self.g_x0, "score": self.scores[k],
                 "score_lo": self.score_intervals[k][0], "score_hi": self.score_intervals[k][1],
                 "lipschitz": self.lipschitz[k], "lipschitz_lo": self.intervals[k].lo,
                 "lipschitz_hi": self.intervals[k].hi, "searched": self.searched[k] if self.searched else None,
                 "score_rerun_lo": self.score_rerun_intervals[k][0], "score_rerun_hi": self.score_rerun_intervals[k][1],
                 "lipschitz_rerun_lo": self.rerun_intervals[k][0], "lipschitz_rerun_hi": self.rerun_intervals[k][1],
                 "shape": fit.shape, "loc": fit.loc, "scale": fit.scale, "ks": fit.ks, "pVal": fit.pval,
                 "method": method if fit.fitted or method == "maxsamp" else f"{method}:fallback_max",
                 "order": self.order, "supported_radius": self.radii[k] if self.radii else None,
                 "beyond_ball": self.beyond_ball(k), "partial": self.partial, **self._bracket_columns(k)}
                for k, (norm, fit) in enumerate(zip(self.norms, self.fits))]

    def _bracket_columns(self, k: int) -> dict:
        extra = {"certified_radius": self.certified_radii[k] if self.certified_radii else None,
                 "certified_radius_lipschitz": self.lipschitz_radii[k] if self.lipschitz_radii else None,
                 "certified_by": self.certified_by[k] if self.certified_by else None,
                 "lipschitz_exact": self.exact_lipschitz[k] if self.exact_lipschitz else None,
                 "exact_distortion": self.exact_distortion[k] if self.exact_distortion else None,
                 "attack_distortion": self.attack_distortion[k] if self.attack_distortion else None}
        if not self.brackets:
            return {"plateau": None, "lipschitz_found": None, "lipschitz_certified": None, **extra}
        b = self.brackets[k]
        return {"plateau": b.plateau, "lipschitz_found": b.found, "lipschitz_certified": b.certified, **extra}


def find_mat_files(folder: Path) -> list[Path]:
    """Every .mat below the folder, sorted by image id then info (unparseable names last)."""

    def key(path: Path):
        try:
            name = parse_mat_name(path)
            return (0, name.id, name.info, path.name)
        except ValueError:
            return (1, 0, "", path.name)

    return sorted(folder.rglob("*.mat"), key=key)


def read_maxima(path: Path, use_slope: bool, num_samples: int) -> tuple[dict, list[np.ndarray]]:
    """A file's header fields and its maxima per norm (NORMS order); ValueError if unusable."""
    name = parse_mat_name(path)
    try:
        mat = load_mat(path)
    except Exception as err:  # noqa: BLE001 - scipy raises many types for corrupt files
        raise ValueError(f"cannot read .mat ({type(err).__name__}: {err})") from None
    order = 2 if "H2_max" in mat else 1
    if order == 2:
        keys = ["H2_max"]
        if "g_x0_grad_2_norm" not in mat:
            raise ValueError("missing keys ['g_x0_grad_2_norm']")
    else:
        keys = [n.slope_key if use_slope else n.grad_key for n in NORMS]
    missing = [k for k in keys + ["g_x0"] if k not in mat]
    if missing:
        raise ValueError(f"missing keys {missing}")
    maxima = [np.abs(np.ravel(mat[k]).astype(np.float64)) if order == 2 else np.ravel(mat[k]).astype(np.float64)
              for k in keys]
    if num_samples:
        maxima = [m[:num_samples] for m in maxima]
    check_physical(maxima, keys, float(np.squeeze(mat["g_x0"])), use_slope and order == 1, path)
    header = {
        "id": int(np.squeeze(mat["id"])) if "id" in mat else name.id,
        "true_label": int(np.squeeze(mat["true_label"])) if "true_label" in mat else name.true_label,
        "target_label": int(np.squeeze(mat["target_label"])) if "target_label" in mat else name.target_label,
        "info": str(np.squeeze(mat["info"])) if "info" in mat else name.info,
        "g_x0": float(np.squeeze(mat["g_x0"])),
        "order": order,
        "grad_norm": float(np.squeeze(mat["g_x0_grad_2_norm"])) if order == 2 else 0.0,
        "figname": f"Fig_{name.info}_{name.id}_{name.true_label}_{name.target_label}_Nsamp_{len(maxima[0])}",
        "nsamps": name.nsamps,
        "niters": int(np.squeeze(mat["niters_used"])) if "niters_used" in mat else name.niters,
        "num_classes": int(np.size(mat["pred"])) if "pred" in mat else 0,
        "ball": sampled_ball(mat),
        "searched": [float(np.squeeze(mat[n.search_key])) if n.search_key in mat and order == 1 and not use_slope
                     else None for n in NORMS],
        "certified": [ceiling(mat, n) if order == 1 and not use_slope else None for n in NORMS],
        "certified_radius": [_scalar(mat, f"certified_radius_{n.label}") if order == 1 else None for n in NORMS],
        "lipschitz_radius": [_scalar(mat, f"certified_radius_lipschitz_{n.label}") if order == 1 else None
                             for n in NORMS],
        "certified_by": [str(np.squeeze(mat[f"certified_radius_by_{n.label}"]))
                         if order == 1 and f"certified_radius_by_{n.label}" in mat else None for n in NORMS],
        "exact_lipschitz": [exact_constant(mat, n) if order == 1 and not use_slope else None for n in NORMS],
        "exact_distortion": [_scalar(mat, f"exact_distortion_{n.label}") if order == 1 else None for n in NORMS],
        "attack_distortion": [_scalar(mat, f"attack_distortion_{n.label}") if order == 1 else None for n in NORMS],
    }
    return header, maxima


def _scalar(mat: dict, key: str) -> float | None:
    """A scalar key of a `.mat` as a float, None when absent (files of older versions, flags not used)."""
    return float(np.squeeze(mat[key])) if key in mat else None


def exact_constant(mat: dict, norm: LpNorm) -> float | None:
    """The exact Lipschitz constant behind `norm`'s score, if known: `--exact`'s MILP answer, or the certified
    bound where the split search proved it attained (`lipschitz_certified_exact`, for the sampling norm's dual)."""
    exact = _scalar(mat, norm.grad_key.replace("_max", "_exact"))
    if exact is not None and math.isfinite(exact):
        return exact
    ball = sampled_ball(mat)
    if ball is not None and ball[0] == norm and _scalar(mat, "lipschitz_certified_exact") == 1:
        return _scalar(mat, norm.certified_key)
    return exact


def ceiling(mat: dict, norm: LpNorm) -> float | None:
    """The smallest proven upper bound of the Lipschitz constant behind `norm`'s score, if any.

    Certified bounds (`--certify`) and the exact answer's proven upper end (`--exact`) both hold
    with certainty; the smaller is the better ceiling.
    """
    bounds = [_scalar(mat, norm.certified_key)]
    exact_key = norm.grad_key.replace("_max", "_exact_bounds")
    if exact_key in mat:
        bounds.append(float(np.ravel(mat[exact_key])[1]))
    bounds = [b for b in bounds if b is not None and math.isfinite(b)]
    return min(bounds) if bounds else None


def check_physical(maxima: list[np.ndarray], keys: list[str], g_x0: float, use_slope: bool, path: Path) -> None:
    """ValueError for contents no collection can produce; UsageError for use_slope without slopes."""
    if use_slope and all(not np.any(m) for m in maxima):
        raise UsageError(f"`use_slope`: {path} has no slope maxima (all zero); collect with --compute_slope")
    for key, m in zip(keys, maxima):
        if np.any(m < 0):
            raise ValueError(f"{key} holds negative gradient-norm maxima (min {m.min():.5g}), which no collection "
                             "produces")
    if not g_x0 > 0:
        raise ValueError(f"g_x0 = {g_x0:.5g} is not positive: the image is not classified as its true label against "
                         "this target, so it has no CLEVER score")


def sampled_ball(mat: dict) -> tuple[LpNorm, float, int] | None:
    """(norm, radius R, input dimension d) of the ball the file's samples came from, if recorded."""
    if not all(k in mat for k in ("sample_norm", "sample_radius", "input_dim")):
        return None
    return (by_flag(str(np.squeeze(mat["sample_norm"]))), float(np.squeeze(mat["sample_radius"])),
            int(np.squeeze(mat["input_dim"])))


def plot_fit(sample: np.ndarray, fit: WeibullFit, interval: EndPointInterval, norm: LpNorm, path: Path) -> None:
    """Histogram of -maxima with the fitted weibull_min pdf and the end point's 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import weibull_min

    fig, ax = plt.subplots(1, 1)
    ax.hist(-sample, density=True, bins=20, histtype="stepfilled", alpha=0.6, label="-maxima")
    if fit.fitted:
        x = np.linspace(-1.01 * sample.max(), -0.99 * sample.min(), 200)
        ax.plot(x, weibull_min.pdf(x, fit.shape, fit.loc, fit.scale), "r-", label=f"fitted pdf {norm.label}-bnd")
    ax.axvline(-fit.estimate, color="k", label="-estimate")
    left = -interval.hi if interval.bounded else ax.get_xlim()[0]
    ax.axvspan(left, -interval.lo, color="tab:orange", alpha=0.25,
               label="95% interval" if interval.bounded else "95% interval (unbounded)")
    ax.legend(loc="best", frameon=False)
    ax.set_xlabel(f"-Lips_{'i' if norm.dual == np.inf else int(norm.dual)}")
    ax.set_ylabel("pdf")
    ax.set_title(f"c = {fit.shape:.2f}, loc = {fit.loc:.2f}, scale = {fit.scale:.2f}, "
                 f"ks = {fit.ks:.2f}, pVal = {fit.pval:.2f}\nend point {fit.estimate:.4g}, "
                 f"95% [{interval.lo:.4g}, {interval.hi:.4g}]", fontsize=9)
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)


def score_file(path: Path, settings: ScoreSettings, executor, warnings: dict, verbose: bool = True) -> FileScores:
    """Fit one file's maxima, count its warnings and (verbose) print its `[DEBUG][L1]` lines and warnings.

    ValueError if the file is unusable."""
    header, maxima = read_maxima(path, settings.use_slope, settings.num_samples or 0)
    reg_index = 2 if settings.reg_param == "scale" else 0
    jobs = [executor.submit(end_point_interval, m) for m in maxima] if executor else []  # beside the fits
    fits = fit_many(maxima, settings.method, settings.shape_reg, reg_index, executor, settings.fit_select)
    intervals = [j.result() for j in jobs] if jobs else [end_point_interval(m) for m in maxima]
    info = settings.user_type if settings.user_type and header["info"] == "user" else header["info"]
    g = header["g_x0"]
    if header["order"] == 2:
        norms = (L2,)
        scores = [second_order_bound(g, header["grad_norm"], fits[0].estimate)]
        iv = intervals[0]
        score_intervals = [(second_order_bound(g, header["grad_norm"], iv.hi) if iv.bounded else 0.0,
                            second_order_bound(g, header["grad_norm"], iv.lo))]
        lipschitz = [fits[0].estimate]
        rerun = [rerun_interval(fits[0].estimate, fits[0], maxima[0])]
        score_rerun = [(second_order_bound(g, header["grad_norm"], rerun[0][1]),
                        second_order_bound(g, header["grad_norm"], max(rerun[0][0], 0.0)))]
        brackets = []
    else:
        norms = NORMS
        lipschitz, intervals = apply_search(fits, intervals, header["searched"], path, warnings, info, verbose)
        brackets = [consistent_interval(lip, iv, m, max(float(m.max()), found or 0.0), cert)
                    for lip, iv, m, found, cert in zip(lipschitz, intervals, maxima, header["searched"],
                                                        header["certified"])]
        lipschitz, intervals = [b.estimate for b in brackets], [b.interval for b in brackets]
        scores = [clever_score(g, lip) for lip in lipschitz]
        score_intervals = [iv.score_interval(g) for iv in intervals]
        rerun = [consistent_rerun(rerun_interval(lip, fit, m), b)
                 for lip, fit, m, b in zip(lipschitz, fits, maxima, brackets)]
        score_rerun = [rerun_score_interval(g, iv) for iv in rerun]
    ball = header["ball"]
    radii = [supported_radius(ball[0], ball[1], ball[2], n) for n in norms] if ball else []
    result = FileScores(header["id"], header["true_label"], header["target_label"], info, g, scores, fits, str(path),
                        norms, header["order"], intervals, score_intervals, radii, header["num_classes"],
                        lipschitz=lipschitz, searched=header["searched"] if header["order"] == 1 else [],
                        brackets=brackets, rerun_intervals=rerun, score_rerun_intervals=score_rerun,
                        certified_radii=header["certified_radius"] if header["order"] == 1 else [],
                        lipschitz_radii=header["lipschitz_radius"] if header["order"] == 1 else [],
                        certified_by=header["certified_by"] if header["order"] == 1 else [],
                        exact_lipschitz=header["exact_lipschitz"] if header["order"] == 1 else [],
                        exact_distortion=header["exact_distortion"] if header["order"] == 1 else [],
                        attack_distortion=header["attack_distortion"] if header["order"] == 1 else [])
    head = (result.id, result.true_label, result.target_label, info, header["nsamps"], header["niters"])
    say = print if verbose else _silent
    for k, (norm, score, fit, sample) in enumerate(zip(norms, scores, fits, maxima)):
        if settings.method == "maxsamp":
            say(debug_maxsamp_line(*head, norm.bnd_norm, score))
        else:
            say(debug_fit_line(*head, norm.bnd_norm, score, fit.ks, fit.pval, fit.shape, fit.loc, fit.scale, g))
            if not fit.fitted:
                say(fallback_line(str(path), norm.label, fit.estimate), file=sys.stderr)
                warnings["fallback"][(info, norm.label)] += 1
        if brackets and brackets[k].certified is not None:
            b = brackets[k]
            say(bound_line(*head[:4], norm.bnd_norm, b.estimate, (b.interval.lo, b.interval.hi), rerun[k],
                           (b.found, b.certified)))
        if brackets and brackets[k].plateau:
            say(plateau_line(str(path), norm.label, float(sample.max()), brackets[k].found, brackets[k].interval.hi),
                file=sys.stderr)
            warnings["plateau"][(info, norm.label)] += 1
        if result.beyond_ball(k):
            say(beyond_ball_line(str(path), norm.label, score, radii[k]), file=sys.stderr)
            warnings["beyond"][(info, norm.label)] += 1
        if settings.plot_dir:
            suffix = "_slope" if settings.use_slope else ""
            figure = settings.plot_dir / f"{header['figname']}{suffix}_{norm.label}.png"
            with write_failures_reported(figure):
                plot_fit(sample, fit, intervals[k], norm, figure)
    return result


def _silent(*_args, **_kwargs) -> None:
    """`print` for the per-file lines a run without --verbose leaves out (their counts are kept)."""


def apply_search(fits: list[WeibullFit], intervals: list[EndPointInterval], searched: list[float | None], path: Path,
                 warnings: dict, info: str, verbose: bool = True) -> tuple[list[float], list[EndPointInterval]]:
    """Lipschitz estimates and intervals raised to the norms found by search (certain lower bounds)."""
    lipschitz, raised = [], []
    for norm, fit, iv, found in zip(NORMS, fits, intervals, searched):
        if found is None or found <= fit.estimate:
            lipschitz.append(fit.estimate)
        else:
            if verbose:
                print(searched_above_line(str(path), norm.label, found, fit.estimate), file=sys.stderr)
            warnings["searched"][(info, norm.label)] += 1
            lipschitz.append(found)
        # A norm found above the interval's top refutes the fitted end point: the top becomes unknown
        # (infinity, capped later by any proven bound) rather than a zero-width [found, found].
        raised.append(iv if found is None else EndPointInterval(max(iv.lo, found), iv.hi if iv.hi > found else math.inf,
                                                                iv.mle))
    return lipschitz, raised


def summarise(results: list[FileScores], untargeted: bool, use_min: bool, cap: bool = False,
              image_lines: bool = True) -> list[str]:
    """The `[STATS]` summary lines: first-order files, then second-order files (L2 only).

    Each `[STATS][L0]` line is followed by its `[STATS][CI]` line (the 95% interval of the same
    summary). With `cap`, scores and intervals are capped at each score's supported radius.
    Untargeted summaries start with one `[STATS][L1] image = ..` line per image when `image_lines`.
    """
    lines = []
    for order in (1, 2):
        subset = [r for r in results if r.order == order]
        if subset:
            labels = tuple(n.label for n in subset[0].norms)
            lines += _summary(subset, labels, untargeted, use_min, cap, image_lines)
    return lines


def score_triple(r: FileScores, k: int, cap: bool, kind: str = "end_point") -> tuple[float, float, float]:
    """(score, lo, hi) of norm k with its interval of `kind`, capped at the supported radius when asked and known."""
    score, (lo, hi) = r.scores[k], r.intervals_of(kind)[k]
    radius = r.radii[k] if cap and r.radii else None
    if radius is None:
        return score, lo, hi
    return min(score, radius), min(lo, radius), min(hi, radius)


def reduce_scores(triples: list[tuple[float, float, float]], use_min: bool) -> tuple[float, float, float]:
    """Mean (or minimum) of scores with the interval of that mean (or minimum)."""
    scores, los, his = (list(x) for x in zip(*triples))
    if use_min:
        # If every true score lies in its interval, their minimum lies in [min lo, min hi].
        return min(scores), min(los), min(his)
    lo, hi = mean_interval(scores, los, his)
    return sum(scores) / len(scores), lo, hi


INTERVAL_KINDS = ("end_point", "rerun")


def _lines(info: str, reduced: dict[str, list[tuple[float, float, float]]], labels: tuple[str, ...]) -> list[str]:
    """The `[STATS][L0]` line and one `[STATS][CI]` line per interval kind."""
    first = reduced[INTERVAL_KINDS[0]]
    return [stats_line(info, [r[0] for r in first], labels),
            *(stats_ci_line(info, [r[0] for r in reduced[kind]], [(r[1], r[2]) for r in reduced[kind]], labels, kind)
              for kind in INTERVAL_KINDS)]


def _certified_line(info: str, groups: list[list[FileScores]], labels: tuple[str, ...], use_min: bool) -> list[str]:
    """`[STATS][CERT]`: the mean (or minimum) certified radius beside the CLEVER score, when every file has one.

    `groups` holds one list of files per summarised unit (a file, or an image's classes, whose
    smallest certified radius is the untargeted one).
    """
    if not groups or not all(r.certified_radii and None not in r.certified_radii for g in groups for r in g):
        return []
    reduce = min if use_min else (lambda xs: sum(xs) / len(xs))
    certified = [reduce([min(r.certified_radii[k] for r in g) for g in groups]) for k in range(len(labels))]
    scores = [reduce([min(r.scores[k] for r in g) for g in groups]) for k in range(len(labels))]
    lipschitz = None
    if all(r.lipschitz_radii and None not in r.lipschitz_radii for g in groups for r in g):
        lipschitz = [reduce([min(r.lipschitz_radii[k] for r in g) for g in groups]) for k in range(len(labels))]
    return [stats_cert_line(info, certified, scores, labels, lipschitz)]


def _summary(results: list[FileScores], labels: tuple[str, ...], untargeted: bool, use_min: bool,
             cap: bool, image_lines: bool) -> list[str]:
    columns = range(len(labels))
    lines = []
    if untargeted:
        per_image: dict[int, list[FileScores]] = defaultdict(list)
        for r in results:
            per_image[r.id].append(r)
        image_scores = {kind: [] for kind in INTERVAL_KINDS}
        for image, rs in per_image.items():
            for kind in INTERVAL_KINDS:
                image_scores[kind].append([reduce_scores([score_triple(r, k, cap, kind) for r in rs], use_min=True)
                                           for k in columns])
            if image_lines:
                lines.append(untargeted_image_line(image, len(rs) + 1,
                                                   [b[0] for b in image_scores["end_point"][-1]], labels))
        reduced = {kind: [reduce_scores([s[k] for s in image_scores[kind]], use_min) for k in columns]
                   for kind in INTERVAL_KINDS}
        certified = _certified_line("untargeted", list(per_image.values()), labels, use_min)
        return lines + _lines("untargeted", reduced, labels) + certified
    by_info: dict[str, list[FileScores]] = defaultdict(list)
    for r in results:
        by_info[r.info].append(r)
    order = [i for i in INFO_ORDER if i in by_info] + sorted(i for i in by_info if i not in INFO_ORDER)
    for info in order:
        reduced = {kind: [reduce_scores([score_triple(r, k, cap, kind) for r in by_info[info]], use_min) for k in columns]
                   for kind in INTERVAL_KINDS}
        lines += _lines(info, reduced, labels) + _certified_line(info, [[r] for r in by_info[info]], labels, use_min)
    return lines


def incomplete_images(results: list[FileScores]) -> dict[int, list[int]]:
    """Per image whose files miss some target classes (untargeted), the missing classes."""
    per_image: dict[int, list[FileScores]] = defaultdict(list)
    for r in results:
        per_image[r.id].append(r)
    missing = {}
    for image, rs in per_image.items():
        classes = max(r.num_classes for r in rs)
        present = {r.target_label for r in rs} | {rs[0].true_label}
        absent = [j for j in range(classes) if j not in present]
        if absent:
            missing[image] = absent
    return missing


COLUMNS = ["file", "id", "true_label", "target_label", "info", "norm", "g_x0", "score", "score_lo", "score_hi",
           "lipschitz", "lipschitz_lo", "lipschitz_hi", "score_rerun_lo", "score_rerun_hi", "lipschitz_rerun_lo",
           "lipschitz_rerun_hi", "searched", "shape", "loc", "scale", "ks", "pVal", "method", "order",
           "supported_radius", "beyond_ball", "partial", "plateau", "lipschitz_found", "lipschitz_certified",
           "certified_radius", "lipschitz_exact", "exact_distortion", "attack_distortion", "certified_radius_lipschitz",
           "certified_by"]


def write_tables(results: list[FileScores], method: str, csv: Path | None, json_path: Path | None) -> None:
    """--csv / --json: one row per (file, norm), written atomically.

    JSON is written by the json module so that an unbounded interval end stays `Infinity`
    (pandas would write null, which reads as "missing" rather than "not bounded").
    """
    if not (csv or json_path):
        return
    import json

    import pandas as pd

    from cleverscore.mat_files import write_atomically

    rows = [row for r in results for row in r.rows(method)]
    if csv:
        write_atomically(csv, lambda p: pd.DataFrame(rows, columns=COLUMNS).to_csv(p, index=False))
    if json_path:
        write_atomically(json_path, lambda p: Path(p).write_text(json.dumps(rows, indent=1)))


def folder_files(folder: Path, num_images: int) -> list[Path]:
    """The folder's .mat files (the first `num_images` of them if given); UsageError if none."""
    if not folder.is_dir():
        raise UsageError(f"data folder {folder} does not exist")
    files = find_mat_files(folder)
    if num_images:
        files = files[:num_images]
    if not files:
        raise UsageError(f"no .mat files found below {folder}")
    return files


def check_one_model(files: list[Path], folder: Path | str) -> None:
    """UsageError when the files record more than one `model_id`: a summary over two models means nothing.

    Refused rather than split: a split would print two summaries that a script reading the
    `[STATS]` lines cannot tell apart, and the usual cause (two runs of same-named models into
    one `-s` folder, before folder names carried the id) is best fixed by moving the files.
    Files without a `model_id` (older versions) agree with any model."""
    import scipy.io as sio

    models: dict[str, list[Path]] = defaultdict(list)
    paths: dict[str, str] = {}
    for path in files:
        try:
            mat = sio.loadmat(str(path), variable_names=[MODEL_ID_KEY, "args"])
        except Exception:  # noqa: BLE001 - unreadable files are skipped with a reason when scored
            continue
        found = recorded_model_id(mat)
        if found:
            models[found].append(path)
            paths.setdefault(found, recorded_model_path(mat))
    if len(models) > 1:
        shown = "; ".join(f"model_id {m} ({paths[m] or 'a built-in model'}): {len(fs)} file(s), e.g. {fs[0].name}"
                          for m, fs in sorted(models.items(), key=lambda kv: -len(kv[1])))
        raise UsageError(f"{folder} holds the results of {len(models)} different models ({shown}); scores of "
                         "different models cannot be averaged: move each model's files into a folder of its own")


def score_files(files: list[Path], settings: ScoreSettings,
                verbose: bool = True) -> tuple[list[FileScores], list[Path], dict[str, dict]]:
    """Score every file (verbose: the [DEBUG] lines go to stdout); unusable files are skipped with a warning.

    Returns the scores, the skipped files and the warning counts (fallbacks, beyond-ball scores, search hits).
    """
    results, skipped = [], []
    warnings: dict[str, dict] = {"fallback": defaultdict(int), "beyond": defaultdict(int), "searched": defaultdict(int),
                                 "plateau": defaultdict(int)}
    workers = settings.nthreads or len(C_INIT) + 1
    executor = None
    if settings.method != "maxsamp" and workers > 1:
        executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    try:
        for path in files:
            try:
                results.append(score_file(path, settings, executor, warnings, verbose))
            except ValueError as err:
                print(f"[WARNING] skipping {path}: {err}", file=sys.stderr)
                skipped.append(path)
            sys.stdout.flush()
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    return results, skipped, warnings


def print_warning_counts(warnings: dict[str, dict]) -> None:
    """One grouped `[WARNING]` line per kind that occurred (log_lines.WARNING_KINDS), after the summary."""
    sys.stdout.flush()
    for line in warning_summary_lines(warnings):
        print(line, file=sys.stderr)


def handle_partial_images(results: list[FileScores], allow: bool) -> tuple[list[FileScores], int]:
    """Untargeted: leave out (or, with allow, mark) images whose files miss target classes.

    The minimum over fewer classes is biased upward. Returns the results kept and the number of
    images left out.
    """
    missing = incomplete_images(results)
    for image, classes in missing.items():
        if allow:
            print(f"[WARNING] image {image}: no files for target classes {classes}; its untargeted score is the "
                  "minimum over the classes present (--allow_partial)", file=sys.stderr)
        else:
            print(f"[WARNING] image {image}: no files for target classes {classes}; left out of the untargeted "
                  "summary (--allow_partial keeps it)", file=sys.stderr)
    if allow:
        for r in results:
            r.partial = r.id in missing
        return results, 0
    return [r for r in results if r.id not in missing], len(missing)
