"""Bounds on every node of the graph over a batch of balls, and backward (CROWN) propagation.

Nodes are visited in topological order. Each node first gets interval bounds from its inputs'
bounds. A node that feeds a nonlinear operator is then refined by CROWN: the rows +e_i and
-e_i of each neuron i that the operator's relaxation would profit from are propagated backward
to the input and concretised over the ball, and the result is intersected with the interval
bounds. Because later interval bounds start from these refined bounds and interval propagation
is monotone, bounds with CROWN are never looser than pure interval bounds, layer by layer.

Bounds already proven over a ball that contains these balls (`within`: a larger radius, same
centre, norm and box) are sound here too: every node's interval bounds are intersected with them
before CROWN chooses its rows, so a neuron proven stable over the larger ball is not refined
again. A radius search probing inside a failed radius gets tighter bounds for less work.

The CROWN pass for a node holds coefficient tensors of shape (B, 2 * rows, ...) for every node
it passes: dense, or on each row's receptive field in feature maps (`patches.py`). A memory
estimate decides per node how deep the pass may go: to the input, or, where that does not fit
the budget, to an earlier node whose (refined) bounds then bound the rest (truncated CROWN);
when not even the shallowest pass fits, the node keeps its interval bounds. Problems are
grouped into passes that fit the budget.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from cleverscore.norms import LpNorm

from .concretize import concretize_lower, feasible_offsets
from .cuts import Cuts, cut_lower, cuts_from_linear_bounds
from .dominance import window_order
from .graph import Graph
from .ops import Activation, Interval, LinearOperator
from .ops.activation import ReLU
from .ops.base import expand_spec, sum_spec
from .ops.pooling import MaxPooling2D, WindowOrder
from .patches import Patches, negate_and_stack, patch_sum, unit_patches
from .results import CROWN, ELEMENTWISE, INTERVAL, TRUNCATED, LayerReport

DEFAULT_MEMORY_BUDGET = 2 << 30
# Live coefficient tensors during a backward pass, in units of the largest one: the incoming A,
# a selected relaxation, the outgoing A and TF's workspace; windowed coefficients also read
# four relaxation tensors on every window (both measured on the zoo's CNNs).
_BACKWARD_COPIES = 5
_WINDOWED_COPIES = 7
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
        memory_budget: bytes a CROWN pass for one node may use (see the module docstring).
        crown: False gives pure interval bounds for every node.
        patches: False keeps all backward coefficients dense (the same bounds, for testing).
        within: the final `bounds` of a propagation over balls that contain these ones (same
            centre, norm and box, radii at least as large; batch 1 or B), intersected with every
            node's bounds here (see the module docstring).
        clamps: node index -> bounds (B or 1, *shape) that the node's value is known to keep, as
            on one side of a split ReLU; the bounds then hold for the points of the balls where
            the clamps hold (those an input split keeps), not for the whole balls.
        cut_steps: with clamps, > 0 also turns each clamped neuron into a cut of the input (its
            CROWN bounds in the input, `cuts.py`) and bounds every later pass over the ball and
            the cuts, with this many projected steps on the cuts' multipliers per pass (a pass
            whose coefficients reach the input on windows stays uncut).
        within_orders: max pooling node -> the `WindowOrder` proven over balls that contain these
            (as `within`); its dominated entries are not tested again.
        order_windows: False leaves max pooling windows unordered (interval facts alone; for comparison).
        slope_seconds: > 0 also optimises, within about this many seconds in all, the ReLU lower slopes of
            the passes that bound the unstable neurons of every node feeding a ReLU with unstable ReLUs
            below it (`slopes.tighter_node_bounds`); `slope_report` says per such node how many neurons
            were optimised and how many became stable. CROWN's bounds are not monotone in the bounds
            below them (its slopes follow them), so a later node may come out looser than without:
            `crown.Problem.tightened` runs it inside the plain propagation, never looser anywhere.

    Max pooling windows are ordered before their node is bounded (`dominance.py`): entries that
    never exceed the window's chosen entry over the ball drop out of its relaxation (`orders`).
    """

    def __init__(self, graph: Graph, x0: tf.Tensor, radius: tf.Tensor, norm: LpNorm, box: Interval,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, crown: bool = True, patches: bool = True,
                 within: list[Interval | None] | None = None, clamps: dict[int, Interval] | None = None,
                 cut_steps: int = 0, within_orders: dict[int, WindowOrder | None] | None = None,
                 order_windows: bool = True, slope_seconds: float = 0.0):
        self.graph = graph
        self.x0 = x0
        self.radius = radius
        self.norm = norm
        self.box = box
        self.batch = int(radius.shape[0])
        self.offsets = feasible_offsets(x0, radius, box)
        self.memory_budget = memory_budget
        self.crown = crown
        self.patches = patches
        self.within = within
        self.clamps = clamps or {}
        self.cut_steps = cut_steps
        self.cuts: Cuts | None = None
        self.within_orders = within_orders or {}
        self.order_windows = order_windows
        self.orders: dict[int, WindowOrder | None] = {}
        self._centre: list[tf.Tensor] | None = None
        self.bounds: list[Interval | None] = [None] * len(graph.nodes)
        self._relaxations: dict[int, object] = {}
        self.reports: list[LayerReport] = []
        self.slope_report: dict[int, tuple[int, int]] = {}
        self._slope_nodes = self._slope_candidates() if slope_seconds > 0 and crown else []
        self._slope_deadline = time.perf_counter() + slope_seconds
        self._run()

    def _run(self) -> None:
        self.bounds[0] = Interval(self.x0 + self.offsets.lo, self.x0 + self.offsets.hi)
        for i, node in enumerate(self.graph.nodes[1:], start=1):
            if self.order_windows and isinstance(node.op, MaxPooling2D):
                self.orders[i] = window_order(self, i, self.within_orders.get(i))
            self.bounds[i] = node.op.interval(*[self.bounds[j] for j in node.inputs], **self.op_facts(i))
            if self.within is not None and self.within[i] is not None:
                self.bounds[i] = _intersect(self.bounds[i], self.within[i])
            if i in self.clamps:
                self.bounds[i] = _intersect(self.bounds[i], self.clamps[i])
                if self.cut_steps > 0 and self.crown:
                    self._add_cuts(i)
            if self.graph.needs_bounds(i):
                self._refine(i)
            if i in self._slope_nodes:
                self._optimize_slopes(i)

    def _slope_candidates(self) -> list[int]:
        """Nodes feeding a ReLU with a ReLU before them: the passes bounding them have slopes to optimise."""
        relus = [m for m, node in enumerate(self.graph.nodes) if isinstance(node.op, ReLU)]
        return [i for i in range(1, len(self.graph.nodes)) if relus and relus[0] < i
                and any(isinstance(self.graph.nodes[c].op, ReLU) for c in self.graph.consumers[i])]

    def _optimize_slopes(self, i: int) -> None:
        from .slopes import tighter_node_bounds  # slopes.py builds on this module

        left = self._slope_nodes[self._slope_nodes.index(i):]
        share = max(0.0, (self._slope_deadline - time.perf_counter()) / len(left))
        self.slope_report[i] = tighter_node_bounds(self, i, share)

    def dense_unit_rows(self, i: int, rows: np.ndarray, batch: int | None = None) -> tuple[int, tf.Tensor, tf.Tensor]:
        """`_unit_rows` with dense coefficients: the start node, the rows (batch, 2 R, *shape; default every
        problem) and their constants."""
        batch = self.batch if batch is None else batch
        node, dtype = self.graph.nodes[i], self.graph.dtype
        if isinstance(node.op, LinearOperator):
            unit, offset = node.op.unit_rows(rows, node.shape, dtype)
            start = node.inputs[0]
        else:
            unit = tf.reshape(tf.one_hot(rows, node.size, dtype=dtype), (len(rows), *node.shape))
            offset, start = tf.zeros((len(rows),), dtype), i
        count = 2 * len(rows)
        spec = tf.broadcast_to(tf.concat([unit, -unit], 0), (batch, count, *unit.shape[1:]))
        return start, spec, tf.broadcast_to(tf.concat([offset, -offset], 0), (batch, count))

    def tighten_rows(self, i: int, rows: np.ndarray, lower: tf.Tensor) -> None:
        """Intersect node i's bounds of neurons `rows` with lower bounds (B, 2 R) of +y_i[r] and -y_i[r]."""
        self.bounds[i] = Interval(self._tighten(self.bounds[i].lo, rows, lower[:, :len(rows)], tf.maximum),
                                  self._tighten(self.bounds[i].hi, rows, -lower[:, len(rows):], tf.minimum))

    def op_facts(self, i: int) -> dict:
        """Keyword arguments of node i's operator beyond its input bounds: a max pooling's proven `order`."""
        order = self.orders.get(i)
        return {} if order is None else {"order": order}

    def centre_values(self) -> list[tf.Tensor]:
        """Every node's value (1, *shape) at the centre of the balls."""
        if self._centre is None:
            self._centre = self.graph.forward_all(self.x0[None])
        return self._centre

    def _wanted(self, i: int, bounds: Interval) -> tuple[tf.Tensor, tf.Tensor]:
        """Which neurons of node i (B, *shape) nonlinear operators downstream want tight bounds on.

        Returns the wishes of node i's own nonlinear consumers and those passed on through
        elementwise activations (position by position: an activation's output bounds are its
        input bounds mapped through it).
        """
        own = tf.zeros_like(bounds.lo, dtype=tf.bool)
        passed = tf.zeros_like(own)
        for j in self.graph.consumers[i]:
            op = self.graph.nodes[j].op
            if op.nonlinear:
                own |= op.refine_mask(bounds)
            if isinstance(op, Activation) and self.graph.needs_bounds(j):
                passed |= tf.reduce_any(tf.stack(self._wanted(j, op.interval(bounds))), axis=0)
        return own, passed

    def _rows_to_refine(self, i: int) -> np.ndarray:
        """Flat indices of the neurons of node i that some problem wants refined."""
        wanted = tf.reduce_any(tf.stack(self._wanted(i, self.bounds[i])), axis=0)
        return np.flatnonzero(tf.reduce_any(tf.reshape(wanted, (self.batch, -1)), axis=0).numpy()).astype(np.int32)

    def crown_bytes(self, i: int, rows: int, floor: int = 1) -> int:
        """Estimated peak memory of one problem's CROWN pass from node i for `rows` neurons (two spec rows each).

        `floor` as for `backward_lower`.
        """
        dense, windowed, at_input = self._row_sizes(i, floor)
        per_row = max(_BACKWARD_COPIES * dense, _WINDOWED_COPIES * windowed, _CONCRETIZE_COPIES * at_input)
        return 2 * rows * per_row * self.graph.dtype.size

    def _row_sizes(self, i: int, floor: int) -> tuple[int, int, int]:
        """Coefficients per spec row: the most on any node a pass from node i visits, dense and windowed, and on the input.

        This replays `backward_lower` on window sizes alone (None: dense coefficients).
        """
        nodes = self.graph.nodes
        pending: dict[int, tuple[int, int] | None] = {i: (1, 1) if self._windowed(i) else None}
        dense = windowed = 0
        for m in range(i, 0, -1):
            if m not in pending:
                continue
            window = self._keep_window(m, pending.pop(m))
            if window is None:
                dense = max(dense, nodes[m].size)
            else:
                windowed = max(windowed, window[0] * window[1] * nodes[m].shape[-1])
            if m < floor:
                continue
            grown = None if window is None else nodes[m].op.patch_window(*window)
            for j in nodes[m].inputs:
                shared = j in pending or len(self.graph.consumers[j]) > 1
                pending[j] = None if shared or grown is None else grown
        if 0 not in pending:
            return dense, windowed, 0
        window = pending[0]
        return dense, windowed, nodes[0].size if window is None else window[0] * window[1] * nodes[0].shape[-1]

    def _floors(self, i: int) -> list[int]:
        """Where a pass from node i may stop, deepest first: at the input (1), else below node k (floor k + 1).

        Stopping right below node i would give its interval bounds again, so that is left out.
        """
        return [1] + [k + 1 for k in range(1, i - 1)]

    def _windowed(self, i: int) -> bool:
        return self.patches and len(self.graph.nodes[i].shape) == 3

    def _keep_window(self, m: int, window: tuple[int, int] | None) -> tuple[int, int] | None:
        """The window, if coefficients on node m stay windowed: its operator supports it and it is smaller than the map."""
        if window is None:
            return None
        node = self.graph.nodes[m]
        covers = window[0] >= node.shape[0] and window[1] >= node.shape[1]
        return None if covers or node.op.patch_window(*window) is None else window

    def _refine(self, i: int) -> None:
        node = self.graph.nodes[i]
        if isinstance(node.op, Activation):
            # f(l) <= f(x) <= f(u) is exact for a monotone activation of refined inputs; the
            # relaxation CROWN would push through cannot do better.
            self.reports.append(LayerReport(node.name, ELEMENTWISE, 0, 0, node.size, 0, ""))
            return
        rows = self._rows_to_refine(i)
        floor = self._deepest_fitting_floor(i, len(rows))
        if floor is None:
            method = CROWN if self.crown and len(rows) == 0 else INTERVAL
            self.reports.append(LayerReport(node.name, method, 0, len(rows), node.size,
                                            self.crown_bytes(i, len(rows)), "input" if method == CROWN else ""))
            return
        need = self.crown_bytes(i, len(rows), floor)
        # Problems share a pass as far as the budget allows; the cost per problem is the same.
        group = int(min(self.batch, max(1, self.memory_budget // need)))
        stop = "input" if floor == 1 else self.graph.nodes[floor - 1].name
        self.reports.append(LayerReport(node.name, CROWN if floor == 1 else TRUNCATED, len(rows), len(rows),
                                        node.size, need * group, stop))
        lower = tf.concat([self._crown_rows(i, rows, slice(first, min(self.batch, first + group)), floor)
                           for first in range(0, self.batch, group)], axis=0)
        self.tighten_rows(i, rows, lower)

    def _deepest_fitting_floor(self, i: int, rows: int) -> int | None:
        """The deepest pass whose estimate fits the budget (see `_floors`); None for none or nothing to do."""
        if not self.crown or rows == 0:
            return None
        return next((f for f in self._floors(i) if self.crown_bytes(i, rows, f) <= self.memory_budget), None)

    def _crown_rows(self, i: int, rows: np.ndarray, problems: slice, floor: int) -> tf.Tensor:
        """CROWN lower bounds (b, 2 * rows) of +y_i[r] and -y_i[r] for the given problems."""
        start, spec, constant = self._unit_rows(i, rows, problems.stop - problems.start)
        return self.backward_lower(start, spec, constant, problems, floor)

    def _unit_rows(self, i: int, rows: np.ndarray, batch: int) -> tuple[int, tf.Tensor | Patches, tf.Tensor]:
        """The objectives +e_r . y_i and -e_r . y_i for each row r, as coefficients on some node and constants.

        A feature map starts 1x1 windows (patches); a dense linear node hands over its rows of W
        directly, saving the tensor of rows times its own size that a one-hot start would need.
        """
        if self._windowed(i):
            zeros = tf.zeros((batch, 2 * len(rows)), self.graph.dtype)
            return i, negate_and_stack(unit_patches(rows, self.graph.nodes[i].shape, self.graph.dtype, batch)), zeros
        return self.dense_unit_rows(i, rows, batch)

    def _tighten(self, old: tf.Tensor, rows: np.ndarray, new: tf.Tensor, pick) -> tf.Tensor:
        flat = tf.transpose(tf.reshape(old, (self.batch, -1)))
        index = tf.constant(rows[:, None])
        merged = tf.tensor_scatter_nd_update(flat, index, pick(tf.gather(flat, rows), tf.transpose(new)))
        return tf.reshape(tf.transpose(merged), tf.shape(old))

    def _add_cuts(self, i: int) -> None:
        """Cuts of the input from node i's clamped neurons (see `cuts.py`), if their passes to the input fit the budget.

        Each problem carries only its own clamped neurons' rows: +e_k where z_k <= hi_k (a lower
        bound of z_k gives the cut), -e_k where z_k >= lo_k.
        """
        node = self.graph.nodes[i]
        shape = (self.batch, node.size)
        # Per problem, its clamped neurons' ends: z_k <= hi_k (row +e_k), then -z_k <= -lo_k (row -e_k).
        ends = np.concatenate([np.broadcast_to(t.numpy().reshape(t.shape[0], node.size), shape)
                               for t in (self.clamps[i].hi, -self.clamps[i].lo)], axis=1)
        finite = np.isfinite(ends)
        count = int(finite.sum(axis=1).max())
        need = self.crown_bytes(i, -(-count // 2))
        if count == 0 or need > self.memory_budget:
            return
        problem, column = np.nonzero(finite)
        row = (np.cumsum(finite, axis=1) - 1)[problem, column]     # each problem's cuts packed to the front
        spec = np.zeros((self.batch, count, node.size), self.graph.dtype.as_numpy_dtype)
        spec[problem, row, column % node.size] = np.where(column < node.size, 1.0, -1.0)
        limit = np.full((self.batch, count), np.inf, spec.dtype)
        limit[problem, row] = ends[problem, column]
        spec = tf.constant(spec.reshape(self.batch, count, *node.shape))
        group = int(min(self.batch, max(1, self.memory_budget // need)))
        lams, constants = [], []
        for first in range(0, self.batch, group):
            problems = slice(first, min(self.batch, first + group))
            at_input, total = self._backward(i, spec[problems], tf.zeros((problems.stop - first, count), spec.dtype),
                                             problems, 1)
            lams.append(tf.reshape(_dense(at_input), (problems.stop - first, count, -1)))
            constants.append(total)
        cuts = cuts_from_linear_bounds(tf.concat(lams, 0), tf.concat(constants, 0), tf.constant(limit))
        if cuts is not None:
            self.cuts = cuts.join(self.cuts)

    def relaxation(self, i: int, problems: slice = slice(None)) -> object:
        """The linear relaxation of node i on its (final) input bounds, computed once; for some of the problems."""
        if i not in self._relaxations:
            node = self.graph.nodes[i]
            self._relaxations[i] = node.op.relax(*[self.bounds[j] for j in node.inputs], **self.op_facts(i))
        relaxation = self._relaxations[i]
        if relaxation is None or problems == slice(None):
            return relaxation
        return tf.nest.map_structure(lambda t: t[problems], relaxation)

    def backward_lower(self, start: int, a: tf.Tensor | Patches, constant: tf.Tensor | None = None,
                       problems: slice = slice(None), floor: int = 1,
                       lower_slopes: dict[int, tf.Tensor] | None = None) -> tf.Tensor:
        """Lower bounds (b, S) of a . y_start + constant over the balls of `problems` (b of them; default all).

        `a` has shape (b, S, *shape of node start). Coefficients reaching a node below `floor`
        are bounded by that node's interval bounds instead of being propagated further (sound
        for any floor; 1 propagates all the way to the input). `lower_slopes` replaces the lower
        relaxation's slopes of some activation nodes (node index -> (b, 1, *shape)); any slopes
        for which that line stays below the activation give a sound bound (`certify/slopes.py`).
        """
        at_input, total = self._backward(start, a, constant, problems, floor, lower_slopes)
        if at_input is None:
            return total
        offsets = Interval(self.offsets.lo[problems], self.offsets.hi[problems])
        if self.cuts is not None and not isinstance(at_input, Patches):
            # Coefficients still on windows (early convolutions) stay uncut: made dense for every row they would
            # outgrow the memory estimate their pass was planned with.
            cuts = Cuts(self.cuts.lam[problems], self.cuts.e[problems])
            return total + cut_lower(at_input, self.x0, offsets, self.radius[problems], self.norm, cuts,
                                     self.cut_steps)
        return total + concretize_lower(at_input, self.x0, offsets, self.radius[problems], self.norm)

    def _backward(self, start: int, a: tf.Tensor | Patches, constant: tf.Tensor | None, problems: slice, floor: int,
                  lower_slopes: dict[int, tf.Tensor] | None = None) -> tuple[tf.Tensor | Patches | None, tf.Tensor]:
        """`backward_lower` up to the input: the coefficients left on the input (None: none) and the constant so far."""
        pending: dict[int, tf.Tensor | Patches] = {start: a}
        total = constant if constant is not None else tf.zeros(tf.shape(_values(a))[:2], self.graph.dtype)
        for m in range(start, 0, -1):
            if m not in pending:
                continue
            node = self.graph.nodes[m]
            coefficients = pending.pop(m)
            if m < floor:
                total += self.interval_concretize(coefficients, m, problems)
                continue
            if isinstance(coefficients, Patches) and self._keep_window(m, coefficients.window) is None:
                coefficients = coefficients.dense()
            step = node.op.patch_backward if isinstance(coefficients, Patches) else node.op.backward
            relaxation = self.relaxation(m, problems)
            if lower_slopes and m in lower_slopes:
                relaxation = (lower_slopes[m], *relaxation[1:])
            upstream, constant = step(coefficients, relaxation)
            total += constant
            for j, c in zip(node.inputs, upstream):
                self._accumulate(pending, j, c)
        return pending.get(0), total

    def interval_concretize(self, a: tf.Tensor | Patches, m: int, problems: slice = slice(None)) -> tf.Tensor:
        """The lower bound (b, S) of a . y_m from node m's interval bounds."""
        lo, hi = (t[problems] for t in self.bounds[m])
        if isinstance(a, Patches):
            return patch_sum(Patches(tf.nn.relu(a.a), a.top, a.left, a.map_shape), a.gather(lo)) + \
                patch_sum(Patches(tf.minimum(a.a, 0), a.top, a.left, a.map_shape), a.gather(hi))
        return sum_spec(tf.nn.relu(a) * expand_spec(lo) + tf.minimum(a, 0) * expand_spec(hi))

    def _accumulate(self, pending: dict, j: int, c: tf.Tensor | Patches) -> None:
        """Add coefficients for node j; windows are made dense where several consumers meet."""
        if j not in pending and len(self.graph.consumers[j]) == 1:
            pending[j] = c
            return
        dense = c.dense() if isinstance(c, Patches) else c
        if j in pending:
            old = pending[j]
            dense = dense + (old.dense() if isinstance(old, Patches) else old)
        pending[j] = dense

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


def _intersect(bounds: Interval, outer: Interval) -> Interval:
    return Interval(tf.maximum(bounds.lo, outer.lo), tf.minimum(bounds.hi, outer.hi))


def _values(a: tf.Tensor | Patches) -> tf.Tensor:
    return a.a if isinstance(a, Patches) else a


def _dense(a: tf.Tensor | Patches) -> tf.Tensor:
    return a.dense() if isinstance(a, Patches) else a
