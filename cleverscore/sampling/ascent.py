"""Projected ascent inside a sampling ball: the pieces search.py and smoothed.py share.

Points are flat (points, input size) tensors; the ball is the sampling norm's (L2 or Linf)
around x0, intersected with the input box.
"""

from __future__ import annotations

from collections.abc import Callable

from cleverscore.norms import L1, L2, LINF, LpNorm
from cleverscore.sampling.balls import tf_norms

# The estimator's gradient-norm columns G2, G1, Gi are the vector norms of these LpNorms.
GRAD_COLUMNS = (L2, L1, LINF)


def check_ascent_ball(sample_norm: LpNorm) -> None:
    if sample_norm.p not in (L2.p, LINF.p):
        raise ValueError("search supports l2 and li sampling balls")


def margin_grad_norm(logits: Callable, x, c, j, q_index):
    """Per point, ||grad (f_c - f_j)(x)|| in the column q_index picks (0: L2, 1: L1, 2: Linf)."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        out = logits(x)
        g = out[:, c] - out[:, j]
    grad = tf.reshape(tape.gradient(g, x), (tf.shape(x)[0], -1))
    return tf.switch_case(q_index, [lambda n=n: tf_norms(grad, n) for n in GRAD_COLUMNS])


def steepest_direction(up, sample_norm: LpNorm):
    """The unit step of the sampling norm's geometry along the ascent direction `up` (flat)."""
    import tensorflow as tf

    if sample_norm.p == LINF.p:
        return tf.sign(up)
    return up / tf.maximum(tf.norm(up, axis=1, keepdims=True), 1e-30)


def project(x0, x, sample_norm: LpNorm, radius: float, input_range: tuple[float, float]):
    """Flat points x moved back into the ball of `radius` around the flat x0 and the input box."""
    import tensorflow as tf

    delta = x - x0
    if sample_norm.p == L2.p:
        length = tf.norm(delta, axis=1, keepdims=True)
        delta = delta * tf.minimum(1.0, radius / tf.maximum(length, 1e-30))
    else:
        delta = tf.clip_by_value(delta, -radius, radius)
    return tf.clip_by_value(x0 + delta, *input_range)
