"""Certified margins and radii by linear bound propagation (CROWN).

For an input x0 with label c and targets j, the objective specification has one row
e_c - e_j per target, so all targets share one backward pass. The returned lower bound of
f_c(x) - f_j(x) over {||x - x0||_p <= r} intersected with the input box is the better of the
CROWN bound and the interval bound (both are sound).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from cleverscore.errors import UsageError
from cleverscore.norms import LpNorm

from .bounds import DEFAULT_MEMORY_BUDGET, BoundPropagation
from .graph import Graph, from_keras
from .ops import Interval
from .results import CertifiedRadii, MarginBounds, merge_reports
from .slopes import optimized_lower

# (lo, hi): scalars or arrays broadcastable to the input shape.
Box = tuple[float | np.ndarray, float | np.ndarray]
DEFAULT_BOX: Box = (-0.5, 0.5)
# A target's search stops once its bracket is below this fraction of the largest radius searched.
_SMALLEST_RADIUS = 1e-12
_EVALUATIONS_PER_TARGET = 60
_MODEL_STEPS = 3
_SHRINK = 4.0
# The optimised bound costs a pass per target and step: its search stops at a coarser bracket.
_OPTIMIZED_REL_TOL = 2e-3
# Rows of the first layer that set the first probe of a search that starts from a wider norm's radii.
_SCALE_ROWS = 64


@dataclass(frozen=True)
class Problem:
    """One input, its label and targets, checked and converted to the graph's precision."""

    graph: Graph
    x0: tf.Tensor
    true_label: int
    targets: np.ndarray
    spec: tf.Tensor          # (T, *output_shape): rows e_c - e_j
    box: Interval            # broadcast to the input shape

    def propagate(self, radii: np.ndarray, norm: LpNorm, memory_budget: int, crown: bool = True,
                  patches: bool = True, within: list[Interval | None] | None = None,
                  within_orders: dict | None = None, slope_seconds: float = 0.0) -> BoundPropagation:
        radius = tf.constant(np.asarray(radii, dtype=self.graph.dtype.as_numpy_dtype).reshape(-1))
        return BoundPropagation(self.graph, self.x0, radius, norm, self.box, memory_budget, crown, patches, within,
                                within_orders=within_orders, slope_seconds=slope_seconds)

    def tightened(self, plain: BoundPropagation, slope_seconds: float) -> BoundPropagation:
        """`plain`'s balls again with `slope_seconds` of optimised intermediate slopes, inside `plain` node by
        node: CROWN's bounds are not monotone in the bounds below them (its slopes follow them), so without
        `plain` as `within` a later node could come out looser."""
        return self.propagate(plain.radius.numpy(), plain.norm, plain.memory_budget, within=plain.bounds,
                              within_orders=plain.orders, slope_seconds=slope_seconds)

    def margins_at_x0(self) -> np.ndarray:
        logits = self.graph.forward(self.x0[None])[0].numpy()
        return (logits[self.true_label] - logits[self.targets]).astype(np.float64)

    def margin_gradients(self) -> np.ndarray:
        """Gradients (T, d) of f_c - f_j at x0, for the first probe of the radius search."""
        x = tf.Variable(tf.broadcast_to(self.x0[None], (len(self.targets), *self.x0.shape)))
        with tf.GradientTape() as tape:
            logits = self.graph.forward(x)
            margins = tf.reduce_sum(logits * tf.reshape(self.spec, (len(self.targets), -1)), axis=1)
        return tape.gradient(margins, x).numpy().reshape(len(self.targets), -1)

    def first_layer_rows(self, count: int = _SCALE_ROWS) -> np.ndarray:
        """Up to `count` rows (R, d) of the affine map from the input to the first nonlinear node's input, spread
        evenly over its neurons (none when the network has no nonlinear node)."""
        nodes = self.graph.nodes
        first = next((i for i, node in enumerate(nodes) if i > 0 and node.op.nonlinear), None)
        if first is None:
            return np.zeros((0, int(np.prod(self.graph.input_shape))))
        feeding = nodes[first].inputs[0]
        rows = np.unique(np.linspace(0, nodes[feeding].size - 1, min(count, nodes[feeding].size)).astype(np.int64))
        x = tf.Variable(tf.broadcast_to(self.x0[None], (len(rows), *self.x0.shape)))
        with tf.GradientTape() as tape:
            picked = tf.reshape(self.graph.forward_all(x, last=feeding)[feeding], (len(rows), -1))
        unit = tf.one_hot(rows, nodes[feeding].size, dtype=picked.dtype)
        return tape.gradient(picked, x, output_gradients=unit).numpy().reshape(len(rows), -1)


def as_graph(model) -> Graph:
    """A Graph as is, or a Keras model converted with `from_keras`."""
    return model if isinstance(model, Graph) else from_keras(model)


def prepare(model, x0, true_label: int, targets: Sequence[int], box: Box = DEFAULT_BOX) -> Problem:
    """Check the arguments shared by all public functions and put them in the graph's precision."""
    graph = as_graph(model)
    x = np.asarray(x0, dtype=np.float64)
    if x.shape != graph.input_shape and x.shape != (1, *graph.input_shape):
        raise UsageError(f"x0 has shape {x.shape}; the model takes inputs of shape {graph.input_shape}")
    x = x.reshape(graph.input_shape)
    n_out = graph.num_outputs
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    if not 0 <= int(true_label) < n_out:
        raise UsageError(f"true_label {true_label} is not a class of a {n_out}-class model")
    if t.size == 0 or np.any((t < 0) | (t >= n_out)) or np.any(t == int(true_label)):
        raise UsageError(f"targets must be classes other than the true label {true_label}, got {t.tolist()}")
    lo = np.broadcast_to(np.asarray(box[0], np.float64), graph.input_shape)
    hi = np.broadcast_to(np.asarray(box[1], np.float64), graph.input_shape)
    if np.any(lo > hi):
        raise UsageError("the input box needs lo <= hi")
    slack = 1e-6 * max(1.0, float(np.max(np.abs(np.concatenate([lo.ravel(), hi.ravel()])))))
    if np.any(x < lo - slack) or np.any(x > hi + slack):
        raise UsageError("x0 lies outside the input box")
    x = np.clip(x, lo, hi)
    spec = np.zeros((t.size, n_out))
    spec[:, int(true_label)] += 1.0
    spec[np.arange(t.size), t] -= 1.0
    out_shape = graph.nodes[-1].shape
    return Problem(graph, tf.constant(x, graph.dtype), int(true_label), t,
                   tf.constant(spec.reshape(t.size, *out_shape), graph.dtype),
                   Interval(tf.constant(lo, graph.dtype), tf.constant(hi, graph.dtype)))


def check_radius(radius: float) -> float:
    r = float(radius)
    if not np.isfinite(r) or r < 0:
        raise UsageError(f"the radius must be finite and non-negative, got {radius}")
    return r


def _margin_lower(bp: BoundPropagation, spec: tf.Tensor) -> np.ndarray:
    last = len(bp.graph.nodes) - 1
    return tf.maximum(bp.backward_lower(last, spec), bp.interval_lower(last, spec)).numpy()


def margin_lower_bounds(graph: Graph, x0: np.ndarray, true_label: int, targets: Sequence[int], radius: float,
                        norm: LpNorm, box: Box = DEFAULT_BOX, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> MarginBounds:
    """Lower bounds of f_c(x) - f_j(x) over {||x - x0||_p <= radius} intersected with the box, per target j.

    Args:
        graph: from `from_keras` (a Keras model is converted on the fly).
        x0: the input, shape graph.input_shape (a leading batch axis of 1 is allowed).
        true_label: the class c.
        targets: the classes j != c.
        radius: the ball's radius in `norm`.
        norm: cleverscore.norms.L1, L2 or LINF.
        box: (lo, hi) input bounds, scalars or arrays broadcastable to the input shape.
        memory_budget: bytes one CROWN pass for a layer's intermediate bounds may use, by estimate.
            A layer whose pass to the input would need more gets a pass that stops at an earlier
            layer (truncated), or interval bounds if even that does not fit; see the `layers`
            report of the result. Larger budgets give tighter bounds for deep CNNs.
    """
    problem = prepare(graph, x0, true_label, targets, box)
    bp = problem.propagate(np.array([check_radius(radius)]), norm, memory_budget)
    lower = _margin_lower(bp, problem.spec[None])[0]
    return MarginBounds(problem.targets, lower, tuple(bp.reports))


def interval_margin_lower_bounds(graph: Graph, x0: np.ndarray, true_label: int, targets: Sequence[int],
                                 radius: float, norm: LpNorm, box: Box = DEFAULT_BOX) -> MarginBounds:
    """The same bounds by interval propagation alone (the baseline CROWN is never looser than)."""
    problem = prepare(graph, x0, true_label, targets, box)
    bp = problem.propagate(np.array([check_radius(radius)]), norm, 0, crown=False)
    lower = bp.interval_lower(len(bp.graph.nodes) - 1, problem.spec[None]).numpy()[0]
    return MarginBounds(problem.targets, lower, tuple(bp.reports))


def covering_radius(problem: Problem, norm: LpNorm) -> float:
    """The radius from which on the ball contains the whole box, so larger radii certify nothing new."""
    x0 = problem.x0.numpy().astype(np.float64)
    reach = np.maximum(x0 - problem.box.lo.numpy(), problem.box.hi.numpy() - x0)
    return float(np.linalg.norm(reach.ravel(), ord=norm.p))


class _OuterBounds:
    """The bounds of earlier probes of one search, for the later probes inside them.

    A probe below a radius already propagated lies in a ball that contains its own, so that
    pass's bounds are sound for it too (`BoundPropagation`'s `within`): the closest larger radius
    gives the tightest. Only radii that are some target's failing end are kept: every later probe
    of that target lies below it, and the bounds of a deep CNN are megabytes per probe. The max
    poolings' window orders are kept with them (`within_orders`).
    """

    def __init__(self) -> None:
        self.kept: dict[float, tuple[list[Interval | None], dict]] = {}

    def around(self, radius: float) -> dict:
        """Keyword arguments `within` and `within_orders` for a probe at this radius (empty: none larger kept)."""
        larger = [r for r in self.kept if r >= radius]
        if not larger:
            return {}
        bounds, orders = self.kept[min(larger)]
        return {"within": bounds, "within_orders": orders}

    def add(self, radius: float, bp: BoundPropagation, failing_ends: np.ndarray) -> None:
        self.kept[radius] = (bp.bounds, bp.orders)
        ends = set(failing_ends[np.isfinite(failing_ends)].tolist())
        self.kept = {r: b for r, b in self.kept.items() if r in ends}


class _Search:
    """Per-target brackets lo (certified) < root <= hi (not certified), shrunk by probes shared by all targets.

    Each probe radius is evaluated for every target in one pass (the intermediate bounds, which
    cost the most, depend on the radius only), and updates every target whose bracket holds it.
    The next probe is the one the target with the widest bracket asks for.

    The margin bound b(r) falls from g0 = g(x0) by a loss f(r) = g0 - b(r) that starts as s r,
    s = ||grad g(x0)||_dual (CROWN is exact to first order at a point), and grows faster as ReLUs
    become unstable: locally a power of r. So a target asks for the root of f(r) = g0 on the line
    through the two points it has seen (every probe bounds every target) closest to the root in
    log f, in log-log coordinates (a secant step there; the first-order line at a radius 1000x
    below g0 / s counts as a point), kept at least rel_tol/2 inside the bracket so that a good
    estimate closes it at the next step. When three of its steps in a row have not halved its
    bracket (in log scale), its next step is a geometric midpoint (a jump where a layer's method
    changes, for instance, is no power law). The first probe is the first-order estimate g0 / s.
    """

    def __init__(self, first_probe: np.ndarray, top: float, margins: np.ndarray, slopes: np.ndarray,
                 rel_tol: float):
        self.first = first_probe
        self.top = top
        self.rel_tol = rel_tol
        self.g0, self.slope = margins, slopes
        self.lo, self.hi = np.zeros_like(first_probe), np.full_like(first_probe, np.inf)
        self.lower = margins.copy()
        self.seen_radii: list[float] = []
        self.seen_bounds: list[np.ndarray] = []
        self.window_width = np.full(first_probe.shape, np.inf)
        self.window_steps = np.zeros(first_probe.shape, dtype=int)
        self.bisecting = np.zeros(first_probe.shape, dtype=bool)
        self.active = margins > 0

    def _model_root(self, t: int) -> float:
        """Target t's root of the loss's log-log line through its two points nearest the root (NaN without)."""
        g0, slope = self.g0[t], self.slope[t]
        if not (g0 > 0 and slope > 0) or not self.seen_radii:
            return np.nan
        r = np.asarray(self.seen_radii)
        loss = g0 - np.asarray([b[t] for b in self.seen_bounds])
        usable = (r > 0) & (loss > 0) & np.isfinite(loss)
        # The first-order line, where CROWN is exact, 1000x below the first-order estimate.
        tiny = g0 / slope / 1000
        r, loss = np.log(np.append(r[usable], tiny)), np.log(np.append(loss[usable], slope * tiny))
        nearest = np.argsort(np.abs(loss - np.log(g0)), kind="stable")[:2]
        (r1, r2), (f1, f2) = r[nearest], loss[nearest]
        if not f1 != f2:
            return np.nan
        return float(np.exp(r1 + (np.log(g0) - f1) * (r2 - r1) / (f2 - f1)))

    def _model_roots(self) -> np.ndarray:
        return np.array([self._model_root(t) for t in range(len(self.g0))])

    def start_above(self, radii: np.ndarray, lower: np.ndarray, probes: np.ndarray) -> None:
        """Brackets that start at radii already certified (with margin bounds `lower` there) and first probes."""
        known = (radii > 0) & self.active
        self.lo = np.where(known, np.minimum(radii, self.top), self.lo)
        self.lower = np.where(known, lower, self.lower)
        self.first = np.where(known, np.maximum(probes, self.lo * (1 + self.rel_tol)), self.first)
        self.active &= self.lo < self.top

    def _upward(self, root: np.ndarray) -> np.ndarray:
        lo = self.lo
        grown = np.where(np.isfinite(root) & (root > lo), np.maximum(root, lo * (1 + self.rel_tol)), _SHRINK * lo)
        # Before its first probe a search that starts from known radii still takes its first probes.
        return np.minimum(self.top, np.where((lo > 0) & bool(self.seen_radii), grown, self.first))

    def _inward(self, root: np.ndarray) -> np.ndarray:
        lo, hi = self.lo, np.where(np.isfinite(self.hi), self.hi, 1.0)
        margin = 1 + self.rel_tol / 2
        floor = np.where(lo > 0, lo * margin, hi * 1e-9)
        probe = np.clip(root, floor, hi / margin)
        bisect = np.where(lo > 0, np.sqrt(lo * hi), hi / _SHRINK)
        return np.where(np.isfinite(probe) & ~self.bisecting, probe, bisect)

    def probes(self) -> np.ndarray:
        root = self._model_roots()
        return np.where(np.isinf(self.hi), self._upward(root), self._inward(root))

    def update(self, which: np.ndarray, probe: float, bounds: np.ndarray, own: int) -> None:
        """Move the brackets of targets `which` to `probe`, given their bounds there; `own` asked for it.

        Only the target that asked for the probe judges the step: a probe that another target
        asked for says nothing about how well its own steps work.
        """
        certified = bounds > 0
        mine = which == own
        before = self._log_width(which[mine])
        up, down = which[certified], which[~certified]
        self.lo[up], self.lower[up] = probe, bounds[certified]
        self.hi[down] = probe
        if mine.any() and np.isfinite(before[0]):
            self._judge_own_step(own, float(before[0]))
        converged = self.hi <= self.lo * (1 + self.rel_tol)
        self.active &= ~(converged | (self.lo >= self.top) | (self.hi <= _SMALLEST_RADIUS * self.top))

    def _judge_own_step(self, own: int, before: float) -> None:
        """Brent's safeguard: when model steps have not halved the bracket (in log scale) in
        _MODEL_STEPS tries, the bound is far from the model there (a jump where a layer's method
        changes, for instance): the next step is a geometric midpoint."""
        if self.bisecting[own]:
            self.bisecting[own], self.window_steps[own] = False, 0
            return
        if self.window_steps[own] == 0:
            self.window_width[own] = before
        self.window_steps[own] += 1
        if self.window_steps[own] == _MODEL_STEPS:
            self.window_steps[own] = 0
            self.bisecting[own] = self._log_width(np.array([own]))[0] > 0.5 * self.window_width[own]

    def next_probe(self) -> tuple[float, int]:
        """The probe of the active target with the widest bracket (the smallest among unbracketed ones), and that target."""
        active = np.flatnonzero(self.active)
        width, probes = self._log_width(active), self.probes()[active]
        pick = np.lexsort((probes, -width))[0]
        return float(probes[pick]), int(active[pick])

    def record(self, probe: float, bounds: np.ndarray, own: int) -> None:
        """The bounds (T,) of all targets at `probe`, for the targets whose bracket holds it."""
        self.seen_radii.append(probe)
        self.seen_bounds.append(np.asarray(bounds, np.float64))
        which = np.flatnonzero(self.active & (self.lo < probe) & (probe < self.hi))
        self.update(which, probe, bounds[which], own)

    def _log_width(self, which: np.ndarray) -> np.ndarray:
        lo, hi = self.lo[which], self.hi[which]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where((lo > 0) & np.isfinite(hi), np.log(hi / lo), np.inf)


def certified_radius(graph: Graph, x0: np.ndarray, true_label: int, targets: Sequence[int], norm: LpNorm,
                     box: Box = DEFAULT_BOX, rel_tol: float = 1e-3, r_max: float | None = None,
                     memory_budget: int = DEFAULT_MEMORY_BUDGET, optimize_seconds: float = 0.0,
                     wider: tuple[LpNorm, CertifiedRadii] | None = None) -> CertifiedRadii:
    """Per target, the largest radius whose ball (intersected with the box) CROWN certifies.

    The search brackets each target's radius and shrinks the bracket (secant steps on a log-log
    model of the bound, safeguarded by bisection; see `_Search`) until its relative width is at
    most `rel_tol`. Each probe radius is evaluated for all targets in one pass and serves every
    target whose bracket holds it; a probe inside a failed radius starts from that pass's bounds.
    The first probe is the first-order estimate g(x0) / ||grad g(x0)||_dual.

    Args:
        r_max: the largest radius to consider (default: the radius of a ball holding the whole box).
        optimize_seconds: after the search, spend about this long pushing the radii further with
            optimised ReLU lower slopes (`slopes.py`); the result's `unoptimized` keeps the radii
            before that, and `radii` is never below them.
        wider: radii already certified for the same input and targets in a norm whose ball contains this
            norm's ball of the same radius (Linf for L2 and L1, L2 for L1): each bracket starts there,
            and the first probe scales that radius by how much farther the first layer reaches in the
            wider norm (`wider_norm_scale`).
        Other arguments as for `margin_lower_bounds`.
    """
    problem = prepare(graph, x0, true_label, targets, box)
    if not 0 < rel_tol < 1:
        raise UsageError(f"rel_tol must lie in (0, 1), got {rel_tol}")
    if not (np.isfinite(optimize_seconds) and optimize_seconds >= 0):
        raise UsageError(f"optimize_seconds must be finite and non-negative, got {optimize_seconds}")
    top = covering_radius(problem, norm) if r_max is None else check_radius(r_max)
    margins = problem.margins_at_x0()
    grad_norm = np.linalg.norm(problem.margin_gradients(), ord=norm.dual, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(grad_norm > 0, margins / grad_norm, top)
    search = _Search(np.clip(np.nan_to_num(first, nan=top), 1e-9 * top, top), top, margins, grad_norm, rel_tol)
    if wider is not None:
        radii, lower = _checked_wider(wider, norm, problem)
        search.start_above(radii, lower, radii * wider_norm_scale(problem, norm, wider[0]))
    runs, evaluations, outer = [], 0, _OuterBounds()
    while search.active.any() and evaluations < _EVALUATIONS_PER_TARGET * len(margins) and top > 0:
        probe, own = search.next_probe()
        bp = problem.propagate(np.array([probe]), norm, memory_budget, **outer.around(probe))
        search.record(probe, _margin_lower(bp, problem.spec[None])[0], own)
        outer.add(probe, bp, search.hi)
        runs.append(tuple(bp.reports))
        evaluations += 1
    radii, lower, plain = search.lo.copy(), search.lower.copy(), None
    if optimize_seconds > 0:
        plain = radii.copy()
        extension = _SlopeExtension(problem, norm, memory_budget, search, max(rel_tol, _OPTIMIZED_REL_TOL), outer)
        evaluations += extension.run(optimize_seconds, runs)
        radii, lower = extension.lo, extension.lower
    if r_max is None:
        radii[(radii >= top) & (margins > 0)] = np.inf
    return CertifiedRadii(problem.targets, radii, lower, evaluations, merge_reports(runs), plain)


def wider_norm_scale(problem: Problem, norm: LpNorm, wider: LpNorm) -> float:
    """How many times farther the first layer's pre-activations reach over a ball of `wider` than over one of
    `norm` of the same radius: the median over its rows a of ||a||_wider.dual / ||a||_norm.dual.

    Where CROWN's bound fails depends first on how wide the first layer's bounds get, so a radius
    certified in the wider norm times this is where the search in `norm` looks first."""
    rows = problem.first_layer_rows()
    narrow = np.linalg.norm(rows, ord=norm.dual, axis=1)
    wide = np.linalg.norm(rows, ord=wider.dual, axis=1)
    reaching = narrow > 0
    return float(np.median(wide[reaching] / narrow[reaching])) if reaching.any() else 1.0


def _checked_wider(wider: tuple[LpNorm, CertifiedRadii], norm: LpNorm, problem: Problem
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The wider norm's radii (CROWN's own where slopes were optimised) and margin bounds, checked to serve."""
    wide_norm, known = wider
    if wide_norm.p < norm.p:
        raise UsageError(f"radii certified in {wide_norm.label} do not bound {norm.label} radii: its ball of equal "
                         "radius does not contain the other's")
    if not np.array_equal(np.asarray(known.targets), problem.targets):
        raise UsageError(f"the wider norm's radii are for targets {np.asarray(known.targets).tolist()}, "
                         f"not {problem.targets.tolist()}")
    # Optimised radii hold as well, but this search reports what CROWN's own slopes certify; the margin bound
    # at the optimised radius holds over the smaller ball too.
    return (known.radii if known.unoptimized is None else known.unoptimized), known.lower


class _SlopeExtension:
    """Pushes each target's certified radius past CROWN's with optimised ReLU lower slopes (`slopes.py`).

    Starting from the plain search's radius lo (certified), it probes lo (1 + step) with the
    optimised bound, doubling the step after a success and bisecting (geometrically) after a
    failure, until the bracket is below `rel_tol` or the time is spent. Every probe serves all
    targets whose bracket holds it, and the bound used is the larger of the plain and the
    optimised one, so a radius never falls.
    """

    def __init__(self, problem: Problem, norm: LpNorm, memory_budget: int, search: _Search, rel_tol: float,
                 outer: _OuterBounds):
        self.problem, self.norm, self.memory_budget, self.rel_tol = problem, norm, memory_budget, rel_tol
        self.outer = outer
        self.lo, self.lower = search.lo.copy(), search.lower.copy()
        self.hi = np.full_like(self.lo, np.inf)
        self.step = np.full_like(self.lo, 2 * rel_tol)
        self.active = (self.lo > 0) & np.isfinite(self.lo) & (self.lo < search.top)
        self.top = search.top

    def _probes(self) -> np.ndarray:
        grow = np.minimum(self.lo * (1 + self.step), self.top)
        return np.where(np.isfinite(self.hi), np.sqrt(self.lo * self.hi), grow)

    def run(self, seconds: float, runs: list) -> int:
        deadline = time.perf_counter() + seconds
        evaluations = 0
        while self.active.any() and time.perf_counter() < deadline:
            active = np.flatnonzero(self.active)
            with np.errstate(divide="ignore"):
                width = np.where(np.isfinite(self.hi[active]), np.log(self.hi[active] / self.lo[active]), np.inf)
            probe = float(self._probes()[active[np.argmax(width)]])
            bp = self.problem.propagate(np.array([probe]), self.norm, self.memory_budget, **self.outer.around(probe))
            left = max(0.0, deadline - time.perf_counter())
            # The optimisation's first step is CROWN's own bound, so only the interval bound is added.
            optimized = optimized_lower(bp, self.problem.spec[None], left)[0][0]
            interval = bp.interval_lower(len(bp.graph.nodes) - 1, self.problem.spec[None]).numpy()[0]
            self._record(probe, np.maximum(interval, optimized))
            self.outer.add(probe, bp, self.hi)
            runs.append(tuple(bp.reports))
            evaluations += 1
        return evaluations

    def _record(self, probe: float, bounds: np.ndarray) -> None:
        which = self.active & (self.lo < probe) & (probe < self.hi)
        up, down = which & (bounds > 0), which & ~(bounds > 0)
        self.lo[up], self.lower[up] = probe, bounds[up]
        self.step[up] *= 2
        self.hi[down] = probe
        self.active &= ~((self.hi <= self.lo * (1 + self.rel_tol)) | (self.lo >= self.top))
