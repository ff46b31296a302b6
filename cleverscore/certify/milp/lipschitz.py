"""The exact local Lipschitz constant of g = f_true - f_target: max ||grad g||_1 over an Linf ball.

Two exact formulations, chosen by `formulation`:

* 'lipmip' (Jordan & Dimakis, NeurIPS 2020): a binary per unstable ReLU, the backward pass
  q = d * y by big-M rows, and the L1 norm by one sign binary per input coordinate whose
  gradient sign the bounds leave open;
* 'patterns': with m <= PATTERN_MAX_UNSTABLE unstable ReLUs, every one of the 2^m gradients is
  listed with its norm (`patterns.py`). The best ones are checked in turn by an LP (does the
  ball meet the pattern's region?); the first one met is the answer. If the checks run out of
  time, a MILP picks among the rest by a convex combination lambda tied to the ReLU binaries
  (d = sum_p lambda_p bits_p), maximising sum_p lambda_p norm_p over the patterns that beat the
  best sampled gradient. No sign binaries are needed.

'auto' takes 'patterns' when it applies. On MNIST 784-32-32-10 and 784-64-64-10 MLPs it answered
in 0.1-7 s problems on which 'lipmip' ran 6 s to past a 60 s limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from cleverscore.certify.milp.bounds import Bound, count_unstable, gradient_bounds, preactivation_bounds
from cleverscore.certify.milp.model import Model, Outcome, Term
from cleverscore.certify.milp.network import Layers, activation_pattern, input_gradient, margin_gradient
from cleverscore.certify.milp.patterns import PATTERN_MAX_UNSTABLE, pattern_bits, pattern_norms, patterns_from_bits
from cleverscore.certify.milp.problem import (
    BOUND_SHARE,
    DEFAULT_BOX,
    DEFAULT_TIME_LIMIT,
    Switches,
    check_problem,
    check_time_limit,
    encode_forward,
    region,
    solve_checked,
    time_left,
)
from cleverscore.certify.milp.regions import centre, region_margin, region_search
from cleverscore.errors import UsageError

FORMULATIONS = ("auto", "patterns", "lipmip")
# Random points of the ball whose gradients give the pattern formulation its first lower bound.
_SAMPLES = 256
# The region walk that lifts the witness: moves per walk, pattern gradients, LPs and walks in all.
_WALK_MOVES, _WALK_PATTERNS, _WALK_LPS, _WALKS = 50, 1600, 200, 4
_WALK_SHARE = 0.2  # of the time limit, counted from the start of the call
# The best listed patterns get an LP check each (0.1-0.2 s at 784 inputs), until this many or
# until this share of the time limit is spent: on MNIST MLPs the answer was mostly the 1st
# pattern, at worst the 37th (6 s), which the pattern MILP over 46,000 columns could not reach
# in 60 s; once it was the 1180th, which the MILP found in 6 s.
_PRECHECKS = 100_000
_PRECHECK_SHARE = 0.2
# A pattern whose region misses the ball by less than this (Linf) counts as met, as HiGHS would.
_MET_TOLERANCE = 1e-9


@dataclass(frozen=True, eq=False)
class LipschitzResult:
    """The local Lipschitz constant of g = f_true - f_target (Linf ball, L1 gradient norm).

    status: 'optimal' or 'time_limit' (value is then the best region found, by the solver or
    among x0 and random points of the ball, and the constant lies in [lower_bound, upper_bound]).
    x is a point of the winning activation region and gradient is grad g there, so
    value == ||gradient||_1. region_margin is the Linf distance from x to the region's boundary:
    when it is > 0, g is differentiable at x and any autodiff gradient there (whatever its
    ReLU'(0)) equals `gradient`. bound_time covers the bounds and the listing of patterns,
    solve_time the solver (LP checks included); formulation is the one used ('affine' when no
    unit is unstable).
    """

    value: float
    status: str
    lower_bound: float
    upper_bound: float
    x: np.ndarray
    gradient: np.ndarray
    region_margin: float
    solve_time: float
    bound_time: float
    num_binaries: int
    formulation: str

    @property
    def exact(self) -> bool:
        return self.status == "optimal"


def local_lipschitz(net: Layers, x0: np.ndarray, true_label: int, target: int, radius: float,
                    box: tuple[float, float] = DEFAULT_BOX, time_limit: float = DEFAULT_TIME_LIMIT,
                    tighten: str = "lp", formulation: str = "auto") -> LipschitzResult:
    """The exact max over {||x - x0||_inf <= radius} ∩ box of ||grad (f_true - f_target)(x)||_1.

    ReLU'(0): where a pre-activation can be exactly 0 the MILP may take either derivative, so the
    maximum is over every activation pattern met on the closed ball; this is the Lipschitz constant
    for weights in general position (a pattern met only on a lower-dimensional set could exceed
    it, and `region_margin` <= 0 reports that case). The returned x is moved, by one LP, to the
    interior point of the winning pattern's region farthest from its boundaries.
    `time_limit` (seconds) covers the whole call: LP tightening stops at half of it, the LP checks
    of listed patterns at a fifth, and HiGHS gets the rest.
    """
    layers, x0_flat = check_problem(net, x0, true_label, target, box)
    if not radius >= 0.0:
        raise UsageError(f"the Lipschitz radius must be >= 0, got {radius}")
    if formulation not in FORMULATIONS:
        raise UsageError(f"unknown Lipschitz formulation {formulation!r}; choose one of {', '.join(FORMULATIONS)}")
    time_limit = check_time_limit(time_limit)
    lower, upper = region(x0_flat, box, radius)
    start = time.perf_counter()
    bounds = preactivation_bounds(layers, lower, upper, tighten, deadline=start + time_limit * BOUND_SHARE)
    unstable = count_unstable(bounds)
    if unstable == 0:
        return _affine_answer(layers, bounds, x0, true_label, target, time.perf_counter() - start)
    if formulation == "patterns" and unstable > PATTERN_MAX_UNSTABLE:
        raise UsageError(f"the pattern formulation lists 2^m gradients and takes at most {PATTERN_MAX_UNSTABLE} "
                         f"unstable ReLUs; this region has {unstable} (use formulation='lipmip')")
    problem = _Problem(layers, bounds, x0_flat, lower, upper, true_label, target)
    if formulation == "lipmip" or unstable > PATTERN_MAX_UNSTABLE:
        return _solve_lipmip(problem, time_limit, start)
    return _solve_patterns(problem, time_limit, start)


@dataclass(frozen=True, eq=False)
class _Problem:
    layers: Layers
    bounds: list[Bound]
    x0: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    true_label: int
    target: int

    def gradient(self, pattern: list[np.ndarray]) -> np.ndarray:
        return margin_gradient(self.layers, pattern, self.true_label, self.target)


def _affine_answer(layers: Layers, bounds: list[Bound], x0: np.ndarray, true_label: int, target: int,
                   bound_time: float) -> LipschitzResult:
    """Every unit is stable: g is affine on the region and its gradient is known."""
    pattern = [lo >= 0.0 for lo, _ in bounds]
    gradient = margin_gradient(layers, pattern, true_label, target)
    value = float(np.abs(gradient).sum())
    x0_flat = np.asarray(x0, dtype=np.float64).reshape(-1)
    return LipschitzResult(value, "optimal", value, value, np.array(x0, dtype=np.float64), gradient.reshape(np.shape(x0)),
                           region_margin(layers, pattern, x0_flat), 0.0, bound_time, 0, "affine")


# -- LipMIP ---------------------------------------------------------------------------------------


def _solve_lipmip(problem: _Problem, time_limit: float, start: float) -> LipschitzResult:
    layers, bounds = problem.layers, problem.bounds
    model = Model()
    x = model.add_vars(problem.lower, problem.upper, problem.x0.size)
    _, switches = encode_forward(model, layers, bounds, x)
    grad, (grad_lo, grad_hi) = _encode_backward(model, layers, bounds, switches, problem.true_label, problem.target)
    objective = _l1_objective(model, grad, grad_lo, grad_hi)
    cap = float(np.maximum(np.abs(grad_lo), np.abs(grad_hi)).sum())
    witness = _best_sample(problem, start + _WALK_SHARE * time_limit)
    bound_time = time.perf_counter() - start

    plausible = _plausible(problem, switches, witness.norm)
    outcome = solve_checked(model, objective, time_left(start, time_limit), plausible, "local Lipschitz")
    return _result(problem, outcome, switches, x, witness, cap, bound_time, model.num_integers, "lipmip")


def _encode_backward(model: Model, layers: Layers, bounds: list[Bound], switches: Switches, true_label: int,
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


def _l1_objective(model: Model, y: np.ndarray, y_lo: np.ndarray, y_hi: np.ndarray) -> list[Term]:
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


# -- patterns -------------------------------------------------------------------------------------


def _solve_patterns(problem: _Problem, time_limit: float, start: float) -> LipschitzResult:
    layers, bounds = problem.layers, problem.bounds
    bits, norms = pattern_norms(layers, bounds, problem.true_label, problem.target)
    witness = _best_sample(problem, start + _WALK_SHARE * time_limit)
    witness_bits, floor = pattern_bits(bounds, witness.pattern), witness.norm
    order = np.argsort(-norms, kind="stable")
    bound_time = time.perf_counter() - start
    # The best listed patterns first, one LP each: the first one the region meets is the answer,
    # and every one it does not meet is dropped from the MILP that settles the rest.
    check_start = time.perf_counter()
    refuted = []
    for index in order[:_PRECHECKS]:
        if time.perf_counter() - check_start > _PRECHECK_SHARE * time_limit:
            break
        if norms[index] <= floor:
            return _known_answer(problem, witness_bits, witness.point, time.perf_counter() - check_start, bound_time)
        pattern = patterns_from_bits(bounds, bits[index])
        point, margin = centre(layers, pattern, problem.lower, problem.upper)
        if point is not None and margin >= -_MET_TOLERANCE:
            return _known_answer(problem, bits[index], point, time.perf_counter() - check_start, bound_time)
        refuted.append(index)
    check_time = time.perf_counter() - check_start
    cap = float(norms[order[len(refuted)]])
    keep = norms > floor
    keep[refuted] = False
    # The realised pattern stays as a column so the MILP remains feasible (its infeasibility
    # would then be a solver fault).
    columns = np.vstack([bits[keep], witness_bits[None, :]]).astype(np.float64)
    values = np.append(norms[keep], floor)

    model = Model()
    x = model.add_vars(problem.lower, problem.upper, problem.x0.size)
    _, switches = encode_forward(model, layers, bounds, x)
    d = np.concatenate([binaries for _, binaries in switches])
    weight = model.add_vars(0.0, 1.0, values.size)
    model.add_rows([(np.ones((1, values.size)), weight)], 1.0, 1.0)
    model.add_rows([(np.ones(d.size), d), (-columns.T, weight)], 0.0, 0.0)

    plausible = _plausible(problem, switches, floor)
    # Presolve of this model (one column per listed pattern) ran minutes past the time limit on 12-10-10-3
    # networks; without it the same problems solved within the limit.
    outcome = solve_checked(model, [(-values, weight)], time_left(start, time_limit), plausible, "local Lipschitz",
                            presolve=False)
    outcome = replace(outcome, seconds=outcome.seconds + check_time)
    return _result(problem, outcome, switches, x, witness, cap, bound_time, model.num_integers, "patterns")


def _plausible(problem: _Problem, switches: Switches, floor: float) -> Callable[[Outcome], bool]:
    """The check of a solver answer: a point realising `floor` satisfies every row, so 'infeasible'
    or an optimum below `floor` is a solver fault."""
    def plausible(outcome: Outcome) -> bool:
        if outcome.status == "infeasible":
            return False
        if outcome.status != "optimal":
            return True
        value = float(np.abs(problem.gradient(_solution_pattern(outcome.x, problem.bounds, switches))).sum())
        return value >= floor * (1.0 - 1e-7)

    return plausible


def _known_answer(problem: _Problem, bits: np.ndarray, point: np.ndarray, solve_time: float,
                  bound_time: float) -> LipschitzResult:
    """The answer when no listed pattern with a larger norm is met: exact without a MILP."""
    pattern = patterns_from_bits(problem.bounds, bits)
    point, margin = _recentre(problem.layers, pattern, point, problem.lower, problem.upper)
    gradient = problem.gradient(pattern)
    value = float(np.abs(gradient).sum())
    shape = problem.x0.shape
    return LipschitzResult(value, "optimal", value, value, point.reshape(shape), gradient.reshape(shape), margin,
                           solve_time, bound_time, 0, "patterns")


@dataclass(frozen=True, eq=False)
class _Witness:
    """A point of the region with its activation pattern and gradient norm: a realised lower bound."""

    point: np.ndarray
    pattern: list[np.ndarray]
    norm: float


def _best_sample(problem: _Problem, deadline: float) -> _Witness:
    """The best gradient among x0, random points of the region (seeded) and a region walk from the best of them.

    The walk (regions.py) lifts the floor below which listed patterns are dropped; it starts no move
    after `deadline`.
    """
    rng = np.random.default_rng(0)
    points = np.vstack([problem.x0, rng.uniform(problem.lower, problem.upper, size=(_SAMPLES, problem.x0.size))])
    pattern, norms = _proven_patterns(problem, points)
    order = np.argsort(-norms, kind="stable")
    walk = region_search(problem.layers, problem.true_label, problem.target, problem.lower, problem.upper,
                         list(points[order]), 1.0, max_moves=_WALK_MOVES, max_patterns=_WALK_PATTERNS,
                         max_lps=_WALK_LPS, max_walks=_WALKS, deadline=deadline)
    walked, walked_norm = _proven_patterns(problem, walk.x[None, :])
    best = int(order[0])
    if walked_norm[0] > norms[best]:
        return _Witness(walk.x, [p[0] for p in walked], float(walked_norm[0]))
    return _Witness(points[best], [p[best] for p in pattern], float(norms[best]))


def _proven_patterns(problem: _Problem, points: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The points' activation patterns and gradient norms, stable units in the state their bounds prove."""
    sampled = activation_pattern(problem.layers, points)
    # Stable units take the state their bounds prove, as in the MILP, even at a pre-activation of 0.
    pattern = [np.where((lo >= 0.0) | (hi <= 0.0), lo >= 0.0, on) for on, (lo, hi) in zip(sampled, problem.bounds)]
    return pattern, np.abs(problem.gradient(pattern)).sum(axis=1)


# -- answers --------------------------------------------------------------------------------------


def _result(problem: _Problem, outcome: Outcome, switches: Switches, x: np.ndarray, witness: _Witness, cap: float,
            bound_time: float, num_binaries: int, formulation: str) -> LipschitzResult:
    """The answer from the solver's pattern (the witness's when it found none), with proven bounds.

    The witness's norm is realised; cap holds for every pattern, so [witness, min(cap, dual)] is
    always a valid bracket.
    """
    shape = problem.x0.shape
    upper = cap if outcome.dual_bound is None else min(cap, -outcome.dual_bound)
    if outcome.x is None:
        pattern, start = witness.pattern, witness.point
    else:
        pattern, start = _solution_pattern(outcome.x, problem.bounds, switches), outcome.x[x]
    gradient = problem.gradient(pattern)
    value = float(np.abs(gradient).sum())
    if value < witness.norm:
        pattern, start, gradient, value = witness.pattern, witness.point, problem.gradient(witness.pattern), witness.norm
    point, margin = _recentre(problem.layers, pattern, start, problem.lower, problem.upper)
    if margin > 0.0:
        proven = value
    else:
        at_point = input_gradient(problem.layers, point, problem.true_label, problem.target)
        proven = max(witness.norm, float(np.abs(at_point).sum()))
    return LipschitzResult(value, outcome.status, min(proven, upper), max(upper, value), point.reshape(shape),
                           gradient.reshape(shape), margin, outcome.seconds, bound_time, num_binaries, formulation)


def _solution_pattern(solution: np.ndarray, bounds: list[Bound], switches: Switches) -> list[np.ndarray]:
    """Each hidden layer's 0/1 derivative pattern at the MILP's solution (stable units from their bounds)."""
    pattern = []
    for (lo, _), (unstable, d) in zip(bounds, switches):
        on = lo >= 0.0
        on[unstable] = solution[d] > 0.5
        pattern.append(on)
    return pattern


def _recentre(layers: Layers, pattern: list[np.ndarray], x_start: np.ndarray, lower: np.ndarray,
              upper: np.ndarray) -> tuple[np.ndarray, float]:
    """The pattern's centre when it lies inside the region, else the solver's own point; with its margin."""
    point, margin = centre(layers, pattern, lower, upper)
    if point is not None and margin > 0.0:
        return point, margin
    return x_start, region_margin(layers, pattern, x_start)
