"""Elementwise activations: sound linear bounds a_l x + b_l <= f(x) <= a_u x + b_u on [l, u].

Every activation here is monotone non-decreasing, so interval propagation is exact
(f(l), f(u)), and constant bounds f(l) <= f(x) <= f(u) are always sound; they are used where
[l, u] is too narrow for a chord slope to be computed accurately.

- ReLU: the CROWN relaxation, upper chord and lower slope 0 or 1, whichever leaves the
  smaller area.
- Bounded ReLU clip(x, 0, c): piecewise linear cases, each sound on the whole of [l, u].
- Convex activations (softplus(kx)/k, ELU with alpha 1): upper chord; lower tangent at the
  point whose slope equals the chord's. A tangent of a convex function is a global minorant,
  so the lower bound is sound wherever the tangent point lands.
- S-shaped activations (tanh, sigmoid; convex below 0, concave above): chord and tangent on
  one-signed intervals; across 0, the line through (l, f(l)) tangent to the concave side is
  an upper bound (the chord when that tangent point lies beyond u), and the line through
  (u, f(u)) tangent to the convex side is a lower bound. The tangent point is found by
  bisection and always kept on the sound side.

`derivative_range` gives the interval of f' on [l, u] for the gradient bound (Fast-Lip).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from ..patches import Patches
from .base import Interval, Line, Operator, expand_spec, interval_product, patch_through_lines, sum_spec, through_lines

_BISECTION_STEPS = 30


def _narrow(lo: tf.Tensor, hi: tf.Tensor) -> tf.Tensor:
    """Intervals too narrow for a stable chord slope in the working precision."""
    return hi - lo <= 64.0 * _epsilon(lo.dtype) * (1.0 + tf.abs(lo) + tf.abs(hi))


def _epsilon(dtype: tf.DType) -> float:
    return float(np.finfo(dtype.as_numpy_dtype).eps)


class Activation(Operator):
    """An elementwise monotone non-decreasing activation; subclasses give f, f' and the relaxation."""

    nonlinear = True

    def fn(self, x: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def linear_bounds(self, lo: tf.Tensor, hi: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """(a_l, b_l, a_u, b_u) with a_l x + b_l <= f(x) <= a_u x + b_u for x in [lo, hi]."""
        raise NotImplementedError

    def derivative_range(self, lo: tf.Tensor, hi: tf.Tensor) -> Interval:
        """Bounds of f'(x) over x in [lo, hi] (at every point where f is differentiable)."""
        raise NotImplementedError

    def forward(self, x: tf.Tensor) -> tf.Tensor:
        return self.fn(x)

    def interval(self, bounds: Interval) -> Interval:
        return Interval(self.fn(bounds.lo), self.fn(bounds.hi))

    def relax(self, bounds: Interval) -> tuple[tf.Tensor, ...]:
        return tuple(expand_spec(t) for t in self.linear_bounds(bounds.lo, bounds.hi))

    def backward(self, a: tf.Tensor, relaxation: tuple[tf.Tensor, ...]) -> tuple[list[tf.Tensor], tf.Tensor]:
        a_l, b_l, a_u, b_u = relaxation
        coef, constant = through_lines(a, Line(a_l, b_l), Line(a_u, b_u))
        return [coef], sum_spec(constant)

    def patch_window(self, ph: int, pw: int) -> tuple[int, int]:
        return ph, pw

    def patch_backward(self, p: Patches, relaxation: tuple[tf.Tensor, ...]) -> tuple[list[Patches], tf.Tensor]:
        a_l, b_l, a_u, b_u = relaxation
        coef, constant = patch_through_lines(p, Line(a_l, b_l), Line(a_u, b_u))
        return [coef], constant

    def gradient_backward(self, g: Interval, bounds: Interval) -> list[Interval]:
        d = self.derivative_range(bounds.lo, bounds.hi)
        return [interval_product(g, Interval(expand_spec(d.lo), expand_spec(d.hi)))]

    def gradient_multipliers(self, bounds: Interval) -> Interval:
        return self.derivative_range(bounds.lo, bounds.hi)


class ReLU(Activation):
    binary_multipliers = True
    def fn(self, x: tf.Tensor) -> tf.Tensor:
        return tf.nn.relu(x)

    def linear_bounds(self, lo, hi):
        active = lo >= 0
        unstable = (lo < 0) & (hi > 0)
        one, zero = tf.ones_like(lo), tf.zeros_like(lo)
        slope = tf.where(unstable, hi / tf.where(unstable, hi - lo, one), zero)
        a_u = tf.where(active, one, slope)
        b_u = tf.where(unstable, -slope * lo, zero)
        a_l = tf.where(active | (unstable & (hi > -lo)), one, zero)
        return a_l, zero, a_u, b_u

    def derivative_range(self, lo, hi):
        one, zero = tf.ones_like(lo), tf.zeros_like(lo)
        # At lo == 0 the slope 0 of TF's relu'(0) is still possible.
        return Interval(tf.where(lo > 0, one, zero), tf.where(hi > 0, one, zero))

    def refine_mask(self, bounds: Interval) -> tf.Tensor:
        return (bounds.lo < 0) & (bounds.hi > 0)


class BoundedReLU(Activation):
    """clip(x, 0, cap): the zoo's BReLU (cap 1) and Keras ReLU(max_value=cap)."""

    binary_multipliers = True

    def __init__(self, name: str, cap: float):
        super().__init__(name)
        self.cap = float(cap)

    def fn(self, x: tf.Tensor) -> tf.Tensor:
        return tf.clip_by_value(x, 0.0, self.cap)

    def linear_bounds(self, lo, hi):
        c = tf.constant(self.cap, lo.dtype)
        one, zero = tf.ones_like(lo), tf.zeros_like(lo)
        low_cross = (lo < 0) & (hi > 0) & (hi <= c)
        high_cross = (lo >= 0) & (lo < c) & (hi > c)
        both = (lo < 0) & (hi > c)
        identity = (lo >= 0) & (hi <= c)
        saturated = lo >= c

        def safe(den):
            return tf.where(den > 0, den, one)

        # Upper bound.
        k_low = hi / safe(hi - lo)                 # chord of the ReLU-like corner
        k_both = c / safe(c - lo)                  # line through (l, 0) and (c, c)
        use_line_up = (hi + lo) / 2 < c            # else the constant c leaves less area
        use_identity_up = (hi - c) < (c - lo)
        a_u = tf.where(identity, one, zero)
        a_u = tf.where(low_cross, k_low, a_u)
        a_u = tf.where(high_cross & use_identity_up, one, a_u)
        a_u = tf.where(both & use_line_up, k_both, a_u)
        b_u = tf.where(saturated | (high_cross & ~use_identity_up) | (both & ~use_line_up), c * one, zero)
        b_u = tf.where(low_cross, -k_low * lo, b_u)
        b_u = tf.where(both & use_line_up, -k_both * lo, b_u)
        # Lower bound.
        k_high = (c - lo) / safe(hi - lo)          # chord of the capped corner
        k_origin = c / safe(hi)                    # line through (0, 0) and (u, c)
        use_identity_low = hi > -lo
        use_line_low = (hi + lo) / 2 > 0
        a_l = tf.where(identity | (low_cross & use_identity_low), one, zero)
        a_l = tf.where(high_cross, k_high, a_l)
        a_l = tf.where(both & use_line_low, k_origin, a_l)
        b_l = tf.where(saturated, c * one, zero)
        b_l = tf.where(high_cross, lo * (1 - k_high), b_l)
        return a_l, b_l, a_u, b_u

    def derivative_range(self, lo, hi):
        one, zero = tf.ones_like(lo), tf.zeros_like(lo)
        # Strict comparisons: at the kinks 0 and cap either slope may be reported.
        flat = (hi < 0) | (lo > self.cap)
        inside = (lo > 0) & (hi < self.cap)
        return Interval(tf.where(inside, one, zero), tf.where(flat, zero, one))

    def refine_mask(self, bounds: Interval) -> tf.Tensor:
        lo, hi = bounds
        return ~((hi <= 0) | (lo >= self.cap) | ((lo >= 0) & (hi <= self.cap)))


class SmoothActivation(Activation):
    """A smooth activation with f and f' in closed form."""

    def grad(self, x: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def tangent(self, d: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        slope = self.grad(d)
        return slope, self.fn(d) - slope * d

    def chord(self, lo: tf.Tensor, hi: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        narrow = _narrow(lo, hi)
        width = tf.where(narrow, tf.ones_like(lo), hi - lo)
        f_lo = self.fn(lo)
        slope = tf.where(narrow, tf.zeros_like(lo), (self.fn(hi) - f_lo) / width)
        return slope, f_lo - slope * lo

    def constants(self, lo: tf.Tensor, hi: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        zero = tf.zeros_like(lo)
        return zero, self.fn(lo), zero, self.fn(hi)


def _bisect(holds: Callable, good, bad):
    """Elementwise bisection between a point where holds(d) >= 0 (good) and one where it fails (bad):
    the good end after _BISECTION_STEPS halvings, so holds() is still >= 0 there."""
    for _ in range(_BISECTION_STEPS):
        mid = (good + bad) / 2
        ok = holds(mid) >= 0
        good, bad = tf.where(ok, mid, good), tf.where(ok, bad, mid)
    return good


def _choose(mask: tf.Tensor, a: tuple[tf.Tensor, ...], b: tuple[tf.Tensor, ...]) -> tuple[tf.Tensor, ...]:
    return tuple(tf.where(mask, x, y) for x, y in zip(a, b))


class ConvexActivation(SmoothActivation):
    """A convex activation: f' is non-decreasing on the whole line."""

    def slope_point(self, slope: tf.Tensor) -> tf.Tensor:
        """A point d with f'(d) = slope (any point is sound for the lower bound; this one is tight)."""
        raise NotImplementedError

    def linear_bounds(self, lo, hi):
        a_u, b_u = self.chord(lo, hi)
        d = tf.clip_by_value(self.slope_point(a_u), lo, hi)
        a_l, b_l = self.tangent(d)
        return _choose(_narrow(lo, hi), self.constants(lo, hi), (a_l, b_l, a_u, b_u))

    def derivative_range(self, lo, hi):
        return Interval(self.grad(lo), self.grad(hi))


class Softplus(ConvexActivation):
    """softplus(k x) / k: k = 1 is Keras softplus, k = 10 the zoo's softplus10."""

    def __init__(self, name: str, sharpness: float = 1.0):
        super().__init__(name)
        self.k = float(sharpness)

    def fn(self, x):
        return tf.math.softplus(self.k * x) / self.k

    def grad(self, x):
        return tf.sigmoid(self.k * x)

    def slope_point(self, slope):
        eps = _epsilon(slope.dtype)
        s = tf.clip_by_value(slope, eps, 1 - eps)
        return tf.math.log(s / (1 - s)) / self.k


class ELU(ConvexActivation):
    """ELU with alpha = 1 (Keras' default), convex because its slope exp(min(x, 0)) never falls."""

    def fn(self, x):
        return tf.nn.elu(x)

    def grad(self, x):
        return tf.exp(tf.minimum(x, 0))

    def slope_point(self, slope):
        return tf.math.log(tf.clip_by_value(slope, _epsilon(slope.dtype), 1))

    def refine_mask(self, bounds: Interval) -> tf.Tensor:
        return bounds.lo < 0


class SShapedActivation(SmoothActivation):
    """Convex on x <= 0, concave on x >= 0, f' even with its maximum at 0 (tanh, sigmoid)."""

    def positive_slope_point(self, slope: tf.Tensor) -> tf.Tensor:
        """The d >= 0 with f'(d) = slope."""
        raise NotImplementedError

    def linear_bounds(self, lo, hi):
        chord = self.chord(lo, hi)
        t_low = self.tangent(tf.clip_by_value(-self.positive_slope_point(chord[0]), lo, hi))
        t_up = self.tangent(tf.clip_by_value(self.positive_slope_point(chord[0]), lo, hi))
        upper = _choose(hi <= 0, chord, _choose(lo >= 0, t_up, self._crossing_upper(lo, hi, chord)))
        lower = _choose(hi <= 0, t_low, _choose(lo >= 0, chord, self._crossing_lower(lo, hi, chord)))
        return _choose(_narrow(lo, hi), self.constants(lo, hi), (*lower, *upper))

    def _crossing_upper(self, lo, hi, chord):
        """For lo < 0 < hi: the tangent to the concave side through (lo, f(lo)), or the chord."""
        f_lo = self.fn(lo)

        def misses_lo(d):  # >= 0 when the tangent at d >= 0 passes above (lo, f(lo))
            return self.fn(d) + self.grad(d) * (lo - d) - f_lo

        use_chord = misses_lo(tf.maximum(hi, 0)) <= 0
        slope, intercept = self.tangent(_bisect(misses_lo, tf.maximum(hi, 0), tf.zeros_like(lo)))
        # Lift the line so that it clears (lo, f(lo)) as computed, whatever the rounding.
        intercept = tf.maximum(intercept, f_lo - slope * lo)
        return _choose(use_chord, chord, (slope, intercept))

    def _crossing_lower(self, lo, hi, chord):
        """For lo < 0 < hi: the tangent to the convex side through (hi, f(hi)), or the chord."""
        f_hi = self.fn(hi)

        def misses_hi(d):  # >= 0 when the tangent at d <= 0 passes below (hi, f(hi))
            return f_hi - self.fn(d) - self.grad(d) * (hi - d)

        use_chord = misses_hi(tf.minimum(lo, 0)) <= 0
        slope, intercept = self.tangent(_bisect(misses_hi, tf.minimum(lo, 0), tf.zeros_like(lo)))
        intercept = tf.minimum(intercept, f_hi - slope * hi)
        return _choose(use_chord, chord, (slope, intercept))

    def derivative_range(self, lo, hi):
        g_lo, g_hi = self.grad(lo), self.grad(hi)
        peak = self.grad(tf.zeros_like(lo))
        return Interval(tf.minimum(g_lo, g_hi), tf.where((lo <= 0) & (hi >= 0), peak, tf.maximum(g_lo, g_hi)))


class Tanh(SShapedActivation):
    def fn(self, x):
        return tf.tanh(x)

    def grad(self, x):
        return 1 - tf.square(tf.tanh(x))

    def positive_slope_point(self, slope):
        t = tf.sqrt(tf.clip_by_value(1 - slope, 0, 1))
        return tf.atanh(tf.minimum(t, 1 - _epsilon(slope.dtype)))


class Sigmoid(SShapedActivation):
    def fn(self, x):
        return tf.sigmoid(x)

    def grad(self, x):
        s = tf.sigmoid(x)
        return s * (1 - s)

    def positive_slope_point(self, slope):
        s = (1 + tf.sqrt(tf.clip_by_value(1 - 4 * slope, 0, 1))) / 2
        s = tf.minimum(s, 1 - _epsilon(slope.dtype))
        return tf.math.log(s / (1 - s))
