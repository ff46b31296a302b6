"""Points drawn uniformly in the unit L2, Linf and L1 balls, in NumPy and in TensorFlow.

Both versions draw the same laws (spec section 3), so the in-graph fast path and the CPU worker
pool sample the same distribution:
- l2: a Gaussian direction with radius P(n/2, ||z||^2/2)^(1/n), where P is the regularised lower
  incomplete gamma function; since ||z||^2 is chi-squared with n degrees of freedom, P(..) is
  uniform on [0, 1] and the radius has the uniform-in-ball law r^n ~ U[0, 1].
- li: uniform in [-1, 1]^n.
- l1: the spacings of n sorted uniforms (uniform on the simplex {y >= 0, sum y <= 1}) with
  random signs.
A unit-ball sample is then multiplied by a per-sample factor drawn uniformly in [low, high]
(`LpNorm.default_scale`, or (R, R) for an explicit radius R).

TensorFlow is imported inside the TF functions only, so worker processes that draw NumPy
samples never load it.
"""

from __future__ import annotations

import numpy as np
from scipy.special import gammainc

from cleverscore.norms import L1, L2, LINF, LpNorm


def numpy_unit_ball(rng: np.random.Generator, norm: LpNorm, count: int, dim: int) -> np.ndarray:
    """`count` points uniform in the unit `norm` ball of R^dim, float32, shape (count, dim)."""
    if norm == L2:
        z = rng.standard_normal((count, dim))
        length = np.linalg.norm(z, axis=1, keepdims=True)
        radius = gammainc(dim / 2.0, length**2 / 2.0) ** (1.0 / dim)
        return (z / length * radius).astype(np.float32)
    if norm == LINF:
        return rng.uniform(-1.0, 1.0, (count, dim)).astype(np.float32)
    if norm == L1:
        u = np.sort(rng.uniform(0.0, 1.0, (count, dim)), axis=1)
        spacings = np.diff(u, axis=1, prepend=0.0)
        signs = rng.integers(0, 2, (count, dim)) * 2 - 1
        return (spacings * signs).astype(np.float32)
    raise ValueError(f"no sampler for {norm!r}")


def numpy_norms(flat: np.ndarray, norm: LpNorm) -> np.ndarray:
    """Per-row `norm` of a (count, dim) array: how far each sample lies from x0."""
    if norm == L2:
        return np.sqrt(np.einsum("ij,ij->i", flat, flat, dtype=np.float64))
    return np.abs(flat).max(axis=1) if norm == LINF else np.abs(flat).sum(axis=1)


def tf_norms(flat, norm: LpNorm):
    """The TensorFlow twin of `numpy_norms`."""
    import tensorflow as tf

    if norm == L2:
        return tf.sqrt(tf.reduce_sum(flat * flat, axis=1))
    return tf.reduce_max(tf.abs(flat), axis=1) if norm == LINF else tf.reduce_sum(tf.abs(flat), axis=1)


def numpy_perturbations(
    rng: np.random.Generator, norm: LpNorm, count: int, dim: int, scale: tuple[float, float]
) -> np.ndarray:
    """Unit-ball samples times a per-sample factor uniform in [scale[0], scale[1]]."""
    unit = numpy_unit_ball(rng, norm, count, dim)
    factor = rng.uniform(scale[0], scale[1], (count, 1)).astype(np.float32)
    return unit * factor


def tf_unit_ball(seed, norm: LpNorm, count, dim: int):
    """The TensorFlow twin of `numpy_unit_ball`, drawn statelessly from `seed` (int64[2])."""
    import tensorflow as tf

    shape = tf.stack([count, dim])
    if norm == L2:
        z = tf.random.stateless_normal(shape, seed, alg="philox")
        # The sum of squares is accurate enough in float32; only the per-sample scalars need float64.
        length2 = tf.cast(tf.reduce_sum(z * z, axis=1, keepdims=True), tf.float64)
        radius = tf.math.igamma(tf.constant(dim / 2.0, tf.float64), length2 / 2.0) ** (1.0 / dim)
        scale = tf.cast(radius * tf.math.rsqrt(length2), tf.float32)
        return z * scale
    if norm == LINF:
        return tf.random.stateless_uniform(shape, seed, -1.0, 1.0, alg="philox")
    if norm == L1:
        draws = tf.random.stateless_uniform(tf.stack([2, count, dim]), seed, alg="philox")
        u = tf.sort(draws[0], axis=1)
        spacings = u - tf.pad(u[:, :-1], [[0, 0], [1, 0]])
        return tf.where(draws[1] < 0.5, -spacings, spacings)
    raise ValueError(f"no sampler for {norm!r}")


def tf_perturbations(seed, norm: LpNorm, count, dim: int, scale: tuple[float, float]):
    """The TensorFlow twin of `numpy_perturbations`."""
    import tensorflow as tf

    unit = tf_unit_ball(tf.random.experimental.stateless_fold_in(seed, 0), norm, count, dim)
    factor = tf.random.stateless_uniform(
        tf.stack([count, 1]), tf.random.experimental.stateless_fold_in(seed, 1), scale[0], scale[1], alg="philox"
    )
    return unit * factor

