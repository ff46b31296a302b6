"""Bounds on every node of the graph over a batch of balls, and backward (CROWN) propagation.

Nodes are visited in topological order. Each node first gets interval bounds from its inputs'
bounds. A node that feeds a nonlinear operator is then refined by CROWN: the rows +e_i and
-e_i of each neuron i that the operator's relaxation would profit from are propagated backward
to the input and concretised over the ball, and the result is intersected with the interval
bounds. Because later interval bounds start from these refined bounds and interval propagation
is monotone, bounds with CROWN are never looser than pure interval bounds, layer by layer.

The CROWN pass for a node holds coefficient tensors of shape (B, 2 * rows, *shape) for every
node it passes; when its memory estimate exceeds the budget, the node keeps its interval bounds.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from cleverscore.norms import LpNorm

from .concretize import concretize_lower, feasible_offsets
from .graph import Graph
from .ops import Activation, Interval, LinearOperator
from .results import CROWN, ELEMENTWISE, INTERVAL, LayerReport

DEFAULT_MEMORY_BUDGET = 1 << 30
# Live coefficient tensors during a backward pass, in units of the largest one: the incoming A,
# a selected relaxation, the outgoing A and TF's workspace (measured on the zoo's CNNs).
_BACKWARD_COPIES = 5
# The L1/L2 concretisation sorts the input coefficients and gathers several copies of them.
_CONCRETIZE_COPIES = 8


class BoundPropagation:
    """Bounds of all nodes for B balls around one input; `backward_lower` bounds linear objectives.

    Args:
        graph: the bound-propagation graph.
        x0: the centre, shape graph.input_shape.
        radius: (B,) radii, one bound problem each.
        norm: the norm of the balls.
        box: the input box (lo, hi) as tensors broadcastable to the input shape.
        memory_budget: bytes a CROWN pass for one node may use; nodes over it keep interval bounds.
        crown: False gives pure interval bounds for every node.
    """

    def __init__(self, graph: Graph, x0: tf.Tensor, radius: tf.Tensor, norm: LpNorm, box: Interval,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, crown: bool = True):
        self.graph = graph
        self.x0 = x0
        self.radius = radius
        self.norm = norm
        self.batch = int(radius.shape[0])
        self.offsets = feasible_offsets(x0, radius, box)
        self.memory_budget = memory_budget
        self.crown = crown
        self.bounds: list[Interval | None] = [None] * len(graph.nodes)
        self._relaxations: dict[int, object] = {}
        self.reports: list[LayerReport] = []
        self._run()

    def _run(self) -> None:
        self.bounds[0] = Interval(self.x0 + self.offsets.lo, self.x0 + self.offsets.hi)
        for i, node in enumerate(self.graph.nodes[1:], start=1):
            self.bounds[i] = node.op.interval(*[self.bounds[j] for j in node.inputs])
            if self.graph.needs_bounds(i):
                self._refine(i)

    def _wanted(self, i: int, bounds: Interval) -> tf.Tensor:
        """Which neurons of node i (B, *shape) some nonlinear operator downstream wants tight bounds on.

        An elementwise activation passes on its consumers' wishes position by position, since its
        output bounds are its input bounds mapped through it.
        """
        wanted = tf.zeros_like(bounds.lo, dtype=tf.bool)
        for j in self.graph.consumers[i]:
            op = self.graph.nodes[j].op
            if op.nonlinear:
                wanted |= op.refine_mask(bounds)
            if isinstance(op, Activation) and self.graph.needs_bounds(j):
                wanted |= self._wanted(j, op.interval(bounds))
        return wanted

    def _rows_to_refine(self, i: int) -> np.ndarray:
        """Flat indices of the neurons of node i that need refining in any of the B problems."""
        wanted = tf.reduce_any(tf.reshape(self._wanted(i, self.bounds[i]), (self.batch, -1)), axis=0)
        return np.flatnonzero(wanted.numpy()).astype(np.int32)

    def crown_bytes(self, i: int, rows: int) -> int:
        """Estimated peak memory of a CROWN pass from node i with `rows` neurons (two spec rows each)."""
        widest = max(node.size for node in self.graph.nodes[1:i]) if i > 1 else 0
        per_row = max(_BACKWARD_COPIES * widest, _CONCRETIZE_COPIES * self.graph.nodes[0].size)
        return self.batch * 2 * rows * per_row * self.graph.dtype.size

    def _refine(self, i: int) -> None:
        node = self.graph.nodes[i]
        if isinstance(node.op, Activation):
            # f(l) <= f(x) <= f(u) is exact for a monotone activation of refined inputs; the
            # relaxation CROWN would push through cannot do better.
            self.reports.append(LayerReport(node.name, ELEMENTWISE, 0, node.size, 0))
            return
        rows = self._rows_to_refine(i)
        need = self.crown_bytes(i, len(rows))
        if not self.crown or need > self.memory_budget:
            self.reports.append(LayerReport(node.name, INTERVAL, 0, node.size, need))
            return
        self.reports.append(LayerReport(node.name, CROWN, len(rows), node.size, need))
        if len(rows) == 0:
            return
        start, unit, offset = self._unit_rows(i, rows)
        spec = tf.broadcast_to(tf.concat([unit, -unit], 0), (self.batch, 2 * len(rows), *unit.shape[1:]))
        constant = tf.broadcast_to(tf.concat([offset, -offset], 0), (self.batch, 2 * len(rows)))
        lower = self.backward_lower(start, spec, constant)
        self.bounds[i] = Interval(self._tighten(self.bounds[i].lo, rows, lower[:, :len(rows)], tf.maximum),
                                  self._tighten(self.bounds[i].hi, rows, -lower[:, len(rows):], tf.minimum))

    def _unit_rows(self, i: int, rows: np.ndarray) -> tuple[int, tf.Tensor, tf.Tensor]:
        """The objective e_r . y_i for each row r, as coefficients on some node and a constant.

        A linear node hands over its rows of W directly, which saves the one tensor of rows
        times its own size that a one-hot start would need.
        """
        node = self.graph.nodes[i]
        if isinstance(node.op, LinearOperator):
            unit, offset = node.op.unit_rows(rows, node.shape, self.graph.dtype)
            return node.inputs[0], unit, offset
        unit = tf.reshape(tf.one_hot(rows, node.size, dtype=self.graph.dtype), (len(rows), *node.shape))
        return i, unit, tf.zeros((len(rows),), self.graph.dtype)

    def _tighten(self, old: tf.Tensor, rows: np.ndarray, new: tf.Tensor, pick) -> tf.Tensor:
        flat = tf.transpose(tf.reshape(old, (self.batch, -1)))
        index = tf.constant(rows[:, None])
        merged = tf.tensor_scatter_nd_update(flat, index, pick(tf.gather(flat, rows), tf.transpose(new)))
        return tf.reshape(tf.transpose(merged), tf.shape(old))

    def relaxation(self, i: int) -> object:
        """The linear relaxation of node i on its (final) input bounds, computed once."""
        if i not in self._relaxations:
            node = self.graph.nodes[i]
            self._relaxations[i] = node.op.relax(*[self.bounds[j] for j in node.inputs])
        return self._relaxations[i]

    def backward_lower(self, start: int, a: tf.Tensor, constant: tf.Tensor | None = None) -> tf.Tensor:
        """Lower bounds (B, S) of a . y_start + constant over each ball, for a of shape (B, S, *shape of node start)."""
        pending: dict[int, tf.Tensor] = {start: a}
        total = tf.zeros(tf.shape(a)[:2], a.dtype) if constant is None else constant
        for m in range(start, 0, -1):
            if m not in pending:
                continue
            node = self.graph.nodes[m]
            coefficients, constant = node.op.backward(pending.pop(m), self.relaxation(m))
            total += constant
            for j, c in zip(node.inputs, coefficients):
                pending[j] = pending[j] + c if j in pending else c
        if 0 in pending:
            total += concretize_lower(pending[0], self.x0, self.offsets, self.radius, self.norm)
        return total

    def interval_lower(self, start: int, a: tf.Tensor) -> tf.Tensor:
        """Interval lower bounds (B, S) of a . y_start, merging the objective into a linear last layer."""
        node = self.graph.nodes[start]
        if isinstance(node.op, LinearOperator):
            constant = node.op.bias_term(a)
            a, start = node.op.transpose(a), node.inputs[0]
        else:
            constant = tf.zeros(tf.shape(a)[:2], a.dtype)
        lo, hi = (tf.expand_dims(t, 1) for t in self.bounds[start])
        pos = tf.nn.relu(a)
        return constant + tf.reduce_sum(tf.reshape(pos * lo + (a - pos) * hi, tf.concat([tf.shape(a)[:2], [-1]], 0)), -1)
