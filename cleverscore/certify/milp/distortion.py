"""The exact minimal targeted distortion in Linf or L1 (MIPVerify's formulation, Tjeng et al., ICLR 2019)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from cleverscore.certify.milp.bounds import Bound, preactivation_bounds
from cleverscore.certify.milp.model import Model, Outcome, Term, add_l1_distance
from cleverscore.certify.milp.network import Layers
from cleverscore.certify.milp.problem import (
    BOUND_SHARE,
    DEFAULT_BOX,
    DEFAULT_TIME_LIMIT,
    check_problem,
    check_time_limit,
    encode_forward,
    last_hidden,
    region,
    solve_checked,
    time_left,
)
from cleverscore.errors import UsageError
from cleverscore.norms import L1, LINF, LpNorm

# A point counts as reaching the target when f_target - f_true >= -1e-6 * (the logits' scale).
_TIE_TOLERANCE = 1e-6
# Up to _SHRINKS solves stop at their first incumbent, each followed by new bounds in the ball
# shrunk to it (fewer unstable units, smaller big-M constants); a ball that would shrink by less
# than _SHRINK_AT_LEAST is not worth new bounds. On MNIST MLPs this halved some solve times.
_SHRINKS = 2
_SHRINK_AT_LEAST = 0.05
_MIN_ROUND_SHARE = 0.01


@dataclass(frozen=True, eq=False)
class DistortionResult:
    """The minimal targeted distortion, or the solver's proven bracket for it.

    status: 'optimal' (value is the exact minimum); 'time_limit' (value is the best adversarial
    point found, None if none, and [lower_bound, upper_bound] brackets the minimum); 'infeasible'
    (no point in the region reaches the target: the minimum exceeds eps_max, or no point of the box
    is adversarial at all); 'beyond_eps_max' (L1 only: the region's best point lies farther than
    eps_max, so points outside the region may be closer and only the bracket is exact).
    bound_time is the time spent on pre-activation bounds, solve_time the solver's.
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


def minimal_distortion(net: Layers, x0: np.ndarray, true_label: int, target: int, norm: LpNorm = LINF,
                       box: tuple[float, float] = DEFAULT_BOX, time_limit: float = DEFAULT_TIME_LIMIT,
                       eps_max: float | None = None, tighten: str = "lp",
                       target_wins: bool = False) -> DistortionResult:
    """The exact minimal `norm` (Linf or L1) distortion of `x0` that makes f_target >= f_true.

    The search is over the box intersected with the Linf ball of radius `eps_max` around x0 (the
    whole box when None); a known adversarial distortion makes a good eps_max, since the big-M
    constants come from pre-activation bounds over that region (`tighten`: 'interval' or 'lp').
    The first solves stop at their first adversarial point, at distance v; the ball then shrinks
    to radius v (the minimum lies inside it, as ||.||_inf <= ||.||_1) and the bounds and the MILP
    are redone there, twice at most, before a last solve runs to the end.
    With `target_wins` the target must reach every other logit, not only the true one.
    `time_limit` (seconds) covers the whole call; each round's LP tightening stops at half of the
    time left (the units left keep interval bounds) and HiGHS gets the rest.
    """
    layers, x0_flat = check_problem(net, x0, true_label, target, box)
    if norm.p not in (L1.p, LINF.p):
        raise UsageError(f"exact minimal distortion supports the L1 and Linf norms, not p={norm.p} "
                         "(an L2 objective would make the problem a mixed-integer QP)")
    if eps_max is not None and not eps_max >= 0.0:
        raise UsageError(f"eps_max must be >= 0, got {eps_max}")
    time_limit = check_time_limit(time_limit)
    problem = _Problem(layers, x0_flat, box, norm, int(true_label), int(target), target_wins, tighten)
    deadline = time.perf_counter() + time_limit
    radius, shrinks_left = eps_max, _SHRINKS
    rounds: list[_Round] = []
    while True:
        budget = max(deadline - time.perf_counter(), _MIN_ROUND_SHARE * time_limit)
        reuse = rounds[-1].bounds if rounds and rounds[-1].radius == radius else None
        current = _solve_round(problem, radius, budget, stop_at_first=shrinks_left > 0, bounds=reuse,
                               known_point=bool(rounds))
        rounds.append(current)
        if current.outcome.status != "solution_limit":
            break
        if radius is None or current.value < radius * (1.0 - _SHRINK_AT_LEAST):
            radius, shrinks_left = current.value * (1.0 + 1e-9), shrinks_left - 1
        else:
            # New bounds would hardly be tighter: the next solve runs to the end in the same ball.
            shrinks_left = 0
    return _distortion_result(rounds, x0, norm, eps_max)


@dataclass(frozen=True, eq=False)
class _Problem:
    layers: Layers
    x0: np.ndarray
    box: tuple[float, float]
    norm: LpNorm
    true_label: int
    target: int
    target_wins: bool
    tighten: str


@dataclass(frozen=True, eq=False)
class _Round:
    """One solve over the ball of `radius` (None: the whole box); value is the point's distortion."""

    radius: float | None
    bounds: list[Bound]
    outcome: Outcome
    point: np.ndarray | None
    value: float | None
    bound_time: float
    num_binaries: int


def _solve_round(problem: _Problem, radius: float | None, budget: float, stop_at_first: bool,
                 bounds: list[Bound] | None, known_point: bool) -> _Round:
    """Bounds (unless given) and one MILP over the ball; `known_point`: an earlier incumbent lies in it."""
    layers, x0 = problem.layers, problem.x0
    lower, upper = region(x0, problem.box, radius)
    start = time.perf_counter()
    if bounds is None:
        bounds = preactivation_bounds(layers, lower, upper, problem.tighten, deadline=start + budget * BOUND_SHARE)
    bound_time = time.perf_counter() - start

    model = Model()
    x = model.add_vars(lower, upper, x0.size)
    a = encode_forward(model, layers, bounds, x)[0]
    _require_target(model, layers[-1], a, problem.true_label, problem.target, problem.target_wins)
    objective = _distortion_objective(model, x, x0, lower, upper, problem.norm)
    w_out, b_out = layers[-1]
    direction = w_out[problem.true_label] - w_out[problem.target]
    offset = b_out[problem.true_label] - b_out[problem.target]

    def adversarial(outcome: Outcome) -> bool:
        # The MILP's point must really reach the target, up to the solver's feasibility tolerance,
        # and a ball shrunk around an earlier incumbent cannot be empty.
        if outcome.status == "infeasible":
            return not known_point
        if outcome.status not in ("optimal", "solution_limit"):
            return True
        last = last_hidden(layers, outcome.x[x])
        return float(direction @ last + offset) <= _TIE_TOLERANCE * (1.0 + np.abs(direction) @ np.abs(last))

    outcome = solve_checked(model, objective, time_left(start, budget), adversarial, "minimal distortion",
                            stop_at_first=stop_at_first)
    point = None if outcome.x is None else outcome.x[x]
    value = None if point is None else _distance(point, x0, problem.norm)
    return _Round(radius, bounds, outcome, point, value, bound_time, model.num_integers)


def _require_target(model: Model, last: tuple[np.ndarray, np.ndarray], a: np.ndarray, true_label: int,
                    target: int, target_wins: bool) -> None:
    """Rows f_target >= f_j for j = true label (or every other class with `target_wins`)."""
    w, b = last
    others = [j for j in range(w.shape[0]) if j != target] if target_wins else [true_label]
    rows = w[target][None, :] - w[others]
    model.add_rows([(rows, a)], b[others] - b[target], np.inf)


def _distortion_objective(model: Model, x: np.ndarray, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                          norm: LpNorm) -> list[Term]:
    n = x0.size
    ones = np.ones(n)
    reach = np.maximum(x0 - lower, upper - x0)
    if norm.p == LINF.p:
        eps = model.add_vars(0.0, float(reach.max(initial=0.0)), 1)
        spread = np.full(n, eps[0])
        model.add_rows([(ones, x), (-ones, spread)], -np.inf, x0)
        model.add_rows([(ones, x), (ones, spread)], x0, np.inf)
        return [(np.ones(1), eps)]
    return [(ones, add_l1_distance(model, x, x0, lower, upper))]


def _distortion_result(rounds: list[_Round], x0: np.ndarray, norm: LpNorm, eps_max: float | None) -> DistortionResult:
    """The answer: the best point of all rounds, with the last round's proven lower bound."""
    last = rounds[-1]
    beyond = np.inf if eps_max is None else float(eps_max)
    common = dict(norm=norm, solve_time=sum(r.outcome.seconds for r in rounds),
                  bound_time=sum(r.bound_time for r in rounds), num_binaries=last.num_binaries)
    if last.outcome.status == "infeasible":
        return DistortionResult(None, "infeasible", beyond, np.inf, None, **common)
    found = [r for r in rounds if r.point is not None]
    best = min(found, key=lambda r: r.value) if found else None
    value = None if best is None else best.value
    point = None if best is None else best.point.reshape(np.shape(x0))
    dual = 0.0 if last.outcome.dual_bound is None else max(0.0, last.outcome.dual_bound)
    # Points outside the last ball are at least its radius away (in Linf, hence in L1 too).
    outside = beyond if last.radius is None else float(last.radius)
    lower = min(dual, outside) if value is None else min(dual, value, outside)
    upper = np.inf if value is None else value
    status = last.outcome.status
    if status == "optimal" and norm.p == L1.p and value > outside * (1.0 + _TIE_TOLERANCE):
        # The region's optimum is the global one only if no point outside can be closer (always so in
        # Linf). An attack as close as eps* puts the optimum on the ball's edge, where the solver's
        # tolerances may leave it a hair outside: that is still the global optimum.
        status = "beyond_eps_max"
    return DistortionResult(value, status, lower, upper, point, **common)


def _distance(x: np.ndarray, x0: np.ndarray, norm: LpNorm) -> float:
    diff = (np.asarray(x) - np.asarray(x0)).reshape(-1)
    return float(np.abs(diff).max(initial=0.0) if norm.p == LINF.p else np.abs(diff).sum())
