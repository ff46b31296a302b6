"""The worst case of the problem the gradient bounds relax, searched: fixed multipliers, exact gradients.

`jacobian.py` bounds ||grad g(x)||_q over a ball by treating each activation's derivative and each
max-pooling window's routing as free within the ranges the forward bounds allow
(`default_multipliers`: an unstable ReLU's derivative anywhere in [0, 1], a window routing to any
one of its candidate entries), independently of each other and of the input. Every choice of
multipliers within those ranges gives a linear map and the gradient J(d)^T c it would produce, and
the bound holds for every choice. So the norm of such a gradient is a point the relaxation must
cover: a bound below it would be wrong, and the distance between the two is what the relaxation
itself loses.

`worst_multipliers` searches for the largest such norm by block coordinate ascent. The objective
s . J(d)^T c is linear in each node's multipliers when the others and s are fixed, so each block
step is exact: a derivative goes to the end of its range that its coefficient favours, a window
routes to the candidate with the largest coefficient. s is then the dual direction of the new
gradient (its signs for q = 1, itself scaled for q = 2, the sign of its largest coordinate for
q = inf), so the norm never falls. It starts from the multipliers at the centre of the ball (the
gradient there) and from random vertices, and stops a start once a sweep over all nodes finds no
rise.

Between the largest gradient norm found at points of the ball (a lower bound of the true constant)
and this search's value lies what the multipliers' coupling through the input is worth; between
this value and the proven bound, what the relaxation loses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from .bounds import BoundPropagation
from .jacobian import default_multipliers
from .ops.linear import Add, LinearOperator
from .ops.pooling import MaxPooling2D
from .results import PERTURBATION_NORMS

DUALS = tuple(n.dual for n in PERTURBATION_NORMS)  # q = inf, 2, 1, in the order of `dual_norms`
MAX_SWEEPS = 30


@dataclass(frozen=True)
class MultiplierSearch:
    """best[k]: the largest ||J(d)^T c||_q found for q = DUALS[k]; at_centre[k]: the norm at the centre's
    multipliers (the gradient of g at x0)."""

    best: np.ndarray
    at_centre: np.ndarray


class _Linearised:
    """The network with every nonlinear node replaced by its multipliers: linear in its input.

    Its gradients come from TF's autodiff of this forward map, not from the operators' gradient
    rules that the bounds use, so that a wrong rule shows up as a bound below a searched value."""

    def __init__(self, forward: BoundPropagation):
        self.graph = forward.graph
        self.ranges = {m: (iv.lo[0, 0], iv.hi[0, 0]) for m, iv in default_multipliers(forward).items()}
        for m, node in enumerate(self.graph.nodes[1:], start=1):
            op = node.op
            if not (m in self.ranges or isinstance(op, (LinearOperator, Add))):
                raise ValueError(f"no linearisation for {op!r}")

    def apply(self, multipliers: dict[int, tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        values = [x]
        for m, node in enumerate(self.graph.nodes[1:], start=1):
            inputs = [values[j] for j in node.inputs]
            op = node.op
            if isinstance(op, MaxPooling2D):
                values.append(op.gather_spread(multipliers[m][None] * inputs[0]))
            elif m in multipliers:
                values.append(multipliers[m][None] * inputs[0])
            elif isinstance(op, LinearOperator):
                values.append(op.apply(inputs[0]))
            else:
                values.append(op.forward(*inputs))
        return tf.reshape(values[-1], (tf.shape(x)[0], -1))

    def gradient(self, multipliers: dict[int, tf.Tensor], c: tf.Tensor) -> tf.Tensor:
        """J(d)^T c, of the input's shape."""
        x = tf.zeros((1, *self.graph.input_shape), self.graph.dtype)
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tf.reduce_sum(self.apply(multipliers, x) * c)
        return tape.gradient(out, x)[0]

    def coefficients(self, multipliers: dict[int, tf.Tensor], c: tf.Tensor, s: tf.Tensor) -> dict[int, tf.Tensor]:
        """d (c . J(d) s) / d multipliers: the objective s . J(d)^T c is linear in each node's multipliers."""
        held = {m: tf.Variable(v) for m, v in multipliers.items()}
        with tf.GradientTape() as tape:
            out = tf.reduce_sum(self.apply(held, s[None]) * c)
        return {m: g for m, g in zip(held, tape.gradient(out, list(held.values())))}

    def best_block(self, m: int, coefficient: tf.Tensor) -> tf.Tensor:
        lo, hi = self.ranges[m]
        op = self.graph.nodes[m].op
        if isinstance(op, MaxPooling2D):
            return _route_to_largest(op, coefficient, hi > 0)
        return tf.where(coefficient > 0, hi, lo)


def _route_to_largest(op: MaxPooling2D, score: tf.Tensor, allowed: tf.Tensor) -> tf.Tensor:
    """Per window, 1 on the allowed entry of largest score, 0 elsewhere (input map shape)."""
    lowest = tf.cast(float("-inf"), score.dtype)
    windows = op._windows(tf.where(allowed, score, lowest)[None], float("-inf"))
    pick = tf.one_hot(tf.argmax(windows, axis=-1), windows.shape[-1], dtype=score.dtype)
    return op._unwindow(pick)[0]


def _dual_direction(v: tf.Tensor, q: float) -> tf.Tensor:
    """s with ||s||_p <= 1 (p dual to q) and s . v = ||v||_q."""
    if q == 1.0:
        return tf.sign(v)
    if q == 2.0:
        return v / tf.maximum(tf.norm(v), tf.constant(1e-30, v.dtype))
    flat = tf.reshape(v, (-1,))
    k = int(tf.argmax(tf.abs(flat)))
    return tf.reshape(tf.one_hot(k, flat.shape[0], dtype=v.dtype) * tf.sign(flat[k]), v.shape)


def _norm(v: tf.Tensor, q: float) -> float:
    return float(np.linalg.norm(v.numpy().astype(np.float64).ravel(), ord=q))


def worst_multipliers(forward: BoundPropagation, c: np.ndarray, starts: int = 3, seed: int = 0,
                      max_sweeps: int = MAX_SWEEPS, duals: tuple[float, ...] = DUALS) -> MultiplierSearch:
    """The largest ||J(d)^T c||_q found over multipliers d within the ranges `forward`'s bounds allow (batch 1),
    for q = inf, 2, 1 (those in `duals`; the others keep the centre's norm); `c` is the objective on the logits
    (e.g. e_true - e_target); `starts` - 1 random starts follow the centre's."""
    lin = _Linearised(forward)
    dtype = lin.graph.dtype
    c = tf.reshape(tf.constant(np.asarray(c), dtype), (1, -1))
    centre = _centre_multipliers(forward, lin)
    rng = np.random.default_rng(seed)
    begins = [centre] + [_random_vertex(lin, rng) for _ in range(max(0, starts - 1))]
    centre_gradient = lin.gradient(centre, c)
    at_centre = np.array([_norm(centre_gradient, q) for q in DUALS])
    best = at_centre.copy()
    for k, q in enumerate(DUALS):
        if q in duals:
            best[k] = max([best[k], *(_ascend(lin, dict(begin), c, q, max_sweeps) for begin in begins)])
    return MultiplierSearch(best, at_centre)


def _ascend(lin: _Linearised, multipliers: dict[int, tf.Tensor], c: tf.Tensor, q: float, max_sweeps: int) -> float:
    v = lin.gradient(multipliers, c)
    value = _norm(v, q)
    coefficients = None  # valid until a block changes: then s and the other blocks' coefficients move
    for _ in range(max_sweeps):
        risen = False
        for m in multipliers:
            if coefficients is None:
                coefficients = lin.coefficients(multipliers, c, _dual_direction(v, q))
            trial = dict(multipliers)
            trial[m] = lin.best_block(m, coefficients[m])
            v_trial = lin.gradient(trial, c)
            trial_value = _norm(v_trial, q)
            if trial_value > value * (1 + 1e-9) + 1e-12:
                multipliers, v, value, risen, coefficients = trial, v_trial, trial_value, True, None
        if not risen:
            break
    return value


def _centre_multipliers(forward: BoundPropagation, lin: _Linearised) -> dict[int, tf.Tensor]:
    """The multipliers at the ball's centre: f'(z0), each window routed to its largest entry (within the ranges)."""
    values = forward.centre_values()
    out = {}
    for m, (lo, hi) in lin.ranges.items():
        node = lin.graph.nodes[m]
        z = values[node.inputs[0]][0]
        if isinstance(node.op, MaxPooling2D):
            out[m] = _route_to_largest(node.op, z, hi > 0)
        else:
            with tf.GradientTape() as tape:
                tape.watch(z)
                y = node.op.forward(z)
            out[m] = tf.clip_by_value(tape.gradient(y, z), lo, hi)
    return out


def _random_vertex(lin: _Linearised, rng: np.random.Generator) -> dict[int, tf.Tensor]:
    out = {}
    for m, (lo, hi) in lin.ranges.items():
        op = lin.graph.nodes[m].op
        draw = tf.constant(rng.random(lo.shape), lo.dtype)
        out[m] = _route_to_largest(op, draw, hi > 0) if isinstance(op, MaxPooling2D) else tf.where(draw < 0.5, lo, hi)
    return out
