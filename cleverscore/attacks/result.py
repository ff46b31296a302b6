"""The one place an attack's examples are checked and measured, after every attack.

An example counts only if, fed to the model in float32 on its own batch, its arg max meets the
criterion, and it lies inside the input box; its distortions are computed in float64 from the
example itself, never taken from the attack's bookkeeping. Before that check, an attack's
examples can be pulled back along the segment to the original image (`towards_original`): a
bisection on the segment's length keeps the shortest point that is still adversarial, which
shrinks every norm of the perturbation at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cleverscore.attacks.criteria import Criterion
from cleverscore.norms import L1, L2, LINF, LpNorm
from cleverscore.sampling.balls import numpy_norms

# Bisection steps along the segment: 2^-24 of the perturbation's length, float32's resolution.
SEGMENT_BISECTIONS = 24
# Relative pushes away from the image for a found candidate that the float32 check finds on the wrong
# side of the boundary (an attack that stopped exactly on it): at most 0.1% more distortion.
NUDGES = (1e-6, 1e-5, 1e-4, 1e-3)


@dataclass
class AttackResult:
    """Per-example outcome of one attack on a batch.

    Attributes:
        adversarial: (B, ...) float32 examples (the original image where the attack failed).
        success: (B,) bool, the example meets the criterion (checked by `verified`).
        l1, l2, linf: (B,) float64 distortions of the examples (inf where the attack failed).
    """

    adversarial: np.ndarray
    success: np.ndarray
    l1: np.ndarray
    l2: np.ndarray
    linf: np.ndarray

    def distortion(self, norm: LpNorm) -> np.ndarray:
        """The distortions in one norm (L1, L2 or LINF)."""
        return {L1: self.l1, L2: self.l2, LINF: self.linf}[norm]


def predict(logits_fn: Callable, x: np.ndarray, batch: int = 512) -> np.ndarray:
    """The model's float32 logits, in batches."""
    import tensorflow as tf

    x = np.asarray(x, np.float32)
    if not len(x):
        return np.zeros((0, 0), np.float32)
    return np.concatenate([np.asarray(logits_fn(tf.constant(x[i:i + batch]))) for i in range(0, len(x), batch)])


def inside_box(x: np.ndarray, box: tuple[float, float]) -> np.ndarray:
    """Per example, whether every coordinate lies in the box."""
    flat = np.asarray(x).reshape(len(x), -1)
    return np.all((flat >= box[0]) & (flat <= box[1]), axis=1)


def verified(logits_fn: Callable, x: np.ndarray, candidates: np.ndarray, found: np.ndarray,
             criterion: Criterion, box: tuple[float, float]) -> AttackResult:
    """The checked result: a candidate counts where `found`, adversarial in float32 and inside the box."""
    x = np.asarray(x, np.float32)
    candidates = np.asarray(candidates, np.float32)
    success = np.asarray(found, bool) & inside_box(candidates, box)
    if success.any():
        success &= criterion.adversarial(predict(logits_fn, candidates))
    adversarial = np.where(success.reshape((-1,) + (1,) * (x.ndim - 1)), candidates, x)
    delta = (adversarial.astype(np.float64) - x.astype(np.float64)).reshape(len(x), -1)
    norms = {norm: np.where(success, numpy_norms(delta, norm), np.inf) for norm in (L1, L2, LINF)}
    return AttackResult(adversarial, success, norms[L1], norms[L2], norms[LINF])


def nudged_outward(logits_fn: Callable, x: np.ndarray, candidates: np.ndarray, rows: np.ndarray,
                   criterion: Criterion, box: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The candidates of `rows` that are not adversarial in float32 moved a hair further from x (`NUDGES`),
    where that makes them adversarial; the others unchanged. Also returns the rows adversarial now."""
    out = candidates.copy()
    todo = rows[~criterion.rows(rows).adversarial(predict(logits_fn, out[rows]))]
    for nudge in NUDGES:
        if not len(todo):
            break
        trial = np.clip(x[todo] + (1 + nudge) * (candidates[todo] - x[todo]), *box).astype(np.float32)
        hit = criterion.rows(todo).adversarial(predict(logits_fn, trial))
        out[todo[hit]] = trial[hit]
        todo = todo[~hit]
    return out, np.setdiff1d(rows, todo)


def towards_original(logits_fn: Callable, x: np.ndarray, candidates: np.ndarray, found: np.ndarray,
                     criterion: Criterion, box: tuple[float, float], steps: int = SEGMENT_BISECTIONS) -> np.ndarray:
    """Each found candidate moved to the point of the segment x -> candidate nearest x still adversarial.

    The segment stays in the box (both ends do; the clip only undoes float32 rounding). Candidates
    that are not adversarial are returned unchanged (the check in `verified` then drops them).
    """
    x = np.asarray(x, np.float32)
    candidates = np.asarray(candidates, np.float32)
    rows = np.flatnonzero(np.asarray(found, bool))
    if not len(rows):
        return candidates
    candidates, rows = nudged_outward(logits_fn, x, candidates, rows, criterion, box)
    if not len(rows):  # every candidate tipped back in float32: nothing to shorten (`verified` drops them)
        return candidates
    shape = (-1,) + (1,) * (x.ndim - 1)
    origin, delta = x[rows], candidates[rows] - x[rows]

    def point(t: np.ndarray) -> np.ndarray:
        return np.clip(origin + t.reshape(shape).astype(np.float32) * delta, *box).astype(np.float32)

    lo, hi = np.zeros(len(rows)), np.ones(len(rows))
    for _ in range(steps):
        mid = (lo + hi) / 2
        hit = criterion.rows(rows).adversarial(predict(logits_fn, point(mid)))
        lo, hi = np.where(hit, lo, mid), np.where(hit, mid, hi)
    out = candidates.copy()
    moved = hi < 1.0  # a candidate never shortened stays exactly as the attack left it
    out[rows[moved]] = point(hi)[moved]
    # The last point lies within float32 noise of the boundary, where logits computed in another
    # batch can tip it back: it is checked as `verified` will check it, and dropped if it tips.
    tipped = rows[~criterion.rows(rows).adversarial(predict(logits_fn, out)[rows])]
    out[tipped] = candidates[tipped]
    return out


def finished(logits_fn: Callable, x: np.ndarray, candidates: np.ndarray, found: np.ndarray,
             criterion: Criterion, box: tuple[float, float], shorten: bool = True) -> AttackResult:
    """An attack's last step: shorten its examples along their segments (if asked), then check them."""
    if shorten:
        candidates = towards_original(logits_fn, x, candidates, found, criterion, box)
    return verified(logits_fn, x, candidates, found, criterion, box)
