"""Exact robustness answers for small ReLU networks by mixed-integer programming (HiGHS via scipy).

Two problems, both over a feed-forward network of dense layers with ReLUs (see `milp_network`):

* `minimal_distortion`: the smallest Linf or L1 perturbation that makes the target logit reach
  the true one (MIPVerify's formulation, Tjeng et al., ICLR 2019);
* `local_lipschitz`: the largest L1 norm of the gradient of g = f_true - f_target over an Linf ball
  (LipMIP's formulation, Jordan & Dimakis, NeurIPS 2020), the exact constant that CLEVER's Linf
  score estimates by sampling.

Each unstable ReLU (its pre-activation bounds straddle 0) costs one binary; stable units are
linear. Both problems stop at a time limit and then report the solver's proven bounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from cleverscore.certify.milp_bounds import Bound, count_unstable, gradient_bounds, preactivation_bounds
from cleverscore.certify.milp_model import Model, Outcome, add_relu_layer
from cleverscore.certify.milp_network import (
    MAX_HIDDEN_RELUS,
    Layers,
    activation_pattern,
    check_network,
    input_gradient,
    logits,
    margin_gradient,
    relu_network_from_keras,
)
from cleverscore.errors import CleverError, UsageError
from cleverscore.norms import L1, LINF, LpNorm

__all__ = [
    "MAX_HIDDEN_RELUS",
    "DistortionResult",
    "LipschitzResult",
    "local_lipschitz",
    "minimal_distortion",
    "relu_network_from_keras",
]

DEFAULT_BOX = (-0.5, 0.5)
DEFAULT_TIME_LIMIT = 60.0
# HiGHS stops at a relative gap of 1e-4 by default; "exact" answers ask for a hundred times less.
MIP_REL_GAP = 1e-6
# A point counts as reaching the target when f_target - f_true >= -1e-6 * (the logits' scale).
_TIE_TOLERANCE = 1e-6
_RETRY_SEED = 7


@dataclass(frozen=True, eq=False)
class DistortionResult:
    """The minimal targeted distortion, or the solver's proven bracket for it.

    status: 'optimal' (value is the exact minimum); 'time_limit' (value is the best adversarial
    point found, None if none, and [lower_bound, upper_bound] brackets the minimum); 'infeasible'
    (no point in the region reaches the target: the minimum exceeds eps_max, or no point of the box
    is adversarial at all); 'beyond_eps_max' (L1 only: the region's best point lies farther than
    eps_max, so points outside the region may be closer and only the bracket is exact).
    """

    value: float | None
    status: str
    lower_bound: float
    upper_bound: float
    x: np.ndarray | None
    norm: LpNorm
    solve_time: float
    bound_time: float
    num_binaries: int

    @property
    def exact(self) -> bool:
        return self.status == "optimal"


@dataclass(frozen=True, eq=False)
class LipschitzResult:
    """The local Lipschitz constant of g = f_true - f_target (Linf ball, L1 gradient norm).

    status: 'optimal' or 'time_limit' (value is then the best region found, None if none, and the
    constant lies in [lower_bound, upper_bound]). x is a point of the winning activation region
    and gradient is grad g there, so value == ||gradient||_1. region_margin is the Linf distance
    from x to the region's boundary: when it is > 0, g is differentiable at x and any autodiff
    gradient there (whatever its ReLU'(0)) equals `gradient`.
    """

    value: float | None
    status: str
    lower_bound: float
    upper_bound: float
    x: np.ndarray | None
    gradient: np.ndarray | None
    region_margin: float
    solve_time: float
    bound_time: float
    num_binaries: int

    @property
    def exact(self) -> bool:
        return self.status == "optimal"


def minimal_distortion(net: Layers, x0: np.ndarray, true_label: int, target: int, norm: LpNorm = LINF,
                       box: tuple[float, float] = DEFAULT_BOX, time_limit: float = DEFAULT_TIME_LIMIT,
                       eps_max: float | None = None, tighten: str = "lp",
                       target_wins: bool = False) -> DistortionResult:
    """The exact minimal `norm` (Linf or L1) distortion of `x0` that makes f_target >= f_true.

    The search is over the box intersected with the Linf ball of radius `eps_max` around x0 (the
    whole box when None); a known adversarial distortion makes a good eps_max, since the big-M
    constants come from pre-activation bounds over that region (`tighten`: 'interval' or 'lp').
    With `target_wins` the target must reach every other logit, not only the true one.
    """
    layers, x0_flat = _check_problem(net, x0, true_label, target, box)
    if norm.p not in (L1.p, LINF.p):
        raise UsageError(f"exact minimal distortion supports the L1 and Linf norms, not p={norm.p} "
                         "(an L2 objective would make the problem a mixed-integer QP)")
    if eps_max is not None and not eps_max >= 0.0:
        raise UsageError(f"eps_max must be >= 0, got {eps_max}")
    lower, upper = _region(x0_flat, box, eps_max)
    start = time.perf_counter()
    bounds = preactivation_bounds(layers, lower, upper, tighten)
    bound_time = time.perf_counter() - start

    model = Model()
    x = model.add_vars(lower, upper, x0_flat.size)
    a = _encode_forward(model, layers, bounds, x)[0]
    _require_target(model, layers[-1], a, true_label, target, target_wins)
    objective = _distortion_objective(model, x, x0_flat, lower, upper, norm)
    w_out, b_out = layers[-1]
    direction, offset = w_out[true_label] - w_out[target], b_out[true_label] - b_out[target]

    def adversarial(outcome: Outcome) -> bool:
        # The MILP's point must really reach the target, up to the solver's feasibility tolerance.
        if outcome.status != "optimal":
            return True
        last = _last_hidden(layers, outcome.x[x])
        return float(direction @ last + offset) <= _TIE_TOLERANCE * (1.0 + np.abs(direction) @ np.abs(last))

    outcome = _solve_checked(model, objective, _check_time_limit(time_limit), adversarial, "minimal distortion")
    return _distortion_result(outcome, x, x0, norm, eps_max, bound_time, model.num_integers)


def local_lipschitz(net: Layers, x0: np.ndarray, true_label: int, target: int, radius: float,
                    box: tuple[float, float] = DEFAULT_BOX, time_limit: float = DEFAULT_TIME_LIMIT,
                    tighten: str = "lp") -> LipschitzResult:
    """The exact max over {||x - x0||_inf <= radius} ∩ box of ||grad (f_true - f_target)(x)||_1.

    ReLU'(0): where a pre-activation can be exactly 0 the MILP may take either derivative, so the
    maximum is over every activation pattern met on the closed ball; this is the Lipschitz constant
    for weights in general position (a pattern met only on a lower-dimensional set could exceed
    it, and `region_margin` <= 0 reports that case). The returned x is moved, by one LP, to the
    interior point of the winning pattern's region farthest from its boundaries.
    """
    layers, x0_flat = _check_problem(net, x0, true_label, target, box)
    if not radius >= 0.0:
        raise UsageError(f"the Lipschitz radius must be >= 0, got {radius}")
    lower, upper = _region(x0_flat, box, radius)
    start = time.perf_counter()
    bounds = preactivation_bounds(layers, lower, upper, tighten)
    bound_time = time.perf_counter() - start

    if count_unstable(bounds) == 0:
        # Every unit is stable: g is affine on the region and its gradient is known.
        pattern = [lo >= 0.0 for lo, _ in bounds]
        gradient = margin_gradient(layers, pattern, true_label, target)
        value = float(np.abs(gradient).sum())
        return LipschitzResult(value, "optimal", value, value, x0.copy(), gradient.reshape(x0.shape),
                               _region_margin(layers, pattern, x0_flat), 0.0, bound_time, 0)
    model = Model()
    x = model.add_vars(lower, upper, x0_flat.size)
    _, switches = _encode_forward(model, layers, bounds, x)
    grad, grad_bounds = _encode_backward(model, layers, bounds, switches, true_label, target)
    objective = _l1_objective(model, grad, *grad_bounds)
    at_x0 = float(np.abs(input_gradient(layers, x0_flat, true_label, target)).sum())

    def plausible(outcome: Outcome) -> bool:
        # x0 satisfies every row, so 'infeasible' or an optimum below x0's own gradient norm is a solver fault.
        if outcome.status == "infeasible":
            return False
        if outcome.status != "optimal":
            return True
        pattern = _solution_pattern(outcome.x, bounds, switches)
        value = float(np.abs(margin_gradient(layers, pattern, true_label, target)).sum())
        return value >= at_x0 * (1.0 - 1e-7)

    outcome = _solve_checked(model, objective, _check_time_limit(time_limit), plausible, "local Lipschitz")
    return _lipschitz_result(outcome, layers, bounds, switches, x, x0, lower, upper, true_label, target,
                             float(np.maximum(np.abs(grad_bounds[0]), np.abs(grad_bounds[1])).sum()), bound_time,
                             model.num_integers)


def _solve_checked(model: Model, objective: list[tuple[np.ndarray, np.ndarray]], time_limit: float,
                   plausible: Callable[[Outcome], bool], problem: str) -> Outcome:
    """Solve; if the answer fails a cheap check, solve once more with another random seed.

    HiGHS 1.12 occasionally cuts off feasible points of these big-M models (wrong optima, false
    infeasibility); a different seed takes another path through its heuristics and cuts.
    """
    outcome = model.solve(objective, time_limit=time_limit, mip_rel_gap=MIP_REL_GAP)
    if plausible(outcome):
        return outcome
    left = time_limit - outcome.seconds
    if left > 0.0:
        retry = model.solve(objective, time_limit=left, mip_rel_gap=MIP_REL_GAP, seed=_RETRY_SEED)
        if plausible(retry):
            return replace(retry, seconds=outcome.seconds + retry.seconds)
    raise CleverError(f"the MILP solver (HiGHS) returned an inconsistent {problem} answer ({outcome.status}) "
                      "twice; try tighten='lp' or another time limit")


def _last_hidden(layers: Layers, x: np.ndarray) -> np.ndarray:
    a = x
    for w, b in layers[:-1]:
        a = np.maximum(w @ a + b, 0.0)
    return a


# -- checks and regions -------------------------------------------------------------------------


def _check_problem(net: Layers, x0: np.ndarray, true_label: int, target: int,
                   box: tuple[float, float]) -> tuple[Layers, np.ndarray]:
    layers = check_network(net)
    x0_flat = np.asarray(x0, dtype=np.float64).reshape(-1)
    if x0_flat.size != layers[0][0].shape[1]:
        raise UsageError(f"the image has {x0_flat.size} values but the network takes {layers[0][0].shape[1]} inputs")
    classes = layers[-1][0].shape[0]
    for name, label in (("true label", true_label), ("target", target)):
        if not 0 <= int(label) < classes:
            raise UsageError(f"the {name} {label} is not a class of this {classes}-class network")
    if int(true_label) == int(target):
        raise UsageError(f"the target must differ from the true label (both are {target})")
    lo, hi = _box_arrays(box, x0_flat.size)
    if np.any(x0_flat < lo) or np.any(x0_flat > hi):
        raise UsageError(f"the image lies outside the input box [{np.min(lo)}, {np.max(hi)}]")
    return layers, x0_flat


def _box_arrays(box: tuple[float, float], size: int) -> tuple[np.ndarray, np.ndarray]:
    lo = np.broadcast_to(np.asarray(box[0], dtype=np.float64).reshape(-1), (size,))
    hi = np.broadcast_to(np.asarray(box[1], dtype=np.float64).reshape(-1), (size,))
    if np.any(lo > hi):
        raise UsageError("the input box has a lower end above its upper end")
    return lo, hi


def _region(x0: np.ndarray, box: tuple[float, float], radius: float | None) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = _box_arrays(box, x0.size)
    if radius is None:
        return lo.copy(), hi.copy()
    return np.maximum(lo, x0 - radius), np.minimum(hi, x0 + radius)


def _check_time_limit(time_limit: float) -> float:
    if not time_limit > 0.0:
        raise UsageError(f"the time limit must be > 0 seconds, got {time_limit}")
    return float(time_limit)


# -- encodings ----------------------------------------------------------------------------------


def _encode_forward(model: Model, layers: Layers, bounds: list[Bound],
                    x: np.ndarray) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The hidden layers' big-M encoding; returns the last hidden activations and each layer's binaries."""
    a = x
    switches = []
    for (w, b), (lo, hi) in zip(layers[:-1], bounds):
        a, unstable, d = add_relu_layer(model, w, b, a, lo, hi)
        switches.append((unstable, d))
    return a, switches


def _require_target(model: Model, last: tuple[np.ndarray, np.ndarray], a: np.ndarray, true_label: int,
                    target: int, target_wins: bool) -> None:
    """Rows f_target >= f_j for j = true label (or every other class with `target_wins`)."""
    w, b = last
    others = [j for j in range(w.shape[0]) if j != target] if target_wins else [true_label]
    rows = w[target][None, :] - w[others]
    model.add_rows([(rows, a)], b[others] - b[target], np.inf)


def _distortion_objective(model: Model, x: np.ndarray, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                          norm: LpNorm) -> list[tuple[np.ndarray, np.ndarray]]:
    n = x0.size
    ones = np.ones(n)
    reach = np.maximum(x0 - lower, upper - x0)
    if norm.p == LINF.p:
        eps = model.add_vars(0.0, float(reach.max(initial=0.0)), 1)
        spread = np.full(n, eps[0])
        model.add_rows([(ones, x), (-ones, spread)], -np.inf, x0)
        model.add_rows([(ones, x), (ones, spread)], x0, np.inf)
        return [(np.ones(1), eps)]
    dist = model.add_vars(0.0, reach, n)
    model.add_rows([(ones, dist), (-ones, x)], -x0, np.inf)
    model.add_rows([(ones, dist), (ones, x)], x0, np.inf)
    return [(ones, dist)]


def _encode_backward(model: Model, layers: Layers, bounds: list[Bound],
                     switches: list[tuple[np.ndarray, np.ndarray]], true_label: int,
                     target: int) -> tuple[np.ndarray, Bound]:
    """Variables y = grad g by the backward pass; returns their indices and bounds.

    Through hidden layer k, q = d * y is a product of a binary and a bounded continuous value,
    encoded exactly by four big-M rows (LipMIP's "switch" units). Through the last hidden layer
    y is the constant w_true - w_target, so q = y * d is linear and needs no big-M.
    """
    y_bounds = gradient_bounds(layers, bounds, true_label, target)
    y: np.ndarray | None = None
    for step, k in enumerate(range(len(layers) - 2, -1, -1)):
        y_lo, y_hi = y_bounds[step]
        q = _encode_switch(model, y, y_lo, y_hi, bounds[k], switches[k])
        w = layers[k][0]
        y_lo, y_hi = y_bounds[step + 1]
        y = model.add_vars(y_lo, y_hi, w.shape[1])
        model.add_rows([(np.ones(w.shape[1]), y), (-w.T, q)], 0.0, 0.0)
    return y, y_bounds[-1]


def _encode_switch(model: Model, y: np.ndarray | None, y_lo: np.ndarray, y_hi: np.ndarray, bound: Bound,
                   switch: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """q = d * y through one hidden layer; `y` None means y is the constant y_lo (= y_hi)."""
    pre_lo, pre_hi = bound
    unstable, d = switch
    on = pre_lo >= 0.0
    off = pre_hi <= 0.0
    q_lo = np.where(on, y_lo, np.where(off, 0.0, np.minimum(y_lo, 0.0)))
    q_hi = np.where(on, y_hi, np.where(off, 0.0, np.maximum(y_hi, 0.0)))
    q = model.add_vars(q_lo, q_hi, q_lo.size)
    active = np.flatnonzero(on)
    ones = np.ones(unstable.size)
    if y is None:
        if active.size:
            model.add_rows([(np.ones(active.size), q[active])], y_lo[active], y_lo[active])
        if unstable.size:
            model.add_rows([(ones, q[unstable]), (-y_lo[unstable], d)], 0.0, 0.0)
        return q
    if active.size:
        model.add_rows([(np.ones(active.size), q[active]), (-np.ones(active.size), y[active])], 0.0, 0.0)
    if unstable.size:
        lo, hi = q_lo[unstable], q_hi[unstable]
        qu, yu = q[unstable], y[unstable]
        model.add_rows([(ones, qu), (-ones, yu), (-lo, d)], -np.inf, -lo)
        model.add_rows([(ones, qu), (-ones, yu), (-hi, d)], -hi, np.inf)
        model.add_rows([(ones, qu), (-lo, d)], 0.0, np.inf)
        model.add_rows([(ones, qu), (-hi, d)], -np.inf, 0.0)
    return q


def _l1_objective(model: Model, y: np.ndarray, y_lo: np.ndarray, y_hi: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Terms whose minimum is -||y||_1: a sign binary for each coordinate that can take both signs."""
    objective = [(-np.where(y_lo >= 0.0, 1.0, 0.0) + np.where(y_hi <= 0.0, 1.0, 0.0), y)]
    both = np.flatnonzero((y_lo < 0.0) & (y_hi > 0.0))
    if both.size:
        k = both.size
        lo, hi = y_lo[both], y_hi[both]
        size = model.add_vars(0.0, np.maximum(-lo, hi), k)
        positive = model.add_vars(0.0, 1.0, k, integer=True)
        ones = np.ones(k)
        # s <= y + 2|lo| (1 - sign) and s <= -y + 2 hi sign: s = |y| at the optimum's sign choice.
        model.add_rows([(ones, size), (-ones, y[both]), (-2.0 * lo, positive)], -np.inf, -2.0 * lo)
        model.add_rows([(ones, size), (ones, y[both]), (-2.0 * hi, positive)], -np.inf, 0.0)
        objective.append((-ones, size))
    return objective


# -- results ------------------------------------------------------------------------------------


def _distortion_result(outcome: Outcome, x: np.ndarray, x0: np.ndarray, norm: LpNorm, eps_max: float | None,
                       bound_time: float, num_binaries: int) -> DistortionResult:
    beyond = np.inf if eps_max is None else float(eps_max)
    common = dict(norm=norm, solve_time=outcome.seconds, bound_time=bound_time, num_binaries=num_binaries)
    if outcome.status == "infeasible":
        return DistortionResult(None, "infeasible", beyond, np.inf, None, **common)
    point = None if outcome.x is None else outcome.x[x].reshape(x0.shape)
    value = None if point is None else _distance(point, x0, norm)
    dual = 0.0 if outcome.dual_bound is None else max(0.0, outcome.dual_bound)
    lower = min(dual, beyond) if value is None else min(dual, value, beyond)
    upper = np.inf if value is None else value
    status = outcome.status
    if status == "optimal":
        # Points outside the region are at least eps_max away, so the region's optimum is the
        # global one only if it is no farther than that (always so in Linf).
        status = "optimal" if value <= beyond else "beyond_eps_max"
    return DistortionResult(value, status, lower, upper, point, **common)


def _distance(x: np.ndarray, x0: np.ndarray, norm: LpNorm) -> float:
    diff = (np.asarray(x) - np.asarray(x0)).reshape(-1)
    return float(np.abs(diff).max(initial=0.0) if norm.p == LINF.p else np.abs(diff).sum())


def _lipschitz_result(outcome: Outcome, layers: Layers, bounds: list[Bound],
                      switches: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray, x0: np.ndarray,
                      lower: np.ndarray, upper: np.ndarray, true_label: int, target: int, interval_bound: float,
                      bound_time: float, num_binaries: int) -> LipschitzResult:
    x0_flat = np.asarray(x0, dtype=np.float64).reshape(-1)
    at_x0 = float(np.abs(input_gradient(layers, x0_flat, true_label, target)).sum())
    dual = interval_bound if outcome.dual_bound is None else min(interval_bound, -outcome.dual_bound)
    common = dict(solve_time=outcome.seconds, bound_time=bound_time, num_binaries=num_binaries)
    if outcome.x is None:
        return LipschitzResult(None, outcome.status, at_x0, dual, None, None, -np.inf, **common)
    pattern = _solution_pattern(outcome.x, bounds, switches)
    gradient = margin_gradient(layers, pattern, true_label, target)
    value = float(np.abs(gradient).sum())
    point, margin = _recentre(layers, pattern, outcome.x[x], lower, upper)
    if margin > 0.0:
        proven = value
    else:
        proven = max(at_x0, float(np.abs(input_gradient(layers, point, true_label, target)).sum()))
    return LipschitzResult(value, outcome.status, min(proven, dual), max(dual, value), point.reshape(x0.shape),
                           gradient.reshape(x0.shape), margin, **common)


def _solution_pattern(solution: np.ndarray, bounds: list[Bound],
                      switches: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Each hidden layer's 0/1 derivative pattern at the MILP's solution (stable units from their bounds)."""
    pattern = []
    for (lo, _), (unstable, d) in zip(bounds, switches):
        on = lo >= 0.0
        on[unstable] = solution[d] > 0.5
        pattern.append(on)
    return pattern


def _pattern_affine_maps(layers: Layers, pattern: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each hidden layer's pre-activation as an affine map of the input while `pattern` holds."""
    maps = []
    a_map, a_off = np.eye(layers[0][0].shape[1]), np.zeros(layers[0][0].shape[1])
    for (w, b), on in zip(layers[:-1], pattern):
        z_map, z_off = w @ a_map, w @ a_off + b
        maps.append((z_map, z_off))
        a_map, a_off = z_map * on[:, None], z_off * on
    return maps


def _recentre(layers: Layers, pattern: list[np.ndarray], x_start: np.ndarray, lower: np.ndarray,
              upper: np.ndarray) -> tuple[np.ndarray, float]:
    """The point of the region farthest (in Linf) from the pattern's switching boundaries, by one LP.

    Returns it with its margin t: every unit's pre-activation has the pattern's sign and lies at
    least t (in Linf distance) from 0, so g is differentiable there when t > 0.
    """
    rows, offsets = [], []
    for (z_map, z_off), on in zip(_pattern_affine_maps(layers, pattern), pattern):
        sign = np.where(on, 1.0, -1.0)
        scale = np.abs(z_map).sum(axis=1)
        keep = scale > 0.0
        rows.append(sign[keep, None] * z_map[keep] / scale[keep, None])
        offsets.append(sign[keep] * z_off[keep] / scale[keep])
    matrix, offset = np.concatenate(rows), np.concatenate(offsets)
    if matrix.shape[0] == 0:
        return x_start, np.inf
    model = Model()
    x = model.add_vars(lower, upper, lower.size)
    t = model.add_vars(-np.inf, float(np.max(upper - lower, initial=0.0)) + 1.0, 1)
    model.add_rows([(matrix, x), (-np.ones(matrix.shape[0]), np.full(matrix.shape[0], t[0]))], -offset, np.inf)
    outcome = model.solve([(-np.ones(1), t)])
    if outcome.x is None:
        return x_start, float(np.min(matrix @ x_start + offset))
    point = outcome.x[x]
    margin = float(np.min(matrix @ point + offset))
    if margin <= 0.0:
        return x_start, float(np.min(matrix @ x_start + offset))
    return point, margin


def _region_margin(layers: Layers, pattern: list[np.ndarray], x: np.ndarray) -> float:
    values = []
    for (z_map, z_off), on in zip(_pattern_affine_maps(layers, pattern), pattern):
        scale = np.abs(z_map).sum(axis=1)
        keep = scale > 0.0
        values.append(np.where(on, 1.0, -1.0)[keep] * (z_map[keep] @ x + z_off[keep]) / scale[keep])
    flat = np.concatenate(values) if values else np.zeros(0)
    return float(flat.min(initial=np.inf))


def margin_at(net: Layers, x: np.ndarray, true_label: int, target: int) -> float:
    """g(x) = f_true(x) - f_target(x): negative or zero where x reaches the target."""
    z = logits(check_network(net), np.asarray(x, dtype=np.float64).reshape(-1))
    return float(z[true_label] - z[target])


def pattern_at(net: Layers, x: np.ndarray) -> list[np.ndarray]:
    """The activation pattern (ReLU'(0) = 0) at x, for checks of a Lipschitz result's region."""
    return activation_pattern(check_network(net), np.asarray(x, dtype=np.float64).reshape(-1))
