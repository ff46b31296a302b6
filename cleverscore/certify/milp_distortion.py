"""The exact minimal targeted distortion in Linf or L1 (MIPVerify's formulation, Tjeng et al., ICLR 2019)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from cleverscore.certify.milp_bounds import preactivation_bounds
from cleverscore.certify.milp_model import Model, Outcome, Term
from cleverscore.certify.milp_network import Layers
from cleverscore.certify.milp_problem import (
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
    With `target_wins` the target must reach every other logit, not only the true one.
    `time_limit` (seconds) covers the whole call: LP tightening stops at half of it (the units
    left keep interval bounds) and HiGHS gets the rest.
    """
    layers, x0_flat = check_problem(net, x0, true_label, target, box)
    if norm.p not in (L1.p, LINF.p):
        raise UsageError(f"exact minimal distortion supports the L1 and Linf norms, not p={norm.p} "
                         "(an L2 objective would make the problem a mixed-integer QP)")
    if eps_max is not None and not eps_max >= 0.0:
        raise UsageError(f"eps_max must be >= 0, got {eps_max}")
    time_limit = check_time_limit(time_limit)
    lower, upper = region(x0_flat, box, eps_max)
    start = time.perf_counter()
    bounds = preactivation_bounds(layers, lower, upper, tighten, deadline=start + time_limit * BOUND_SHARE)
    bound_time = time.perf_counter() - start

    model = Model()
    x = model.add_vars(lower, upper, x0_flat.size)
    a = encode_forward(model, layers, bounds, x)[0]
    _require_target(model, layers[-1], a, true_label, target, target_wins)
    objective = _distortion_objective(model, x, x0_flat, lower, upper, norm)
    w_out, b_out = layers[-1]
    direction, offset = w_out[true_label] - w_out[target], b_out[true_label] - b_out[target]

    def adversarial(outcome: Outcome) -> bool:
        # The MILP's point must really reach the target, up to the solver's feasibility tolerance.
        if outcome.status != "optimal":
            return True
        last = last_hidden(layers, outcome.x[x])
        return float(direction @ last + offset) <= _TIE_TOLERANCE * (1.0 + np.abs(direction) @ np.abs(last))

    outcome = solve_checked(model, objective, time_left(start, time_limit), adversarial, "minimal distortion")
    return _distortion_result(outcome, x, x0, norm, eps_max, bound_time, model.num_integers)


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
    dist = model.add_vars(0.0, reach, n)
    model.add_rows([(ones, dist), (-ones, x)], -x0, np.inf)
    model.add_rows([(ones, dist), (ones, x)], x0, np.inf)
    return [(ones, dist)]


def _distortion_result(outcome: Outcome, x: np.ndarray, x0: np.ndarray, norm: LpNorm, eps_max: float | None,
                       bound_time: float, num_binaries: int) -> DistortionResult:
    beyond = np.inf if eps_max is None else float(eps_max)
    common = dict(norm=norm, solve_time=outcome.seconds, bound_time=bound_time, num_binaries=num_binaries)
    if outcome.status == "infeasible":
        return DistortionResult(None, "infeasible", beyond, np.inf, None, **common)
    point = None if outcome.x is None else outcome.x[x].reshape(np.shape(x0))
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
