"""Optimised lower slopes of unstable ReLUs (alpha-CROWN): for the margin bound, and for intermediate bounds.

For an unstable ReLU (l < 0 < u) every line a x with 0 <= a <= 1 lies below relu(x), so every
choice of these slopes gives a sound CROWN bound; CROWN picks 0 or 1 by a rule of thumb. The
bound of one objective row is a differentiable function of the slopes, so projected gradient
ascent on the bound itself (Adam steps, clipped to [0, 1]; Xu et al., "Fast and Complete",
ICLR 2021) finds better ones. Every row gets its own slopes; the best bound seen is kept, and
it is never below the unoptimised one (the first step evaluates CROWN's own slopes).

- `optimized_lower`: the margin's own pass (a few rows), for the certified radius; the
  intermediate bounds stay CROWN's, so a step costs one backward pass per target.
- `tighter_node_bounds`: the rows of a node's unstable neurons (those feeding an unstable
  ReLU), for `BoundPropagation(slope_seconds=...)`; tighter bounds there make later ReLUs and
  max-pooling windows stable, which the backward-pass Lipschitz bound profits from most. These
  passes carry one dense row per neuron and its own copy of every slope below it, so their rows
  are grouped to fit the memory budget.
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
# Live tensors per optimised row: of every slope below it, of the largest node its pass visits, and of
# every node it visits (the gradient tape keeps each step's coefficients until the slopes' gradients).
_SLOPE_COPIES = 5
_PASS_COPIES = 5
_TAPE_COPIES = 2


def _unstable_relus(bp: BoundPropagation, below: int | None = None) -> dict[int, tf.Tensor]:
    """Node index -> mask (B, 1, *shape) of the ReLUs with l < 0 < u (whose slope is free), before node `below`."""
    masks = {}
    for m, node in enumerate(bp.graph.nodes[:below]):
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
        bound, used = _optimize_rows(bp, last, spec[:, t:t + 1], None, masks, share, steps, learning_rate)
        best.append(bound)
        taken += used
    return np.concatenate(best, axis=1), taken


def tighter_node_bounds(bp: BoundPropagation, i: int, seconds: float, steps: int = MAX_STEPS,
                        learning_rate: float = LEARNING_RATE) -> tuple[int, int]:
    """Tighten node i's bounds in place with optimised slopes for its unstable neurons, within about `seconds`.

    Node i must have its CROWN bounds already and feed a ReLU. Returns how many neurons were
    optimised and how many of them became stable.
    """
    masks = _unstable_relus(bp, below=i)
    lo, hi = bp.bounds[i]
    unstable = tf.reshape((lo < 0) & (hi > 0), (bp.batch, -1))
    rows = np.flatnonzero(tf.reduce_any(unstable, axis=0).numpy()).astype(np.int32)
    if not masks or len(rows) == 0 or seconds <= 0:
        return 0, 0
    deadline = time.perf_counter() + seconds
    groups = np.array_split(rows, -(-len(rows) // _rows_per_group(bp, i, masks)))
    for k, group in enumerate(groups):
        if k > 0 and time.perf_counter() >= deadline:
            break  # every optimised group takes a step at least: the rest keep their CROWN bounds
        share = max(0.0, (deadline - time.perf_counter()) / (len(groups) - k))
        start, spec, constant = bp.dense_unit_rows(i, group)
        best, _ = _optimize_rows(bp, start, spec, constant, masks, share, steps, learning_rate)
        bp.tighten_rows(i, group, tf.constant(best, bp.graph.dtype))
    lo, hi = (tf.reshape(t, (bp.batch, -1)).numpy() for t in bp.bounds[i])
    stable = ~np.any((lo[:, rows] < 0) & (hi[:, rows] > 0), axis=0)
    return len(rows), int(stable.sum())


def _rows_per_group(bp: BoundPropagation, i: int, masks: dict[int, tf.Tensor]) -> int:
    """How many neurons of node i one optimised pass may carry: two dense rows each, each with its own slopes
    (the variable, Adam's two moments, the gradient and the selected slopes), the pass's coefficients and
    what the tape keeps of them."""
    slopes = sum(int(np.prod(mask.shape[2:])) for mask in masks.values())
    sizes = [node.size for node in bp.graph.nodes[:i + 1]]
    floats = _SLOPE_COPIES * slopes + _PASS_COPIES * max(sizes) + _TAPE_COPIES * sum(sizes)
    per_row = 2 * bp.batch * bp.graph.dtype.size * floats
    return max(1, int(bp.memory_budget // per_row))


def _optimize_rows(bp: BoundPropagation, start_node: int, rows: tf.Tensor, constant: tf.Tensor | None,
                   masks: dict[int, tf.Tensor], seconds: float, steps: int,
                   learning_rate: float) -> tuple[np.ndarray, int]:
    """The best lower bounds (B, S) of objective rows (B, S, *shape) on node `start_node` (plus `constant`) over
    projected Adam steps on each row's own slopes."""
    count = int(rows.shape[1])
    start = {m: bp.relaxation(m)[0] for m in masks}
    slopes = {m: tf.Variable(tf.broadcast_to(start[m], (bp.batch, count, *start[m].shape[2:]))) for m in masks}
    adam = keras.optimizers.Adam(learning_rate)
    best = None
    stale = 0
    deadline = time.perf_counter() + seconds
    taken = 0
    while taken < steps:
        taken += 1
        with tf.GradientTape() as tape:
            used = {m: tf.where(masks[m], slopes[m], start[m]) for m in masks}
            bound = bp.backward_lower(start_node, rows, constant, lower_slopes=used)
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
