"""Optimised lower slopes of unstable ReLUs for the margin bound (alpha-CROWN on the objective's pass).

For an unstable ReLU (l < 0 < u) every line a x with 0 <= a <= 1 lies below relu(x), so every
choice of these slopes gives a sound CROWN bound; CROWN picks 0 or 1 by a rule of thumb. The
bound of one objective row is a differentiable function of the slopes, so projected gradient
ascent on the bound itself (Adam steps, clipped to [0, 1]; Xu et al., "Fast and Complete",
ICLR 2021) finds better ones. The intermediate bounds stay CROWN's: only the objective's own
pass is optimised, which is cheap (a few rows against the thousands of neurons of the
intermediate passes), so the cost per step is one backward pass per target.

Each target gets its own slopes; the best bound seen is returned, and it is never below the
unoptimised one (the first step evaluates CROWN's own slopes).
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf

from .bounds import BoundPropagation
from .ops.activation import ReLU

LEARNING_RATE = 0.1
MAX_STEPS = 50
# Stop a target once its bound has not risen by this fraction of its size for PATIENCE steps.
PATIENCE = 8
_MIN_RISE = 1e-4


def _unstable_relus(bp: BoundPropagation) -> dict[int, tf.Tensor]:
    """Node index -> mask (B, 1, *shape) of the ReLUs with l < 0 < u (whose slope is free)."""
    masks = {}
    for m, node in enumerate(bp.graph.nodes):
        if isinstance(node.op, ReLU):
            lo, hi = bp.bounds[node.inputs[0]]
            unstable = (lo < 0) & (hi > 0)
            if bool(tf.reduce_any(unstable)):
                masks[m] = tf.expand_dims(unstable, 1)
    return masks


def optimized_lower(bp: BoundPropagation, spec: tf.Tensor, seconds: float, steps: int = MAX_STEPS,
                    learning_rate: float = LEARNING_RATE) -> tuple[np.ndarray, int]:
    """Lower bounds (B, T) of spec . f(x) over bp's balls with optimised ReLU lower slopes, and the steps taken.

    `spec` is (B or 1, T, *output shape). Each target is optimised for at most `steps` steps and
    all of them together for about `seconds`.
    """
    last = len(bp.graph.nodes) - 1
    masks = _unstable_relus(bp)
    spec = tf.broadcast_to(spec, (bp.batch, *spec.shape[1:]))
    if not masks or seconds <= 0:
        return bp.backward_lower(last, spec).numpy(), 0
    deadline = time.perf_counter() + seconds
    rows = int(spec.shape[1])
    best, taken = [], 0
    for t in range(rows):
        share = max(0.0, (deadline - time.perf_counter()) / (rows - t))
        bound, used = _optimize_row(bp, last, spec[:, t:t + 1], masks, share, steps, learning_rate)
        best.append(bound)
        taken += used
    return np.concatenate(best, axis=1), taken


def _optimize_row(bp: BoundPropagation, last: int, row: tf.Tensor, masks: dict[int, tf.Tensor], seconds: float,
                  steps: int, learning_rate: float) -> tuple[np.ndarray, int]:
    """The best lower bound (B, 1) of one objective row over projected Adam steps on the slopes."""
    start = {m: bp.relaxation(m)[0] for m in masks}
    slopes = {m: tf.Variable(start[m]) for m in masks}
    adam = keras.optimizers.Adam(learning_rate)
    best = None
    stale = 0
    deadline = time.perf_counter() + seconds
    taken = 0
    while taken < steps:
        taken += 1
        with tf.GradientTape() as tape:
            used = {m: tf.where(masks[m], slopes[m], start[m]) for m in masks}
            bound = bp.backward_lower(last, row, lower_slopes=used)
            loss = -tf.reduce_sum(bound)
        value = bound.numpy()
        rise = np.inf if best is None else float(np.max(value - best))
        best = value if best is None else np.maximum(best, value)
        stale = stale + 1 if rise <= _MIN_RISE * max(1.0, float(np.max(np.abs(best)))) else 0
        if stale >= PATIENCE or time.perf_counter() > deadline:
            break
        grads = tape.gradient(loss, slopes)
        adam.apply_gradients([(g, slopes[m]) for m, g in grads.items() if g is not None])
        for var in slopes.values():  # projected steps: slopes of lines below a ReLU lie in [0, 1]
            var.assign(tf.clip_by_value(var, 0.0, 1.0))
    return best, taken
