"""The operator interface every IR node implements, and the helpers the operator families share.

Shapes: a value or a bound has shape (B, *node_shape), where B counts bound problems (one
ball each). A linear-bound coefficient tensor `A` has shape (B, S, *node_shape): S rows of the
objective specification per problem. Backward propagation always asks for the LOWER bound of
A . y; an upper bound is the negated lower bound of (-A) . y, so each operator needs only one
backward rule.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf


class Interval(NamedTuple):
    """Elementwise bounds lo <= y <= hi."""

    lo: tf.Tensor
    hi: tf.Tensor


def expand_spec(t: tf.Tensor) -> tf.Tensor:
    """(B, *shape) -> (B, 1, *shape), to broadcast per-problem tensors over the S spec rows."""
    return tf.expand_dims(t, 1)


def sum_spec(t: tf.Tensor) -> tf.Tensor:
    """Sum a (B, S, *shape) tensor over its node axes, giving (B, S)."""
    return tf.reduce_sum(tf.reshape(t, tf.concat([tf.shape(t)[:2], [-1]], 0)), axis=-1)


def fold_spec(a: tf.Tensor, rank: int) -> tuple[tf.Tensor, tf.Tensor]:
    """(B, S, *shape) -> (B*S, *shape) for TF kernels that take one batch axis; returns the (B, S) shape too."""
    lead = tf.shape(a)[:2]
    return tf.reshape(a, tf.concat([[-1], tf.shape(a)[2:2 + rank]], 0)), lead


def unfold_spec(a: tf.Tensor, lead: tf.Tensor) -> tf.Tensor:
    """Inverse of fold_spec."""
    return tf.reshape(a, tf.concat([lead, tf.shape(a)[1:]], 0))


def interval_product(g: Interval, d: Interval) -> Interval:
    """The elementwise interval of g * d for g in [g.lo, g.hi] and d in [d.lo, d.hi]."""
    candidates = tf.stack([g.lo * d.lo, g.lo * d.hi, g.hi * d.lo, g.hi * d.hi])
    return Interval(tf.reduce_min(candidates, 0), tf.reduce_max(candidates, 0))


class Line(NamedTuple):
    """The line slope * t + constant, elementwise."""

    slope: tf.Tensor
    constant: tf.Tensor


def product_lines(d: Interval, t: Interval) -> tuple[Line, Line]:
    """Lines below and above d * t for every d in [d.lo, d.hi] (d.lo <= d.hi) and t in [t.lo, t.hi], elementwise.

    The lower line is the chord of min(d.lo t, d.hi t) over [t.lo, t.hi], the upper one the chord of
    max(d.lo t, d.hi t): the best linear bounds of that concave and that convex function, and exact
    where t keeps its sign.
    """
    return _chord(d.hi, d.lo, t), _chord(d.lo, d.hi, t)


def lower_product_line(d: Interval, t: Interval) -> Line:
    """The lower line of `product_lines` alone."""
    return _chord(d.hi, d.lo, t)


def _chord(negative_side: tf.Tensor, positive_side: tf.Tensor, t: Interval) -> Line:
    """The chord over [t.lo, t.hi] of the function that is negative_side * t for t < 0 and positive_side * t above."""
    crossing = (t.lo < 0) & (t.hi > 0)
    width = tf.where(crossing, t.hi - t.lo, tf.ones_like(t.hi))
    slope = (positive_side * t.hi - negative_side * t.lo) / width
    return Line(tf.where(crossing, slope, tf.where(t.lo >= 0, positive_side, negative_side)),
                tf.where(crossing, (negative_side - slope) * t.lo, tf.zeros_like(slope)))


def product_chord(a: tf.Tensor, d: Interval, t: Interval) -> tuple[tf.Tensor, tf.Tensor]:
    """(slope, constant) with slope * t + constant <= a * d * t for every d in [d.lo, d.hi] and t in [t.lo, t.hi].

    Elementwise; `a` is (B, S, ...), `d` and `t` broadcast to it. Where a >= 0 this is a times the
    lower line of d * t (`product_lines`), elsewhere a times the upper one: the chord of
    min over d of a d t, the best linear lower bound. The lines depend on d and t only, so they are
    computed at their (smaller) broadcast shape.
    """
    return through_lines(a, *product_lines(d, t))


def through_lines(a: tf.Tensor, below: Line, above: Line) -> tuple[tf.Tensor, tf.Tensor]:
    """For coefficients a (B, S, ...) on y with below(t) <= y <= above(t) elementwise: the coefficients on t and
    the elementwise constants of the least value of a . y, the lower line where a >= 0 and the upper elsewhere.

    Written with `where` so that no more than two tensors of a's size are alive at once."""
    positive = a >= 0
    return a * tf.where(positive, below.slope, above.slope), a * tf.where(positive, below.constant, above.constant)


def patch_through_lines(p: Any, below: Line, above: Line) -> tuple[Any, tf.Tensor]:
    """`through_lines` for coefficients on windows (`patches.Patches`), the lines given on whole maps
    (B or 1, 1, *shape): the coefficients on t (windows) and the constants summed, (B, S).

    a * upper + relu(a) * (lower - upper), read window by window; one window-sized gather at a time
    keeps the peak memory low."""
    from ..patches import Patches, patch_sum

    positive = Patches(tf.nn.relu(p.a), p.top, p.left, p.map_shape)
    constant = patch_sum(p, p.gather(above.constant)) + patch_sum(positive, p.gather(below.constant - above.constant))
    coef = p.a * p.gather(above.slope)
    coef += positive.a * p.gather(below.slope - above.slope)
    return Patches(coef, p.top, p.left, p.map_shape), constant


class Operator:
    """One node of the bound-propagation graph.

    Subclasses implement the forward value, interval propagation, the backward linear
    relaxation (CROWN) and the backward propagation of gradient intervals (Fast-Lip). Adding a
    layer type means adding one subclass and one converter in `graph.py`.

    Backward propagation runs many times over the same input bounds (once per later layer
    whose bounds are refined), so a nonlinear operator computes its relaxation once in `relax`
    and `backward` receives that object.

    Attributes:
        name: the Keras layer this node came from, for reports and error messages.
        nonlinear: whether `relax` needs the bounds of the node's input.
    """

    nonlinear = False
    binary_multipliers = False  # the gradient multipliers take only their end values (a ReLU's 0 or 1)

    def __init__(self, name: str):
        self.name = name

    def output_shape(self, *input_shapes: tuple[int, ...]) -> tuple[int, ...]:
        """The node's output shape (without batch axis) for the given input shapes."""
        return input_shapes[0]

    def forward(self, *xs: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def interval(self, *bounds: Interval) -> Interval:
        """Elementwise bounds of the output from elementwise bounds of the inputs."""
        raise NotImplementedError

    def relax(self, *bounds: Interval) -> Any:
        """The linear relaxation on the given input bounds (None for linear operators)."""
        return None

    def backward(self, a: tf.Tensor, relaxation: Any) -> tuple[list[tf.Tensor], tf.Tensor]:
        """Coefficients A_i on each input and a (B, S) constant c with A . y >= sum_i A_i . x_i + c."""
        raise NotImplementedError

    def patch_window(self, ph: int, pw: int) -> tuple[int, int] | None:
        """The window on the input that a (ph, pw) window on the output needs, or None without patch support."""
        return None

    def patch_backward(self, p: Any, relaxation: Any) -> tuple[list[Any], tf.Tensor]:
        """`backward` for coefficients held as `patches.Patches` (only where `patch_window` is not None)."""
        raise NotImplementedError

    def gradient_backward(self, g: Interval, *bounds: Interval) -> list[Interval]:
        """Intervals of d(objective)/d(input) from an interval of d(objective)/d(output)."""
        raise NotImplementedError

    def gradient_multipliers(self, *bounds: Interval) -> Interval | None:
        """Bounds of the multipliers of this node's gradient pass, per input element (None for a linear node).

        A nonlinear node passes its output's gradient to its input as multiplier * gradient,
        elementwise after `spread_gradient`: f'(x) for an activation, the 0/1 routing of a max-pooling
        window. Over the ball each multiplier lies in these bounds (shape (B, *input shape))."""
        return None

    def spread_gradient(self, a: tf.Tensor) -> tf.Tensor:
        """For coefficients a (B, S, *input shape) on the input's gradient: the coefficients on the output's
        gradient that a linear gradient pass gives (A W for y = W x + b). Nonlinear nodes: see `gradient_forward`."""
        raise NotImplementedError

    def patch_spread_gradient(self, p: Any) -> Any | None:
        """`spread_gradient` for coefficients on windows (`patches.Patches`); None where windows are not
        supported (the caller makes them dense)."""
        return None

    def patch_gather_spread(self, p: Any) -> Any | None:
        """`gather_spread` for coefficients on windows; None where not supported."""
        return p

    def gradient_chord(self, a: tf.Tensor, d: Interval, g: Interval) -> tuple[tf.Tensor, tf.Tensor]:
        """A nonlinear node's step of the gradient pass: for coefficients a (B, S, *input shape) on its input's
        gradient, coefficients on its output's gradient and a constant (B, S) bounding a . (d * spread(g)) from
        below, for multipliers in `d` and the output's gradient in `g` (B, 1, *output shape)."""
        slope, constant = product_chord(a, d, self.spread_bounds(g))
        return self.gather_spread(slope), sum_spec(constant)

    def patch_gradient_chord(self, p: Any, d: Interval, g: Interval) -> tuple[Any, tf.Tensor] | None:
        """`gradient_chord` for coefficients on windows; `d` and `g` are whole maps (B or 1, 1, *shape)."""
        onward, constant = patch_through_lines(p, *product_lines(d, self.spread_bounds(g)))
        onward = self.patch_gather_spread(onward)
        return None if onward is None else (onward, constant)

    def spread_bounds(self, g: Interval) -> Interval:
        """Bounds of the output's gradient laid out per input element (nonlinear nodes; the identity for an
        activation, each window's value repeated over its entries for max pooling)."""
        return g

    def gather_spread(self, c: tf.Tensor) -> tf.Tensor:
        """The adjoint of `spread_bounds` on coefficients (B, S, *input shape) -> (B, S, *output shape)."""
        return c

    def refine_mask(self, bounds: Interval) -> tf.Tensor:
        """Which input neurons (B, *shape) the relaxation would profit from tighter bounds on."""
        return tf.ones_like(bounds.lo, dtype=tf.bool)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"
