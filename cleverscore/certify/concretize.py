"""The minimum of a linear function a . x over an Lp ball intersected with the input box.

With x = x0 + delta, the feasible set is {||delta||_p <= r} intersected with the box
[box_lo - x0, box_hi - x0], itself intersected with [-r, r] (every Lp ball lies in the Linf ball
of the same radius). Along each coordinate only the direction that decreases a . delta matters,
so with m_i = |a_i| and w_i >= 0 the room in that direction, the problem is
    min - sum_i m_i s_i   subject to 0 <= s_i <= w_i, ||s||_p <= r.
- Linf: s = w (exact).
- L1: a fractional knapsack; the greedy solution by decreasing m_i is exact. It is evaluated
  through its Lagrange dual, -sum_i w_i max(0, m_i - lam) - lam r, at lam = the critical m_i:
  any lam >= 0 gives a valid lower bound, so rounding can never make the bound unsound.
- L2: the solution is s_i = min(m_i t, w_i) for the t with ||s||_2 = r, found exactly by
  sorting the saturation points w_i / m_i. It is evaluated through the dual
  -sum_i m_i s_i + (||s||^2 - r^2) / (2 t), valid for every t > 0, and never worse than the
  box bound -sum_i m_i w_i, which is also valid.
Both L1 and L2 are therefore exact for the ball intersected with the box, not just the
weaker of the ball bound -r ||a||_q and the box bound.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from cleverscore.errors import UsageError
from cleverscore.norms import LpNorm

from .ops.base import Interval
from .patches import Patches


def feasible_offsets(x0: tf.Tensor, radius: tf.Tensor, box: Interval) -> Interval:
    """Per problem, the box of offsets delta (B, *input_shape) that contains the ball intersected with the box."""
    r = tf.reshape(radius, (-1,) + (1,) * len(x0.shape))
    return Interval(tf.maximum(box.lo - x0, -r), tf.minimum(box.hi - x0, r))


def _min_linf(mag: tf.Tensor, room: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
    return -tf.reduce_sum(mag * room, axis=-1)


def _min_l1(mag: tf.Tensor, room: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
    order = tf.argsort(mag, axis=-1, direction="DESCENDING")
    mag_sorted = tf.gather(mag, order, batch_dims=2)
    filled = tf.cumsum(tf.gather(room, order, batch_dims=2), axis=-1)
    # The first coordinate the budget r cannot fill sets the multiplier; none left: lam = 0.
    critical = tf.reduce_sum(tf.cast(filled <= r, tf.int32), axis=-1, keepdims=True)
    d = mag.shape[-1]
    lam = tf.where(critical < d, tf.gather(mag_sorted, tf.minimum(critical, d - 1), batch_dims=2), 0)
    dual = -tf.reduce_sum(room * tf.nn.relu(mag - lam), axis=-1) - lam[..., 0] * r[..., 0]
    return tf.maximum(dual, _min_linf(mag, room, r))


def _min_l2(mag: tf.Tensor, room: tf.Tensor, r: tf.Tensor) -> tf.Tensor:
    live = mag > 0
    room = tf.where(live, room, 0)
    saturation = tf.where(live, room / tf.where(live, mag, 1), 0)
    order = tf.argsort(saturation, axis=-1)
    sat_sorted = tf.gather(saturation, order, batch_dims=2)
    room2 = tf.cumsum(tf.gather(tf.square(room), order, batch_dims=2), axis=-1, exclusive=True)
    mag2 = tf.cumsum(tf.gather(tf.square(mag), order, batch_dims=2), axis=-1, reverse=True)
    # Squared norm of s(t) at each saturation point; it grows with t, so count those within r^2.
    norm2 = room2 + tf.square(sat_sorted) * mag2
    r2 = tf.square(r)
    k = tf.reduce_sum(tf.cast(norm2 <= r2, tf.int32), axis=-1, keepdims=True)
    d = mag.shape[-1]
    kk = tf.minimum(k, d - 1)
    rest = tf.gather(mag2, kk, batch_dims=2)
    t = tf.sqrt(tf.maximum(r2 - tf.gather(room2, kk, batch_dims=2), 0) / tf.where(rest > 0, rest, 1))
    t = tf.maximum(t, np.finfo(mag.dtype.as_numpy_dtype).tiny)
    s = tf.minimum(mag * t, room)
    dual = -tf.reduce_sum(mag * s, axis=-1) + (tf.reduce_sum(tf.square(s), axis=-1) - r2[..., 0]) / (2 * t[..., 0])
    box = _min_linf(mag, room, r)
    return tf.where(k[..., 0] >= d, box, tf.maximum(dual, box))


_BY_ORDER = {1.0: _min_l1, 2.0: _min_l2, float(np.inf): _min_linf}


def min_linear(a: tf.Tensor, offsets: Interval, radius: tf.Tensor, norm: LpNorm) -> tf.Tensor:
    """min over delta of a . delta, for a (B, S, d), radius (B,) and feasible offsets (B, d) or, per row, (B, S, d).

    Returns shape (B, S).
    """
    solver = _BY_ORDER.get(float(norm.p))
    if solver is None:
        raise UsageError(f"certified bounds support the L1, L2 and Linf norms, not p = {norm.p}")
    lo, hi = (tf.expand_dims(t, 1) if t.shape.rank == 2 else t for t in offsets)
    r = tf.reshape(tf.cast(radius, a.dtype), (-1, 1, 1))
    room = tf.clip_by_value(tf.where(a > 0, -lo, hi), 0, r)
    return solver(tf.abs(a), room, r)


def concretize_patches(p: Patches, x0: tf.Tensor, offsets: Interval, radius: tf.Tensor, norm: LpNorm) -> tf.Tensor:
    """concretize_lower for coefficients held on windows: only the window's coordinates matter."""
    lead = tf.shape(p.a)[:2]

    def flat(t):
        return tf.reshape(t, tf.concat([tf.shape(t)[:2], [-1]], 0))

    centre = tf.reduce_sum(flat(p.a * p.gather(x0[None])), axis=-1)
    window = Interval(*(flat(p.gather(t)) for t in offsets))
    return centre + tf.reshape(min_linear(flat(p.a), window, radius, norm), lead)


def concretize_lower(a: tf.Tensor | Patches, x0: tf.Tensor, offsets: Interval, radius: tf.Tensor,
                     norm: LpNorm) -> tf.Tensor:
    """The lower bound (B, S) of a . x over the ball intersected with the box, for a of shape (B, S, *input_shape)."""
    if isinstance(a, Patches):
        return concretize_patches(a, x0, offsets, radius, norm)
    lead = tf.shape(a)[:2]
    flat = tf.reshape(a, tf.concat([lead, [-1]], 0))
    flat_offsets = Interval(*(tf.reshape(t, (tf.shape(t)[0], -1)) for t in offsets))
    centre = tf.einsum("bsd,d->bs", flat, tf.reshape(x0, (-1,)))
    return centre + min_linear(flat, flat_offsets, radius, norm)
