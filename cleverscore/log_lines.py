"""Every line format that users parse, in one place ([DATAGEN], [STATS], [DEBUG], [COMPARE])."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO


def g5(x: float) -> str:
    """A number with 5 significant digits, as every score in the original output."""
    return f"{float(x):.5g}"


def ratio(a: float, b: float) -> float:
    """a / b, with inf (or nan) instead of a ZeroDivisionError when b is 0."""
    a, b = float(a), float(b)
    return a / b if b else (float("nan") if a == 0 else float("inf"))


def datagen_line(no: int, true_id: int, true_label: int, predicted: int, correct: bool,
                 seq: Sequence[int], info: Sequence[str], names: tuple[str, str] | None = None) -> str:
    """The per-image line; ImageNet runs append the true and predicted class names at the end."""
    line = (f"[DATAGEN][L1] no = {no}, true_id = {true_id}, true_label = {true_label}, predicted = {predicted}, "
            f"correct = {correct}, seq = {list(map(int, seq))}, info = {list(info)}")
    return line if names is None else f"{line}, true_name = {names[0]!r}, predicted_name = {names[1]!r}"


def iteration_line(loop: int, elapsed: float, iter_time: float, overhead: float,
                   grads: Sequence[float], slopes: Sequence[float] | None) -> str:
    """Per-iteration maxima; `grads` is (G2, G1, Gi), `slopes` (L2, L1, Li) or None."""
    head = f"[STATS][L2] loop = {loop}, time = {g5(elapsed)}, iter_time = {g5(iter_time)}, overhead = {g5(overhead)}"
    slope = "" if slopes is None else f", L2 = {g5(slopes[0])}, L1 = {g5(slopes[1])}, Linf = {g5(slopes[2])}"
    return f"{head}{slope}, G2 = {g5(grads[0])}, G1 = {g5(grads[1])}, Ginf = {g5(grads[2])}"


def collection_summary_lines(g_x0: float, grad_max: Sequence[float], slope_max: Sequence[float],
                             with_slope: bool) -> list[str]:
    """The two `[STATS][L1]` lines printed after an (image, target) collection."""
    g2, g1, gi = grad_max
    l2, l1, li = slope_max
    lines = [f"[STATS][L1] g_x0 = {g5(g_x0)}, L2_max = {g5(l2)}, L1_max = {g5(l1)}, Linf_max = {g5(li)}, "
             f"G2_max = {g5(g2)}, G1_max = {g5(g1)}, Ginf_max = {g5(gi)}"]
    if with_slope:
        lines.append(f"[STATS][L1] bnd_L2_max = {g5(ratio(g_x0, l2))}, bnd_L1_max = {g5(ratio(g_x0, li))}, "
                     f"bnd_Linf_max = {g5(ratio(g_x0, l1))}, bnd_G2_max = {g5(ratio(g_x0, g2))}, "
                     f"bnd_G1_max = {g5(ratio(g_x0, gi))}, bnd_Ginf_max = {g5(ratio(g_x0, g1))}")
    else:
        lines.append(f"[STATS][L1] bnd_G2_max = {g5(ratio(g_x0, g2))}, bnd_G1_max = {g5(ratio(g_x0, gi))}, "
                     f"bnd_Ginf_max = {g5(ratio(g_x0, g1))}")
    return lines


def hessian_iteration_line(loop: int, elapsed: float, iter_time: float, h2: float) -> str:
    return (f"[STATS][L2] loop = {loop}, time = {g5(elapsed)}, iter_time = {g5(iter_time)}, overhead = 0, "
            f"H2 = {g5(h2)}")


def hessian_summary_line(g_x0: float, grad_norm: float, h2_max: Sequence[float]) -> str:
    largest = max(h2_max, key=abs)
    return f"[STATS][L1] g_x0 = {g5(g_x0)}, g_x0_grad_2_norm = {g5(grad_norm)}, H2_max = {g5(largest)}"


def collection_done_line(total: int, seq: int, true_id: int, elapsed: float, true_class: int,
                         target_class: int, info: str) -> str:
    return (f"[STATS][L1] total = {total}, seq = {seq}, id = {true_id}, time = {elapsed:.3f}, "
            f"true_class = {true_class}, target_class = {target_class}, info = {info}")


def _debug_head(true_id: int, true_label: int, target_label: int, info: str, nsamps: int, niters: int,
                bnd_norm: str, bnd: float) -> str:
    return (f"[DEBUG][L1] id = {true_id}, true_label = {true_label}, target_label = {target_label}, info = {info}, "
            f"nsamps = {nsamps}, niters = {niters}, bnd_norm = {bnd_norm}, bnd = {g5(bnd)}")


def debug_fit_line(true_id: int, true_label: int, target_label: int, info: str, nsamps: int, niters: int,
                   bnd_norm: str, bnd: float, ks: float, pval: float, shape: float, loc: float, scale: float,
                   g_x0: float) -> str:
    """The original's per-file, per-norm line for the fitted methods (mle, mle_reg)."""
    head = _debug_head(true_id, true_label, target_label, info, nsamps, niters, bnd_norm, bnd)
    return (f"{head}, ks = {g5(ks)}, pVal = {g5(pval)}, shape = {g5(shape)}, loc = {g5(loc)}, scale = {g5(scale)}, "
            f"g_x0 = {g5(g_x0)}")


def debug_maxsamp_line(true_id: int, true_label: int, target_label: int, info: str, nsamps: int, niters: int,
                       bnd_norm: str, bnd: float) -> str:
    return _debug_head(true_id, true_label, target_label, info, nsamps, niters, bnd_norm, bnd)


def bound_line(true_id: int, true_label: int, target_label: int, info: str, bnd_norm: str, lipschitz: float,
               end_point: tuple[float, float], rerun: tuple[float, float], certain: tuple[float, float]) -> str:
    """`[BOUND]`, after a file's `[DEBUG][L1]` line when a proven upper bound exists: the Lipschitz
    estimate, its two statistical 95% intervals, and the certain bracket [largest norm found,
    smallest proven upper bound] that holds the true constant."""
    def pair(v: tuple[float, float]) -> str:
        return f"[{g5(v[0])}, {g5(v[1])}]"

    return (f"[BOUND] id = {true_id}, true_label = {true_label}, target_label = {target_label}, info = {info}, "
            f"bnd_norm = {bnd_norm}, lipschitz = {g5(lipschitz)}, end_point = {pair(end_point)}, "
            f"rerun = {pair(rerun)}, certain = {pair(certain)}")


def stats_line(info: str, scores: Sequence[float], labels: Sequence[str] = ("L1", "L2", "Li")) -> str:
    """`[STATS][L0] info = top2, top2_clever_L1 = .., top2_clever_L2 = .., top2_clever_Li = ..`."""
    parts = ", ".join(f"{info}_clever_{lab} = {g5(s)}" for lab, s in zip(labels, scores))
    return f"[STATS][L0] info = {info}, {parts}"


def stats_ci_line(info: str, scores: Sequence[float], intervals: Sequence[tuple[float, float]],
                  labels: Sequence[str] = ("L1", "L2", "Li"), kind: str = "end_point") -> str:
    """`[STATS][CI]`: each summary score with a 95% interval; `interval = end_point` (where the sampled
    law's end point may lie) or `interval = rerun` (where another seed's summary would fall), last."""
    parts = ", ".join(f"{info}_clever_{lab} = {g5(s)}, {lab}_lo = {g5(lo)}, {lab}_hi = {g5(hi)}"
                      for lab, s, (lo, hi) in zip(labels, scores, intervals))
    return f"[STATS][CI] info = {info}, {parts}, interval = {kind}"


def stats_cert_line(info: str, certified: Sequence[float], scores: Sequence[float],
                    labels: Sequence[str] = ("L1", "L2", "Li"), lipschitz: Sequence[float] | None = None) -> str:
    """`[STATS][CERT]`: per norm the certified radius (a proof: no adversarial example within it) beside
    the CLEVER score (an estimate of the smallest adversarial distortion); then, when the files hold
    them, the radii that the certified Lipschitz bound alone proves (`_certified_lipschitz_`)."""
    parts = ", ".join(f"{info}_certified_{lab} = {g5(c)}, {info}_clever_{lab} = {g5(s)}"
                      for lab, c, s in zip(labels, certified, scores))
    if lipschitz is not None:
        parts += "".join(f", {info}_certified_lipschitz_{lab} = {g5(v)}" for lab, v in zip(labels, lipschitz))
    return f"[STATS][CERT] info = {info}, {parts}"


def fallback_line(path: str, label: str, estimate: float) -> str:
    return (f"[WARNING] {path} {label}: ill-conditioned samples, no acceptable Weibull fit; using the largest "
            f"maximum {g5(estimate)} as the Lipschitz estimate")


def beyond_ball_line(path: str, label: str, score: float, radius: float) -> str:
    return (f"[WARNING] {path} {label}: score {g5(score)} is beyond the sampled ball (supported radius "
            f"{g5(radius)}); it extrapolates past every sample")


def searched_above_line(path: str, label: str, found: float, estimate: float) -> str:
    return (f"[WARNING] {path} {label}: search found a gradient norm of {g5(found)}, above the estimate "
            f"{g5(estimate)}; the score is capped at g_x0 / {g5(found)}")


def plateau_line(path: str, label: str, repeated: float, found: float, upper: float) -> str:
    upper_text = "unbounded" if upper == float("inf") else f"at most the proven {g5(upper)}"
    return (f"[WARNING] {path} {label}: the maxima repeat one value ({g5(repeated)}): the sampler saw one region, "
            f"not the constant; the constant is at least {g5(found)} and {upper_text}")


# The kinds of per-file warnings clever.py groups, in the order printed: what each count says, and what it
# means for the scores above it. The per-file lines come with --verbose; the CSV/JSON columns name the files.
WARNING_KINDS = {
    "fallback": ("fit(s) fell back to the largest maximum",
                 "their samples were ill-conditioned (no acceptable Weibull fit), so those scores use the largest "
                 "sampled norm as the Lipschitz estimate and may be too high (CSV column method ends in "
                 ":fallback_max)"),
    "beyond": ("score(s) beyond the sampled ball",
               "no sample lies that far from the image, so those scores extrapolate and may be too high; "
               "--cap_radius caps them at the ball's radius (CSV column beyond_ball)"),
    "searched": ("estimate(s) below a norm found by search",
                 "the fit underestimated the constant there, so those scores were lowered to g_x0 / the norm "
                 "found (CSV column searched)"),
    "plateau": ("plateau(s): maxima repeating one value",
                "the sampler saw one linear region, not the constant: the true constant may be higher, up to "
                "the proven bound when there is one (CSV column plateau)"),
}


def counts_line(what: str, counts: dict[tuple[str, str], int], meaning: str = "") -> str:
    """`[WARNING] 3 fit(s) fell back ...: top2/L2 = 2, least/Li = 1; <meaning>` (per info and norm)."""
    parts = ", ".join(f"{info}/{label} = {n}" for (info, label), n in sorted(counts.items()))
    return f"[WARNING] {sum(counts.values())} {what}: {parts}" + (f"; {meaning}" if meaning else "")


def warning_summary_lines(warnings: dict[str, dict[tuple[str, str], int]]) -> list[str]:
    """One line per kind of per-file warning that occurred, with its counts and what it means."""
    return [counts_line(what, warnings[kind], meaning) for kind, (what, meaning) in WARNING_KINDS.items()
            if warnings.get(kind)]


def untargeted_image_line(image: int, n_classes: int, scores: Sequence[float],
                          labels: Sequence[str] = ("L1", "L2", "Li")) -> str:
    parts = ", ".join(f"clever_{lab} = {g5(s)}" for lab, s in zip(labels, scores))
    return f"[STATS][L1] image = {image:3d}, n_classes = {n_classes:3d}, {parts}"


def ray_workers_line(workers: int, nodes: int, gpus: int, address: str) -> str:
    """Printed once a --ray run's workers have loaded the model."""
    return f"[RAY] {workers} worker(s) ready on {nodes} node(s) with {gpus} GPU(s), cluster {address}"


def compare_line(info: str, norm: str, pairs: int, mean_a: float, mean_b: float, ratio_: float, lo: float, hi: float,
                 verdict: str, bound: str = "rerun") -> str:
    """`[COMPARE] info = top2, norm = L2, pairs = 20, A = 0.827, B = 1.049, B/A = 1.27 [1.12, 1.43], noise = rerun:
    <verdict>` (`noise`: which interval each score was redrawn from; the verdict from `compare_verdict`)."""
    return (f"[COMPARE] info = {info}, norm = {norm}, pairs = {pairs}, A = {mean_a:.4g}, B = {mean_b:.4g}, "
            f"B/A = {ratio_:.2f} [{lo:.2f}, {hi:.2f}], noise = {bound}: {verdict}")


def compare_verdict(claim: str, evidence: Sequence[str], against: Sequence[tuple[str, float, float, float, str]],
                    cause: str) -> str:
    """The verdict at the end of a `[COMPARE]` line: CLEVER's `claim` and what the evidence makes of it.

    `claim; rests on CLEVER alone (...)` without evidence, `claim; certified and attack agree` when
    it backs a "more robust", `claim by CLEVER, but attack disagrees (attack B/A = 1.00 [0.97, 1.04]
    contains 1): <cause>` when some does not (`against`: name, ratio, lo, hi, why), and the bare
    claim for "no difference" beside evidence (the evidence line says the rest).
    """
    if not evidence:
        return f"{claim}; rests on CLEVER alone (no certified radius or attack distortion in both folders)"
    if against:
        details = "; ".join(f"{name} B/A = {ratio:.2f} [{lo:.2f}, {hi:.2f}] {why}" for name, ratio, lo, hi, why in against)
        verb = "disagree" if len(against) > 1 else "disagrees"
        return f"{claim} by CLEVER, but {' and '.join(a[0] for a in against)} {verb} ({details}): {cause}"
    if claim.endswith("more robust"):
        return f"{claim}; {' and '.join(evidence)} {'agree' if len(evidence) > 1 else 'agrees'}"
    return claim


def compare_evidence_line(s: dict) -> str:
    """`[COMPARE] info = top2, norm = Li, certified B/A = 1.30 [1.10, 1.52], attack B/A = 1.25 [1.05, 1.49]:
    CLEVER, certified and attack agree` (or `disagree`): the proof's and the found examples' side of a verdict."""
    names = [name for name in ("certified", "attack") if f"{name}_ratio" in s]
    parts = ", ".join(f"{name} B/A = {s[f'{name}_ratio']:.2f} [{s[f'{name}_lo']:.2f}, {s[f'{name}_hi']:.2f}]"
                      for name in names)
    return f"[COMPARE] info = {s['info']}, norm = {s['norm']}, {parts}: CLEVER, {' and '.join(names)} {s['agreement']}"


def compare_left_out_line(reason: str, keys: Sequence[tuple[int, str]]) -> str:
    """`[COMPARE] left out, only in A: 2 (image, target type): id 3 least, id 3 top2`."""
    listed = ", ".join(f"id {image} {info}" for image, info in keys)
    return f"[COMPARE] left out, {reason}: {len(keys)} (image, target type): {listed}"


class ProgressBar:
    """A progress line on stderr per (image, targets) pass: iterations, samples/s and ETA.

    On a terminal it redraws in place, clearing what a longer previous line left at its end;
    otherwise it prints a line every 10% so logs stay short.
    """

    CLEAR_TO_END = "\x1b[K"

    def __init__(self, label: str, total: int, samples_per_step: int, stream: TextIO | None = None,
                 unit: str = "samples"):
        self.label, self.total, self.samples, self.unit = label, total, samples_per_step, unit
        # sys.stderr as it is now, not as it was at import (a caller may have redirected it since).
        self.stream = stream = sys.stderr if stream is None else stream
        self.start = time.perf_counter()
        self.tty = stream.isatty()
        self._next_report = 0.0
        self.finished = False

    def __call__(self, done: int, amount: float | None = None) -> None:
        """`done` of `total` steps; `amount` (default done * samples_per_step) counts toward the rate."""
        elapsed = time.perf_counter() - self.start
        fraction = done / self.total
        if not self.tty and fraction < self._next_report and done < self.total:
            return
        self._next_report = fraction + 0.1
        amount = done * self.samples if amount is None else amount
        rate = amount / elapsed if elapsed > 0 else 0.0
        eta = elapsed / done * (self.total - done) if done else 0.0
        width = 24
        bar = "=" * int(width * fraction) + "." * (width - int(width * fraction))
        text = f"{self.label} [{bar}] {done}/{self.total} {rate:,.0f} {self.unit}/s ETA {eta:.0f}s"
        self.finished = done >= self.total
        end = "\n" if (not self.tty or self.finished) else ""
        self.stream.write(f"\r{text}{self.CLEAR_TO_END}{end}" if self.tty else text + end)
        self.stream.flush()


class RunProgress:
    """One progress bar over a whole run: each work item's iterations advance it (the estimator's
    `progress(niters, nsamps)` factory is `item`). An item that stops early (`rel_tol`) jumps ahead."""

    def __init__(self, label: str, total_iterations: int, samples_per_step: int, stream: TextIO | None = None):
        self.bar = ProgressBar(label, max(total_iterations, 1), samples_per_step, stream)
        self.offset = 0

    def item(self, niters: int, nsamps: int):
        start = self.offset
        self.offset += niters
        return lambda done, amount=None: self.bar(min(start + done, self.bar.total))

    def finish(self) -> None:
        """Draw the bar full (once), for a run whose last item stopped early or that had nothing to do."""
        if not self.bar.finished:
            self.bar(self.bar.total)
