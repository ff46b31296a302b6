"""A gradient-free check: the closest adversarial point along random directions (a decision-based search).

Per image, `directions` random directions of unit norm; along each, the box-clipped ray from the
image is searched by bisection for the nearest point that is adversarial (only the model's
decisions are used, no gradient). Its use is diagnostic: on a model whose gradients are honest
it lands far above the gradient attacks, so where it beats them the gradients mislead (gradient
masking); `best.masking_share` counts those pairs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cleverscore.attacks.criteria import as_criterion
from cleverscore.attacks.distances import distance
from cleverscore.attacks.result import AttackResult, predict, verified
from cleverscore.attacks.steps import check_budget
from cleverscore.norms import LINF, LpNorm

NOISE_DIRECTIONS = 100  # random directions per image
NOISE_BISECTIONS = 20  # steps along each ray: 2^-20 of the box's diameter


def noise(logits_fn: Callable, x: np.ndarray, criterion, norm: LpNorm = LINF, *, directions: int = NOISE_DIRECTIONS,
          box: tuple[float, float] = (-0.5, 0.5), seed: int = 0) -> AttackResult:
    """The closest adversarial point per image along random rays (see the module docstring)."""
    import tensorflow as tf

    check_budget(directions=directions)
    criterion = as_criterion(criterion)
    x = np.asarray(x, np.float32)
    n, size = len(x), int(np.prod(x.shape[1:]))
    geometry = distance(norm)
    rays = geometry.random_direction(tf.constant([seed, 0], tf.int64), n * directions, size).numpy()
    origin = np.repeat(x.reshape(n, -1), directions, axis=0)
    rows = criterion.rows(np.repeat(np.arange(n), directions))
    far = float(geometry.numpy_measure(np.full((1, size), box[1] - box[0], np.float32))[0])

    def point(s: np.ndarray) -> np.ndarray:
        flat = np.clip(origin + s[:, None].astype(np.float32) * rays, *box).astype(np.float32)
        return flat.reshape(-1, *x.shape[1:])

    lo, hi = np.zeros(len(origin)), np.full(len(origin), far)
    reached = rows.adversarial(predict(logits_fn, point(hi)))
    for _ in range(NOISE_BISECTIONS):
        mid = (lo + hi) / 2
        hit = rows.adversarial(predict(logits_fn, point(mid))) & reached
        lo, hi = np.where(hit, lo, mid), np.where(hit, mid, hi)
    ends = point(hi).reshape(len(origin), -1)
    sizes = np.where(reached, geometry.numpy_measure(ends - origin), np.inf).reshape(n, directions)
    pick = np.argmin(sizes, axis=1)
    best = ends.reshape(n, directions, -1)[np.arange(n), pick]
    found = np.isfinite(sizes[np.arange(n), pick])
    return verified(logits_fn, x, best.reshape(x.shape), found, criterion, box)
