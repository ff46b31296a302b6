"""Certified upper bounds of the local Lipschitz constant by linear bound propagation through the backward pass.

The gradient of a margin g = c . logits is computed backward: the logits receive c, and each node
passes its gradient delta to its inputs: a linear map y = W x + b passes W^T delta, an activation
y = f(x) passes f'(x) * delta, a max-pooling window passes delta to the entry that is its maximum,
an Add passes delta to each input. Over the ball the forward bounds (`bounds.py`) confine each
f'(x) to an interval (a ReLU that may switch: [0, 1]) and each window's routing to its candidate
entries ([0, 1] each). The gradient at every node is then a function of these free multipliers,
and this module bounds it as CROWN bounds a network's outputs, with the backward pass as the
network and the known c at its far end:

- a linear objective a . delta_j is carried toward the logits: through a linear map it becomes
  (W a) . delta_m; through an Add it is passed on unchanged;
- through a product with a multiplier d in [d_lo, d_hi], the least value of a d t over d is
  min(a d_lo t, a d_hi t), a concave function of t = delta_m; over t's bounds its chord is the
  best linear lower bound (and exact where t keeps one sign);
- at the logits delta = c, so what is left is a number.

The chords need bounds of the gradients at activation and pooling outputs. They are found the
same way from the logits down: interval bounds first (the Fast-Lip bounds of `lipschitz.py`),
then CROWN passes for the neurons whose relaxation is not exact (an uncertain multiplier times a
gradient of uncertain sign), intersected with the interval bounds. A pass for a neuron of a
feature map carries its coefficients on a window (`patches.Patches`) while convolutions, pooling
and activations keep them local, and on the whole node from the first layer that mixes
everything (a Flatten, a Dense). The input gradient's
elementwise bounds give its Linf norm exactly; its L1 and L2 norms are bounded by one more pass
each, on the chord of |t| (L1) and of t^2 (L2) over each coordinate's bounds, and by the
elementwise bounds; the smallest is kept.

Each chord is the best linear bound for its neuron, so there is no slope left to optimise; what
is lost is that the multipliers are treated as independent. `split_search` wins it back within a
time budget: it splits the multiplier that can move the bound the most (a ReLU's into 0 and 1, a
smooth activation's range in halves), bounds both halves, and keeps splitting the parts with the
largest bounds, each target's worst ones in turn, in batches that double (up to `max_batch`
halves) while one takes less than 1/16 of the budget. The maximum over the parts is a bound for
the whole, never above the unsplit one, and a half keeps its parent's bound where its own is higher.
A ReLU's multiplier is 0 exactly where its input is <= 0 and 1 where it is > 0, so a split ReLU
also splits the ball: each part's forward bounds are propagated again with that input clamped to
its side (and within the unsplit bounds), which makes later neurons stable and their multipliers
fixed. The side of a split ReLU also cuts the input (`cuts.py`): every later pass of the part's
forward bounds is bounded over the ball and these cuts, which makes other neurons of the same and
later layers stable too. A part whose clamped bounds cross (some lower bound above its upper bound)
holds no point of the ball, and bounds nothing. On a ReLU MLP a part with nothing left to split has
one activation pattern, and one LP (`leaves.py`) says whether a point of the ball has it: if not, the
part is dropped; if so, its bound is a gradient norm in the ball and, once it is the worst part, the
exact constant (`attained`). When the forward propagation takes more than twice as long as the
gradient pass on each of the second to fourth batches (the first pays one-off tracing, and a later
one may trace a new shape), the search stops clamping (a part is then bounded over the whole ball,
which is sound too) and spends the time on more parts instead.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from .bounds import BoundPropagation
from .graph import Graph
from .leaves import Leaf, LeafChecker, leaf_checker
from .ops import Interval
from .ops.activation import ReLU
from .ops.base import expand_spec, sum_spec
from .patches import Patches, negate_and_stack, unit_patches

_BYTES_PER_FLOAT = 4
# Live tensors of a coefficient's size during one step of a pass (the coefficients, the spread
# copy, the chord's slopes and TF's workspace).
_PASS_COPIES = 8
_CROSSING_TOLERANCE = 1e-5
# The split search grows its batches (more parts per TF call are cheaper per part) while one batch
# takes less than this fraction of the budget, so that a slow network still gets many small batches.
_SHORT_BATCHES = 16
# A split ReLU's side also cuts the input (`cuts.py`): projected steps on the cuts' multipliers per pass.
CUT_STEPS = 2
# Clamping (with its cuts) is dropped when it takes more than this many times the gradient pass on each of
# these batches (the first pays one-off tracing; later ones may trace new shapes).
_FORWARD_SHARE = 2.0
_JUDGED_BATCHES = (2, 3, 4)
# Column order of the norm bounds: the duals of the L1, L2 and Linf perturbation norms.
DUAL_NORMS = ("inf", "2", "1")


def default_multipliers(forward: BoundPropagation) -> dict[int, Interval]:
    """Per nonlinear node, the bounds (1, 1, *input shape) of its gradient multipliers over the ball."""
    graph, out = forward.graph, {}
    for m, node in enumerate(graph.nodes[1:], start=1):
        if node.op.nonlinear:
            mult = node.op.gradient_multipliers(*[forward.bounds[j] for j in node.inputs], **forward.op_facts(m))
            out[m] = Interval(expand_spec(mult.lo), expand_spec(mult.hi))
    return out


class GradientPropagation:
    """Bound propagation through the backward pass of `graph` over the ball of `forward`.

    Args:
        forward: the forward bounds over one ball (batch 1), from `BoundPropagation`.
        spec: (B, *output shape) one objective c per problem; its input gradient is bounded.
        multipliers: per nonlinear node, multiplier bounds broadcastable to (B, 1, *input shape)
            (default: from the forward bounds, the same for every problem).
        memory_budget: bytes one pass may hold, by estimate; rows are split into groups that fit.
        crown: False keeps the interval (Fast-Lip) bounds of every gradient.
        patches: False keeps every pass's coefficients dense (the same bounds, for testing).
    """

    def __init__(self, forward: BoundPropagation, spec: tf.Tensor, memory_budget: int,
                 multipliers: dict[int, Interval] | None = None, crown: bool = True, patches: bool = True):
        self.graph: Graph = forward.graph
        self.forward = forward
        self.spec = spec
        self.problems = int(spec.shape[0])
        self.memory_budget = memory_budget
        self.crown = crown
        self.patches = patches
        self.last = len(self.graph.nodes) - 1
        self.multipliers = default_multipliers(forward) if multipliers is None else multipliers
        self.bounds: list[Interval | None] = [None] * len(self.graph.nodes)
        self.refined: dict[int, int] = {}
        self._run()

    # -- the gradient bounds at every node, from the logits down ------------------------------------------
    def _run(self) -> None:
        self.bounds[self.last] = Interval(self.spec, self.spec)
        for k in range(self.last - 1, -1, -1):
            self.bounds[k] = self._interval(k)
            if self.crown and (k == 0 or k in self.multipliers):
                self._refine(k)  # node 0: the input gradient, whose every coordinate enters the norms

    def _interval(self, k: int) -> Interval:
        """Interval bounds (B, *shape) of node k's gradient from its consumers' final bounds (Fast-Lip's step)."""
        total = None
        for c in self.graph.consumers[k]:
            node = self.graph.nodes[c]
            g = self.bounds[c]
            if c in self.multipliers:
                d = self.multipliers[c]
                spread = node.op.spread_bounds(g)
                part = _interval_product(spread, Interval(d.lo[:, 0], d.hi[:, 0]))
            else:
                parts = node.op.gradient_backward(Interval(g.lo[None], g.hi[None]),
                                                  *[self.forward.bounds[j] for j in node.inputs])
                part = next(Interval(p.lo[0], p.hi[0]) for j, p in zip(node.inputs, parts) if j == k)
            total = part if total is None else Interval(total.lo + part.lo, total.hi + part.hi)
        if total is None:  # a node nothing depends on has no gradient
            zero = tf.zeros((self.problems, *self.graph.nodes[k].shape), self.graph.dtype)
            return Interval(zero, zero)
        return total

    def _rows_to_refine(self, k: int) -> np.ndarray:
        """Flat indices of node k's neurons whose product relaxation is not exact for some problem (node 0: all)."""
        if k == 0:
            return np.arange(self.graph.nodes[0].size, dtype=np.int64)
        op = self.graph.nodes[k].op
        mult = self.multipliers[k]
        spread = op.spread_bounds(self.bounds[k])
        uncertain = (mult.lo[:, 0] < mult.hi[:, 0]) & (spread.lo < 0) & (spread.hi > 0)   # (B, *input shape)
        wanted = tf.cast(tf.reduce_any(uncertain, axis=0), self.graph.dtype)[None, None]
        per_output = op.gather_spread(wanted)[0, 0] > 0
        return np.flatnonzero(tf.reshape(per_output, (-1,)).numpy()).astype(np.int64)

    def _refine(self, k: int) -> None:
        rows = self._rows_to_refine(k)
        self.refined[k] = len(rows)
        if len(rows) == 0:
            return
        node = self.graph.nodes[k]
        new_lo, new_hi = [], []
        for group in np.array_split(rows, max(1, -(-len(rows) // self._rows_per_pass(k)))):
            # The rows are the same for every problem: one copy (batch 1) is carried until the first
            # multiplier, whose per-problem bounds broadcast it.
            if self._windowed(k):
                a = negate_and_stack(unit_patches(group, node.shape, self.graph.dtype, 1))
            else:
                unit = tf.reshape(tf.one_hot(group, node.size, dtype=self.graph.dtype), (len(group), *node.shape))
                a = tf.concat([unit, -unit], 0)[None]
            lower = self.lower(k, a)
            new_lo.append(lower[:, :len(group)])
            new_hi.append(-lower[:, len(group):])
        index = tf.constant(rows[:, None])
        lo = _scatter(self.bounds[k].lo, index, tf.concat(new_lo, 1), tf.tensor_scatter_nd_max)
        hi = _scatter(self.bounds[k].hi, index, tf.concat(new_hi, 1), tf.tensor_scatter_nd_min)
        self.bounds[k] = Interval(lo, hi)

    def _windowed(self, k: int) -> bool:
        return self.patches and len(self.graph.nodes[k].shape) == 3

    def _rows_per_pass(self, k: int) -> int:
        """How many neurons of node k one pass may carry (two rows each) within the memory budget."""
        per_row = 2 * _PASS_COPIES * self._coefficients_per_row(k) * self.problems * _BYTES_PER_FLOAT
        return max(1, int(self.memory_budget // per_row))

    def _coefficients_per_row(self, k: int) -> int:
        """The most coefficients one row holds on any node of a pass from node k, by estimate: windows grow as
        `patch_window` says (an upper bound of their growth this way) until a layer makes them dense."""
        window = (1, 1) if self._windowed(k) else None
        largest = 0
        for m in range(k, self.last + 1):
            node = self.graph.nodes[m]
            if window is not None and m > k:
                window = node.op.patch_window(*window) if len(node.shape) == 3 else None
            if window is None or window[0] >= node.shape[0] and window[1] >= node.shape[1]:
                window = None
                largest = max(largest, node.size)
            else:
                largest = max(largest, window[0] * window[1] * node.shape[-1])
        return largest

    # -- one pass: a linear objective on a node's gradient, carried to the logits ---------------------------
    def lower(self, start: int, a: tf.Tensor, slack: dict[int, tf.Tensor] | None = None) -> tf.Tensor:
        """Lower bounds (B, S) of a . delta_start over the free multipliers, for a of shape (B, S, *shape).

        With `slack`, each product node's multipliers' reach, |a| (d_hi - d_lo) max |t| summed over the
        rows, is stored there (B, *input shape): how much fixing each would change, for `split_search`.
        """
        pending: dict[int, tf.Tensor | Patches] = {start: a}
        total = tf.zeros(tf.shape(_values(a))[:2], self.graph.dtype)
        for k in range(start, self.last + 1):
            if k not in pending:
                continue
            coefficients = pending.pop(k)
            if k == self.last:
                total += sum_spec(_dense(coefficients) * expand_spec(self.spec))
                continue
            for c in self.graph.consumers[k]:
                onward, constant = self._through(c, coefficients, slack)
                total += constant
                pending[c] = _add(pending[c], onward) if c in pending else onward
        return total

    def _through(self, c: int, a: tf.Tensor | Patches, slack: dict | None) -> tuple[tf.Tensor | Patches, tf.Tensor]:
        """Coefficients on node c's gradient and a constant, bounding a . (what node c passes to its input) from below."""
        op = self.graph.nodes[c].op
        if isinstance(a, Patches):
            onward = self._through_windows(c, a, slack)
            if onward is not None:
                return onward
            a = a.dense()
        if c not in self.multipliers:
            return op.spread_gradient(a), tf.zeros(tf.shape(a)[:2], a.dtype)
        g = Interval(expand_spec(self.bounds[c].lo), expand_spec(self.bounds[c].hi))
        d = self.multipliers[c]
        if slack is not None:
            # How far each multiplier's freedom can move the objective: |a| (d_hi - d_lo) max |t|.
            t = op.spread_bounds(g)
            reach = tf.abs(a) * (d.hi - d.lo) * tf.maximum(tf.abs(t.lo), tf.abs(t.hi))
            slack[c] = slack.get(c, 0.0) + tf.reduce_sum(reach, axis=1)
        return op.gradient_chord(a, d, g)

    def _through_windows(self, c: int, p: Patches, slack: dict | None) -> tuple[tf.Tensor | Patches, tf.Tensor] | None:
        """`_through` for coefficients on windows; None where node c cannot keep them on windows."""
        op = self.graph.nodes[c].op
        if c not in self.multipliers:
            onward = op.patch_spread_gradient(p)
            if onward is None:
                return None
            return (onward.dense() if onward.covers_map() else onward), tf.zeros(tf.shape(p.a)[:2], p.a.dtype)
        d, g = self.multipliers[c], Interval(expand_spec(self.bounds[c].lo), expand_spec(self.bounds[c].hi))
        if slack is not None:
            t = op.spread_bounds(g)
            window, reach_t = Interval(p.gather(d.lo), p.gather(d.hi)), Interval(p.gather(t.lo), p.gather(t.hi))
            reach = tf.abs(p.a) * (window.hi - window.lo) * tf.maximum(tf.abs(reach_t.lo), tf.abs(reach_t.hi))
            slack[c] = slack.get(c, 0.0) + tf.reduce_sum(Patches(reach, p.top, p.left, p.map_shape).dense(), axis=1)
        result = op.patch_gradient_chord(p, d, g)
        if result is None:
            return None
        onward, total = result
        return (onward.dense() if onward.covers_map() else onward), total

    # -- the norms of the input gradient -----------------------------------------------------------------
    def norm_bounds(self, slack: dict[int, tf.Tensor] | None = None) -> np.ndarray:
        """(B, 3): upper bounds of ||grad||_q over the ball for q = inf, 2, 1 (the duals of L1, L2, Linf)."""
        g = self.bounds[0]
        lo = tf.reshape(g.lo, (self.problems, -1))
        hi = tf.reshape(g.hi, (self.problems, -1))
        worst = tf.maximum(tf.abs(lo), tf.abs(hi))
        linf = tf.reduce_max(worst, axis=1)
        l1 = tf.reduce_sum(worst, axis=1)
        l2 = tf.sqrt(tf.reduce_sum(tf.square(worst), axis=1))
        if self.crown:
            l1_chord, sq_chord = self._norm_chords(lo, hi, slack)
            l1 = tf.minimum(l1, l1_chord)
            l2 = tf.minimum(l2, tf.sqrt(tf.maximum(sq_chord, 0.0)))
        l2 = tf.minimum(l2, tf.sqrt(l1 * linf))  # sum t^2 <= max |t| sum |t|
        return np.stack([linf.numpy(), l2.numpy(), l1.numpy()], axis=1).astype(np.float64)

    def _norm_chords(self, lo: tf.Tensor, hi: tf.Tensor, slack: dict | None) -> tuple[tf.Tensor, tf.Tensor]:
        """Upper bounds of sum |t_i| and sum t_i^2 over the ball from the chords of |.| and (.)^2 on each [lo_i, hi_i].

        |t| <= s t + b and t^2 <= (lo + hi) t - lo hi on [lo, hi]; the upper bound of the linear form
        is minus one pass's lower bound of its negation.
        """
        crossing = (lo < 0) & (hi > 0)
        width = tf.where(crossing, hi - lo, tf.ones_like(hi))
        abs_slope = tf.where(crossing, (hi + lo) / width, tf.where(lo >= 0, tf.ones_like(lo), -tf.ones_like(lo)))
        abs_const = tf.reduce_sum(tf.where(crossing, -2 * hi * lo / width, tf.zeros_like(lo)), axis=1)
        sq_slope, sq_const = lo + hi, tf.reduce_sum(-lo * hi, axis=1)
        rows = -tf.stack([abs_slope, sq_slope], axis=1)                               # (B, 2, d)
        lower = self.lower(0, tf.reshape(rows, (self.problems, 2, *self.graph.input_shape)), slack)
        return abs_const - lower[:, 0], sq_const - lower[:, 1]


def _values(a: tf.Tensor | Patches) -> tf.Tensor:
    return a.a if isinstance(a, Patches) else a


def _dense(a: tf.Tensor | Patches) -> tf.Tensor:
    return a.dense() if isinstance(a, Patches) else a


def _add(a: tf.Tensor | Patches, b: tf.Tensor | Patches) -> tf.Tensor | Patches:
    """The sum of two coefficient sets on one node: on their windows when both share them, else dense."""
    if isinstance(a, Patches) and isinstance(b, Patches) and a.window == b.window and \
            np.array_equal(a.top, b.top) and np.array_equal(a.left, b.left):
        return Patches(a.a + b.a, a.top, a.left, a.map_shape)
    return _dense(a) + _dense(b)


def _interval_product(t: Interval, d: Interval) -> Interval:
    candidates = tf.stack([t.lo * d.lo, t.lo * d.hi, t.hi * d.lo, t.hi * d.hi])
    return Interval(tf.reduce_min(candidates, 0), tf.reduce_max(candidates, 0))


def _scatter(old: tf.Tensor, index: tf.Tensor, new: tf.Tensor, pick) -> tf.Tensor:
    """old (B, *shape) with the flat entries `index` replaced by pick(old, new (B, R))."""
    flat = tf.transpose(tf.reshape(old, (tf.shape(old)[0], -1)))
    merged = pick(flat, index, tf.transpose(new))
    return tf.reshape(tf.transpose(merged), tf.shape(old))


# -- splitting the multipliers within a time budget ------------------------------------------------------

@dataclass(order=True)
class _Part:
    """One part of one target's multiplier space: fixed multipliers (node, flat index) -> (lo, hi)."""

    priority: float
    serial: int
    target: int = field(compare=False)
    fixed: dict = field(compare=False)
    bounds: np.ndarray = field(compare=False)                      # (3,) norm bounds
    # Where to split next: node, flat index, whether binary, and the multiplier's range in this part.
    choice: tuple[int, int, bool, float, float] | None = field(compare=False)
    # A leaf of a ReLU MLP (nothing left to split): its ReLU multipliers (lo, hi) per hidden layer until
    # `leaves.py` has checked it, then None; `attained` once a point of the ball was shown to have them.
    relus: list | None = field(default=None, compare=False)
    attained: bool = field(default=False, compare=False)


def gradient_norm_bounds(forward: BoundPropagation, spec: tf.Tensor, memory_budget: int, objective: int = 2,
                         time_budget: float = 0.0, max_batch: int = 128, clamp: bool = True,
                         cut_steps: int = CUT_STEPS) -> tuple[np.ndarray, dict]:
    """(T, 3) norm bounds (q = inf, 2, 1) for each target's spec row, and a report of the search.

    With `time_budget` > 0, `split_search` tightens column `objective` (2: the L1 gradient norm, the
    dual of Linf balls) by splitting multipliers until the time is spent; every column is the maximum
    over the parts, so each stays a sound bound and none ends above the unsplit one. `max_batch` caps
    the halves bounded in one batched pass. `clamp` False never clamps the forward bounds of split
    ReLUs (see the module docstring); `cut_steps` 0 clamps them without cutting the input.
    """
    base = default_multipliers(forward)
    gp = GradientPropagation(forward, spec, memory_budget, base)
    slack: dict[int, tf.Tensor] = {}
    first = gp.norm_bounds(slack)
    report = {"parts": int(spec.shape[0]), "unsplit": first.copy(), "refined": dict(gp.refined),
              "attained": [False] * int(spec.shape[0]), "empty_leaves": 0}
    if time_budget <= 0:
        return first, report
    bounds, search = split_search(forward, spec, memory_budget, base, first, slack, objective, time_budget,
                                  max_batch, clamp, cut_steps)
    report.update(search)
    return np.minimum(first, bounds), report


def split_search(forward: BoundPropagation, spec: tf.Tensor, memory_budget: int, base: dict[int, Interval],
                 first: np.ndarray, slack: dict, objective: int, time_budget: float,
                 max_batch: int, clamp: bool = True, cut_steps: int = CUT_STEPS) -> tuple[np.ndarray, dict]:
    """Branch and bound over the multipliers (see the module docstring): (T, 3) bounds, and a report: the parts
    bounded (`parts`), whether the forward bounds were still clamped at the end (`clamped`), the leaves found
    empty by their LP (`empty_leaves`) and, per target, whether the bound is attained in the ball (`attained`:
    its worst part is a leaf of a ReLU MLP that a point of the ball meets, so the bound is the exact constant).

    `clamp` False leaves the forward bounds unsplit (each part's multipliers are fixed, nothing else).
    """
    deadline = time.perf_counter() + time_budget
    graph = forward.graph
    binary = {m for m in base if graph.nodes[m].op.binary_multipliers}
    relu_inputs = {m: graph.nodes[m].inputs[0] for m in base if clamp and isinstance(graph.nodes[m].op, ReLU)}
    leaves = _leaf_checker(forward)
    empty_leaves = 0
    serial = 0
    heaps: list[list[_Part]] = []
    targets = int(spec.shape[0])
    choices = _best_splits(_batched_multipliers(base, [{}] * targets)[1], _flat(slack, targets), binary, targets)
    for t in range(targets):
        heaps.append([_Part(-first[t, objective], serial, t, {}, first[t], choices[t])])
        serial += 1
    parts = len(heaps)
    last_batch = 0.0  # a batch starts only if one as long as the last still ends in time
    batches = 0
    shares: list[float] = []  # forward / gradient seconds of the judged batches
    size = 2 * len(heaps)  # children per batch: one part per target at first, doubled while batches are short
    while time.perf_counter() + last_batch < deadline:
        batch_begin = time.perf_counter()
        if leaves is not None:
            empty_leaves += _settle_leaves(heaps, leaves, deadline)
        batch = _worst_parts(heaps, size // 2)
        if not batch:
            break
        children = [child for part in batch for child in _halves(part)]
        fixed = [c.fixed for c in children]
        empty = np.zeros(len(children), bool)
        begin = time.perf_counter()
        if relu_inputs:
            split_forward = _clamped_forward(forward, fixed, relu_inputs, memory_budget, cut_steps)
            empty = _crossed(split_forward)
            multipliers, rows = _batched_multipliers(default_multipliers(split_forward), fixed)
        else:
            multipliers, rows = _batched_multipliers(base, fixed)
        forward_seconds = time.perf_counter() - begin
        gp = GradientPropagation(forward, tf.gather(spec, [c.target for c in children]), memory_budget, multipliers)
        slack = {}
        values = np.where(empty[:, None], 0.0, gp.norm_bounds(slack))
        choices = _best_splits(rows, _flat(slack, len(children)), binary, len(children))
        gradient_seconds = time.perf_counter() - begin - forward_seconds
        batches += 1
        if relu_inputs and batches in _JUDGED_BATCHES:
            shares.append(forward_seconds / max(gradient_seconds, 1e-9))
            # Tracing (a new batch size, the first cuts of a layer) slows single batches: judge the least share.
            if batches == _JUDGED_BATCHES[-1] and min(shares) > _FORWARD_SHARE:
                relu_inputs = {}
        for k, child in enumerate(children):
            child.bounds = np.minimum(values[k], child.bounds)  # a part of its parent: the parent's bound holds too
            child.priority = -child.bounds[objective]
            child.serial = serial
            serial += 1
            child.choice = None if empty[k] else choices[k]
            if leaves is not None and child.choice is None and not empty[k]:
                child.relus = [(rows[m][0][k].copy(), rows[m][1][k].copy()) for m in leaves.relu_nodes]
            heapq.heappush(heaps[child.target], child)
        parts += len(children)
        last_batch = time.perf_counter() - batch_begin
        if last_batch < time_budget / _SHORT_BATCHES and size < max_batch:
            size = min(2 * size, max_batch)
    out = np.stack([np.max([p.bounds for p in heap], axis=0) for heap in heaps])
    attained = [heap[0].attained for heap in heaps]  # each heap's first part is its worst
    return out, {"parts": parts, "clamped": bool(relu_inputs), "empty_leaves": empty_leaves, "attained": attained}


def _leaf_checker(forward: BoundPropagation) -> LeafChecker | None:
    """The LP check of leaves (`leaves.py`) for this ball, if the network is a ReLU MLP."""
    inputs = forward.bounds[0]  # the box intersected with the ball's Linf box, (B, *input shape)
    return leaf_checker(forward.graph, forward.x0.numpy(), inputs.lo.numpy()[0], inputs.hi.numpy()[0],
                        float(forward.radius[0]), forward.norm.p)


def _settle_leaves(heaps: list[list[_Part]], leaves: LeafChecker, deadline: float) -> int:
    """Check each target's worst parts while they are unchecked leaves: drop the empty ones (never a target's
    last part) and mark those a point of the ball meets. Returns how many were dropped."""
    dropped = 0
    for heap in heaps:
        while heap and heap[0].relus is not None and time.perf_counter() < deadline:
            part = heapq.heappop(heap)
            verdict = leaves.check(part.relus)
            part.relus = None
            if verdict is Leaf.EMPTY and heap:
                dropped += 1
                continue
            part.attained = verdict is Leaf.ATTAINED
            heapq.heappush(heap, part)
    return dropped


def _worst_parts(heaps: list[list[_Part]], count: int) -> list[_Part]:
    """Up to `count` parts to split, taken from the targets in turn, each target's worst first, while they can be split."""
    batch: list[_Part] = []
    while len(batch) < count:
        taken = len(batch)
        for heap in heaps:
            if len(batch) < count and heap and heap[0].choice is not None:
                batch.append(heapq.heappop(heap))
        if len(batch) == taken:
            break
    return batch


def _clamped_forward(forward: BoundPropagation, fixed: Sequence[dict], relu_inputs: dict[int, int],
                     memory_budget: int, cut_steps: int = 0) -> BoundPropagation:
    """Forward bounds of one problem per entry of `fixed`, each ReLU fixed to 0 (1) clamping its input to <= 0 (>= 0)."""
    lows = {j: np.full((len(fixed), forward.graph.nodes[j].size), -np.inf) for j in relu_inputs.values()}
    highs = {j: np.full((len(fixed), forward.graph.nodes[j].size), np.inf) for j in relu_inputs.values()}
    for k, fix in enumerate(fixed):
        for (m, index), (lo, _) in fix.items():
            if m in relu_inputs:
                (lows if lo > 0 else highs)[relu_inputs[m]][k, index] = 0.0
    dtype = forward.graph.dtype.as_numpy_dtype
    clamps = {j: Interval(tf.constant(lows[j].reshape(len(fixed), *forward.graph.nodes[j].shape), dtype),
                          tf.constant(highs[j].reshape(len(fixed), *forward.graph.nodes[j].shape), dtype))
              for j in lows if np.isfinite(lows[j]).any() or np.isfinite(highs[j]).any()}
    radius = tf.fill((len(fixed),), forward.radius[0])
    return BoundPropagation(forward.graph, forward.x0, radius, forward.norm, forward.box, memory_budget,
                            forward.crown, forward.patches, within=forward.bounds, clamps=clamps, cut_steps=cut_steps,
                            within_orders=forward.orders)


def _crossed(forward: BoundPropagation) -> np.ndarray:
    """(B,) whether some node's lower bound lies above its upper bound: the problem's region is empty."""
    crossed = tf.zeros(forward.batch, tf.bool)
    for bounds in forward.bounds:
        if bounds is not None:
            # A margin for rounding: a region that is one point (z = 0 exactly) is not empty.
            slack = _CROSSING_TOLERANCE * (1.0 + tf.abs(bounds.lo) + tf.abs(bounds.hi))
            gap = tf.reshape(bounds.lo - bounds.hi - slack, (forward.batch, -1))
            crossed |= tf.reduce_any(gap > 0, axis=1)
    return crossed.numpy()


def _halves(part: _Part) -> list[_Part]:
    m, index, is_binary, lo, hi = part.choice
    pieces = [(lo, lo), (hi, hi)] if is_binary else [(lo, (lo + hi) / 2), ((lo + hi) / 2, hi)]
    return [_Part(0.0, 0, part.target, {**part.fixed, (m, index): piece}, part.bounds, None) for piece in pieces]


def _batched_multipliers(base: dict[int, Interval], fixed: Sequence[dict]) -> tuple[dict[int, Interval], dict]:
    """The base multipliers (batch 1 or one per entry of `fixed`), one problem per entry of `fixed`, with each
    problem's fixings applied; also the same bounds flat on the host, node -> (lo, hi), each (problems, size)."""
    flat = {m: (_host_rows(d.lo, len(fixed)), _host_rows(d.hi, len(fixed))) for m, d in base.items()}
    for k, fix in enumerate(fixed):  # one pass over every problem's fixings
        for (m, index), (a, b) in fix.items():
            flat[m][0][k, index], flat[m][1][k, index] = a, b
    out = {}
    for m, d in base.items():
        shape = (len(fixed), 1, *d.lo.shape[2:])
        lo, hi = flat[m]
        out[m] = Interval(tf.constant(lo.reshape(shape), d.lo.dtype), tf.constant(hi.reshape(shape), d.hi.dtype))
    return out, flat


def _host_rows(t: tf.Tensor, problems: int) -> np.ndarray:
    """Multiplier bounds (1 or problems, 1, *shape) as a writable host array (problems, size)."""
    return np.broadcast_to(t.numpy().reshape(t.shape[0], -1), (problems, int(np.prod(t.shape[2:])))).copy()


def _flat(slack: dict[int, tf.Tensor], problems: int) -> dict[int, np.ndarray]:
    """Each node's reach (problems, *shape) on the host, (problems, size), read once per batch."""
    return {m: np.asarray(s, np.float64).reshape(problems, -1) for m, s in slack.items()}


def _best_splits(multipliers: dict[int, tuple[np.ndarray, np.ndarray]], slack: dict[int, np.ndarray],
                 binary: set[int], problems: int) -> list[tuple[int, int, bool, float, float] | None]:
    """For each problem, the multiplier that can move the objective's pass the most and can still be split, with
    its range: (node, flat index, whether binary, lo, hi), or None (also for a network without any).
    Arrays are (problems, size) per node."""
    best, where = np.zeros(problems), [None] * problems
    for m, gap in slack.items():
        lo, hi = multipliers[m]
        splittable = hi - lo > (0.0 if m in binary else 1e-3 * np.maximum(np.abs(hi), 1e-12))
        g = np.where(splittable, gap, 0.0)
        k = np.argmax(g, axis=1)
        value = g[np.arange(problems), k]
        for b in np.flatnonzero(value > best):
            best[b], where[b] = value[b], (m, int(k[b]), m in binary, float(lo[b, k[b]]), float(hi[b, k[b]]))
    return where
