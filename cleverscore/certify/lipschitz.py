"""Certified upper bounds of the local Lipschitz constant of a margin.

Over the ball, every activation's derivative lies in an interval fixed by its pre-activation
bounds (an unstable ReLU: [0, 1]; tanh or sigmoid: the range of f' on [l, u]; a max-pooling
window: a fixed selection when stable, else any candidate). Two bounds follow, and the smaller
is returned (both are sound):

- Fast-Lip: propagating the gradient of g = f_c - f_j backward from the output as an elementwise
  interval, through linear layers in centre-radius form and through activations by interval
  products, gives [G_lo, G_hi] holding grad g(x) for every x in the ball; || max(|G_lo|, |G_hi|) ||_q
  bounds ||grad g(x)||_q there;
- linear bound propagation through the backward pass (`jacobian.py`), with an optional time budget
  for splitting the derivatives' ranges.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from cleverscore.errors import UsageError
from cleverscore.norms import LpNorm

from .bounds import DEFAULT_MEMORY_BUDGET, BoundPropagation
from .crown import DEFAULT_BOX, Box, check_radius, prepare
from .graph import Graph
from .jacobian import gradient_norm_bounds
from .ops import Interval
from .results import PERTURBATION_NORMS, LipschitzBounds

METHODS = ("crown", "interval")


def gradient_interval(bp: BoundPropagation, spec: tf.Tensor) -> Interval:
    """Elementwise bounds (B, S, *input_shape) of the input gradient of spec . logits over each ball."""
    graph = bp.graph
    last = len(graph.nodes) - 1
    pending: dict[int, Interval] = {last: Interval(spec, spec)}
    for m in range(last, 0, -1):
        if m not in pending:
            continue
        node = graph.nodes[m]
        upstream = node.op.gradient_backward(pending.pop(m), *[bp.bounds[j] for j in node.inputs], **bp.op_facts(m))
        for j, g in zip(node.inputs, upstream):
            pending[j] = Interval(pending[j].lo + g.lo, pending[j].hi + g.hi) if j in pending else g
    if 0 not in pending:
        zero = tf.zeros((*spec.shape[:2], *graph.input_shape), spec.dtype)
        return Interval(zero, zero)
    return pending[0]


def dual_norms(g: Interval) -> np.ndarray:
    """(B, S, 3): bounds of ||grad||_q for the duals q = inf, 2, 1 of the L1, L2, Linf perturbation norms."""
    worst = tf.maximum(tf.abs(g.lo), tf.abs(g.hi))
    worst = tf.reshape(worst, (*worst.shape[:2], -1)).numpy().astype(np.float64)
    return np.stack([np.linalg.norm(worst, ord=n.dual, axis=-1) for n in PERTURBATION_NORMS], axis=-1)


def lipschitz_upper_bounds(graph: Graph, x0: np.ndarray, true_label: int, targets: Sequence[int], radius: float,
                           sample_norm: LpNorm, box: Box = DEFAULT_BOX, memory_budget: int = DEFAULT_MEMORY_BUDGET,
                           method: str = "crown", split_seconds: float = 0.0,
                           optimize_seconds: float = 0.0) -> LipschitzBounds:
    """Certified bounds of max ||grad (f_c - f_j)(x)||_q over {||x - x0||_p <= radius} intersected with the box.

    The ball is measured in `sample_norm`; the bound is returned in the dual norm of each of L1,
    L2 and Linf (`LipschitzBounds.for_norm`). `method` "crown" takes the smaller of the Fast-Lip and
    the backward-pass bound, "interval" the Fast-Lip bound alone. `split_seconds` (> 0, "crown") is
    the time the split search may spend tightening the bound in the dual of `sample_norm`, for all
    targets together. `optimize_seconds` (> 0) is spent first on optimised ReLU lower slopes for the
    forward bounds the gradient bounds start from (`BoundPropagation`'s `slope_seconds`): tighter
    forward bounds (kept within the plain ones) fix more multipliers, and every gradient bound is
    monotone in them, so the result is never looser. Other arguments as for `margin_lower_bounds`.
    """
    if method not in METHODS:
        raise UsageError(f"unknown Lipschitz bound method {method!r}; choose one of {', '.join(METHODS)}")
    if not split_seconds >= 0:
        raise UsageError(f"`split_seconds` must be >= 0, got {split_seconds}")
    if not (np.isfinite(optimize_seconds) and optimize_seconds >= 0):
        raise UsageError(f"`optimize_seconds` must be finite and >= 0, got {optimize_seconds}")
    problem = prepare(graph, x0, true_label, targets, box)
    bp = problem.propagate(np.array([check_radius(radius)]), sample_norm, memory_budget)
    if optimize_seconds > 0:
        bp = problem.tightened(bp, optimize_seconds)
    interval = dual_norms(gradient_interval(bp, problem.spec[None]))[0]
    if method == "interval":
        return LipschitzBounds(problem.targets, interval, tuple(bp.reports), interval, len(problem.targets))
    found, report = gradient_norm_bounds(bp, problem.spec, memory_budget, PERTURBATION_NORMS.index(sample_norm),
                                         split_seconds)
    return LipschitzBounds(problem.targets, np.minimum(interval, found), tuple(bp.reports), interval,
                           report["parts"], np.asarray(report["attained"], bool))
