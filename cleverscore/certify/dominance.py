"""Which entries of a max-pooling window can never be its maximum over the ball.

Interval bounds compare the entries of a window one bound at a time: entry k may be the maximum
whenever its upper bound reaches the chosen entry's lower bound. But the entries of a window
share most of their inputs and move together, so z_s - z_k can stay positive over the whole ball
while the intervals of z_s and z_k overlap. One CROWN pass bounds such differences directly: an
objective per pair on the window, through the layers below.

In each window, s is the entry largest at the centre of the ball (the same for every ball around
it, so all problems share the pairs). A lower bound of z_s - z_k above 0 proves that k is never
the strict maximum. When the pool reads a monotone activation y = f(z), the difference is taken on
z: z_s > z_k gives f(z_s) >= f(z_k), and where the two tie, f is flat between them, so a gradient
routed to either is zero. A window left with s alone is stable: y = x_s, and its gradient goes
to s. The same pass bounds z_k - z_s; after a ReLU (monotone and 1-Lipschitz) both bound the gap
y_k - y_s, which gives a window with one rival left the chord of y = y_s + relu(y_k - y_s)
(`ops/pooling.py`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .ops import Activation
from .ops.activation import BoundedReLU, ReLU
from .ops.pooling import MaxPooling2D, WindowOrder
from .patches import Patches

# Between these, y_k - y_s lies within [-relu(z_s - z_k), relu(z_k - z_s)]: monotone and 1-Lipschitz.
_ONE_LIPSCHITZ = (ReLU, BoundedReLU)
_SAMPLED_PAIRS = 256
_ONE_PASS_PAIRS = 768     # below this a sample pass costs about what it saves


def window_order(bp, i: int, known: WindowOrder | None = None) -> WindowOrder | None:
    """The order proven over the balls of `bp` (a BoundPropagation whose nodes below i are bounded) for max pooling
    node i; `known` holds what was proven over balls containing these. None without CROWN."""
    graph = bp.graph
    op: MaxPooling2D = graph.nodes[i].op
    source = graph.nodes[i].inputs[0]
    activation = graph.nodes[source].op if isinstance(graph.nodes[source].op, Activation) else None
    compared = graph.nodes[source].inputs[0] if activation is not None else source
    if not bp.crown or compared == 0:
        return known
    if known is not None:
        chosen = known.chosen                  # the same centre
    else:
        centre = bp.centre_values()[compared]
        chosen = tf.argmax(op._windows(centre, float("-inf")), axis=-1, output_type=tf.int32)[0]
    gap_lo, gap_hi = _interval_gaps(op, bp.bounds[source], chosen)
    dominated = np.zeros(gap_lo.shape, bool)
    if known is not None:
        dominated |= known.dominated.numpy()
        gap_lo, gap_hi = np.maximum(gap_lo, known.gap_lo.numpy()), np.minimum(gap_hi, known.gap_hi.numpy())
    *_, candidates = op._window_facts(bp.bounds[source], WindowOrder(chosen, tf.constant(dominated)))
    pairs = np.argwhere(tf.reduce_any(candidates, axis=0).numpy())          # (n, 4): window row, column, channel, k
    counts = tf.reduce_max(tf.reduce_sum(tf.cast(candidates, tf.int32), axis=-1), axis=0).numpy()
    # The gap's lower end serves only the chord of a window with one rival, and only after a 1-Lipschitz activation.
    gaps = activation is None or isinstance(activation, _ONE_LIPSCHITZ)
    lone = (counts[pairs[:, 0], pairs[:, 1], pairs[:, 2]] == 1) & gaps if len(pairs) else np.zeros(0, bool)
    # A pass bounds its pairs both ways. On a ball too large for any order (the original's L2
    # sampling ball on the MNIST CNN: 0 of 16,896 pairs proven; the first probes of a radius search),
    # a spread-out sample of the pairs says so first, for a small part of the cost.
    below = np.full((bp.batch, len(pairs)), -np.inf)                        # lower bounds of z_s - z_k
    above = np.full((bp.batch, len(pairs)), -np.inf)                        # lower bounds of z_k - z_s
    tested = np.zeros(len(pairs), bool)
    if len(pairs) > _ONE_PASS_PAIRS:
        tested[np.unique(np.linspace(0, len(pairs) - 1, _SAMPLED_PAIRS).astype(int))] = True
        below[:, tested], above[:, tested] = _lower_bounds(bp, op, compared, chosen, pairs[tested], lone[tested])
    if len(pairs) and (not tested.any() or np.any(below[:, tested] > 0)):
        rest = ~tested
        below[:, rest], above[:, rest] = _lower_bounds(bp, op, compared, chosen, pairs[rest], lone[rest])
        tested[:] = True
    if tested.any():
        at, below, above = _at(pairs[tested]), below[:, tested], above[:, tested]
        dominated[at] |= below > 0
        if activation is None:
            gap_hi[at], gap_lo[at] = np.minimum(gap_hi[at], -below), np.maximum(gap_lo[at], above)
        elif isinstance(activation, _ONE_LIPSCHITZ):
            gap_hi[at] = np.minimum(gap_hi[at], np.maximum(-below, 0.0))
            gap_lo[at] = np.maximum(gap_lo[at], -np.maximum(-above, 0.0))
    dtype = graph.dtype
    return WindowOrder(chosen, tf.constant(dominated), tf.constant(gap_lo, dtype), tf.constant(gap_hi, dtype))


def _interval_gaps(op: MaxPooling2D, bounds, chosen: tf.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(B, Ho, Wo, C, k) interval bounds of x_k - x_s in the pool's input ('same' padding entries: -inf)."""
    lo_w = op._windows(bounds.lo, float("-inf")).numpy()
    hi_w = op._windows(bounds.hi, float("-inf")).numpy()
    s = chosen.numpy()[None, ..., None]
    lo_s, hi_s = np.take_along_axis(lo_w, s, -1), np.take_along_axis(hi_w, s, -1)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(lo_w - hi_s, nan=-np.inf), np.nan_to_num(hi_w - lo_s, nan=-np.inf)


def _at(pairs: np.ndarray) -> tuple:
    """Index of the pairs (window row, column, channel, k) in (B, Ho, Wo, C, k) arrays, for every problem."""
    return (slice(None), pairs[:, 0], pairs[:, 1], pairs[:, 2], pairs[:, 3])


def _lower_bounds(bp, op: MaxPooling2D, node: int, chosen: tf.Tensor, pairs: np.ndarray, both: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(B, n) lower bounds of z_s - z_k and of z_k - z_s over each ball, for the pairs (window, k) of node `node`'s
    map, in one pass: the larger of CROWN's (in passes that fit the memory budget) and the intervals'."""
    ph, pw = op.pool
    top_pad, left_pad = op._pad_offsets()
    s = chosen.numpy()[pairs[:, 0], pairs[:, 1], pairs[:, 2]]
    a = np.zeros((len(pairs), ph, pw, bp.graph.nodes[node].shape[-1]), bp.graph.dtype.as_numpy_dtype)
    rows = np.arange(len(pairs))
    a[rows, s // pw, s % pw, pairs[:, 2]] += 1.0
    a[rows, pairs[:, 3] // pw, pairs[:, 3] % pw, pairs[:, 2]] -= 1.0
    a = np.concatenate([a, -a[both]])
    pairs = np.concatenate([pairs, pairs[both]])
    top = (pairs[:, 0] * ph - top_pad).astype(np.int64)
    left = (pairs[:, 1] * pw - left_pad).astype(np.int64)
    shape = tuple(bp.graph.nodes[node].shape)
    interval = bp.interval_concretize(Patches(tf.constant(a)[None], top, left, shape), node).numpy()
    per_row = bp.crown_bytes(node, max(1, ph * pw // 2))
    if per_row > bp.memory_budget:
        return interval[:, :len(rows)], _spread_back(interval[:, len(rows):], both)
    group = bp.batch if per_row * bp.batch <= bp.memory_budget else max(1, bp.memory_budget // per_row)
    chunk = max(1, bp.memory_budget // (per_row * group))
    out = []
    for first in range(0, bp.batch, group):
        problems = slice(first, min(bp.batch, first + group))
        b = problems.stop - problems.start
        parts = []
        for start in range(0, len(a), chunk):
            piece = slice(start, start + chunk)
            coefficients = tf.broadcast_to(tf.constant(a[piece])[None], (b, *a[piece].shape))
            p = Patches(coefficients, top[piece], left[piece], shape)
            parts.append(bp.backward_lower(node, p if bp.patches else p.dense(), problems=problems))
        out.append(tf.concat(parts, axis=1))
    lower = np.maximum(tf.concat(out, axis=0).numpy(), interval)
    return lower[:, :len(rows)], _spread_back(lower[:, len(rows):], both)


def _spread_back(values: np.ndarray, both: np.ndarray) -> np.ndarray:
    """(B, n) from the values of the pairs marked in `both` (-inf for the others: nothing proven)."""
    out = np.full((values.shape[0], len(both)), -np.inf)
    out[:, both] = values
    return out

