"""Split constraints as cuts of the input: bounds over the part of the ball where a split ReLU keeps its side.

A part of a split search keeps each split ReLU on one side, z_k >= 0 or z_k <= 0; clamping z_k's
bounds (`BoundPropagation(clamps=...)`) uses that at node k and downstream, but not where z_k
comes from: the part is also a subset of the ball, cut by the inputs for which z_k keeps its side,
and other neurons of the same and later layers range over that subset only. CROWN bounds z_k
linearly in the input, L(x) <= z_k <= U(x), so z_k <= hi implies the half-space
hi - L(x) >= 0 and z_k >= lo implies U(x) - lo >= 0: a cut h(x) = e - lam . x >= 0 holding on
the whole part (exactly the split for a first-layer neuron, whose L = U = z_k).

A linear lower bound a . x + c of an objective over the ball becomes one over the part by
Lagrangian duality: for every beta >= 0, a . x + c >= (a + sum_k beta_k lam_k) . x + c
- sum_k beta_k e_k wherever the cuts hold, so the minimum of the right side over the ball is a
sound bound over the part for any beta (as beta-CROWN's split multipliers, Wang et al.,
NeurIPS 2021, here on the concretisation alone). The best beta of an Linf ball gives the linear
program's minimum over the ball, the box and the cuts; projected Adam steps on beta approach it,
starting at beta = 0 (the uncut bound) and keeping each row's best bound, so a cut bound is never
looser than the uncut one. The split search takes few steps (`jacobian.CUT_STEPS`): each pass of
each part pays them, and two steps already gave most of the gain (README, "Cuts").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from cleverscore.norms import LpNorm

from .concretize import concretize_lower
from .ops.base import Interval

LEARNING_RATE = 0.3
# Adam's moment decays and its guard against division by zero.
_BETA1, _BETA2, _EPSILON = 0.9, 0.999, 1e-8


@dataclass(frozen=True)
class Cuts:
    """Half-spaces e_k - lam_k . x >= 0 of the input, per problem: lam (B, K, d), e (B, K).

    Each row is scaled to ||lam_k||_2 = 1; rows that hold no cut are zero."""

    lam: tf.Tensor
    e: tf.Tensor

    def join(self, other: Cuts | None) -> Cuts:
        if other is None:
            return self
        return Cuts(tf.concat([self.lam, other.lam], 1), tf.concat([self.e, other.e], 1))


def cuts_from_linear_bounds(lam: tf.Tensor, constant: tf.Tensor, ends: tf.Tensor) -> Cuts | None:
    """Cuts from rows r of linear lower bounds lam_r . x + constant_r <= y_r of values y_r <= ends_r on the part.

    lam (B, S, d), constant and ends (B, S); a row whose end is infinite holds no cut. Returns None when no row does.
    """
    live = tf.math.is_finite(ends)
    if not bool(tf.reduce_any(live)):
        return None
    # lam . x + constant <= y <= end, so (end - constant) - lam . x >= 0.
    scale = tf.norm(lam, axis=-1)
    usable = live & (scale > 0)
    safe = tf.where(usable, scale, tf.ones_like(scale))
    e = tf.where(usable, (tf.where(live, ends, tf.zeros_like(ends)) - constant) / safe, tf.zeros_like(scale))
    lam = tf.where(usable[..., None], lam / safe[..., None], tf.zeros_like(lam))
    return Cuts(lam, e)


def cut_lower(a: tf.Tensor, x0: tf.Tensor, offsets: Interval, radius: tf.Tensor, norm: LpNorm, cuts: Cuts,
              steps: int, learning_rate: float = LEARNING_RATE) -> tf.Tensor:
    """Lower bounds (b, S) of a . x over the ball, the box and the cuts, for a (b, S, *input shape).

    `offsets` (b, *input shape) and `radius` (b,) are those of the ball; cuts.lam is (b, K, d). The
    bound is the best of `steps` projected Adam steps on the cuts' multipliers, from 0 (the uncut bound).
    """
    lead = tf.shape(a)[:2]
    flat = tf.reshape(a, tf.concat([lead, [-1]], 0))
    flat_offsets = Interval(*(tf.reshape(t, (tf.shape(t)[0], -1)) for t in offsets))
    return _optimized(flat, tf.reshape(x0, (-1,)), flat_offsets.lo, flat_offsets.hi, radius, cuts.lam, cuts.e,
                      tf.constant(max(0, int(steps))), tf.constant(learning_rate, flat.dtype), norm)


def _bound(flat, x0, lo, hi, radius, lam, e, beta_rel, size, norm):
    beta = beta_rel * size                                              # (b, S, K)
    shifted = flat + tf.einsum("bsk,bkd->bsd", beta, lam)
    return concretize_lower(shifted, x0, Interval(lo, hi), radius, norm) - tf.einsum("bsk,bk->bs", beta, e)


@tf.function(reduce_retracing=True)
def _optimized(flat, x0, lo, hi, radius, lam, e, steps, learning_rate, norm):
    """The best bound over projected Adam steps on beta (relative to each row's size, so that one learning rate
    suits rows of any scale), starting at beta = 0."""
    size = tf.norm(flat, axis=-1, keepdims=True)                        # (b, S, 1)
    beta = tf.zeros(tf.concat([tf.shape(flat)[:2], tf.shape(e)[1:]], 0), flat.dtype)
    first, second = tf.zeros_like(beta), tf.zeros_like(beta)
    best = tf.fill(tf.shape(flat)[:2], tf.constant(-np.inf, flat.dtype))
    for step in tf.range(1, steps + 1):
        with tf.GradientTape() as tape:
            tape.watch(beta)
            value = _bound(flat, x0, lo, hi, radius, lam, e, beta, size, norm)
            total = tf.reduce_sum(tf.where(tf.math.is_finite(value), value, tf.zeros_like(value)))
        best = tf.maximum(best, value)
        grad = tape.gradient(total, beta)
        first = _BETA1 * first + (1 - _BETA1) * grad
        second = _BETA2 * second + (1 - _BETA2) * tf.square(grad)
        t = tf.cast(step, flat.dtype)
        rate = learning_rate * tf.sqrt(1 - _BETA2 ** t) / (1 - _BETA1 ** t)
        # Projected ascent: a cut's multiplier is >= 0.
        beta = tf.nn.relu(beta + rate * first / (tf.sqrt(second) + _EPSILON))
    return tf.maximum(best, _bound(flat, x0, lo, hi, radius, lam, e, beta, size, norm))
