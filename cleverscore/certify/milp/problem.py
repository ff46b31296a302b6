"""What both MILP problems share: argument checks, the search region, the forward encoding and a checked solve."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from cleverscore.certify.milp.bounds import Bound
from cleverscore.certify.milp.model import Model, Outcome, Term, add_relu_layer
from cleverscore.certify.milp.network import Layers, check_network
from cleverscore.errors import CleverError, UsageError

DEFAULT_BOX = (-0.5, 0.5)
DEFAULT_TIME_LIMIT = 60.0
# HiGHS stops at a relative gap of 1e-4 by default; "exact" answers ask for a hundred times less.
MIP_REL_GAP = 1e-6
_RETRY_SEED = 7
# The time limit covers the whole problem: bound tightening may use up to this share of it, and
# the solver gets what is left (never less than 1% of the limit).
BOUND_SHARE = 0.5
_MIN_SOLVER_SHARE = 0.01
# The LP relaxation that stands in for a missing dual bound gets this share of the time limit.
_RELAXATION_SHARE = 0.1

Switches = list[tuple[np.ndarray, np.ndarray]]


def check_problem(net: Layers, x0: np.ndarray, true_label: int, target: int,
                  box: tuple[float, float]) -> tuple[Layers, np.ndarray]:
    """The checked layers and the flat image; one-line UsageErrors for bad labels, shapes or boxes."""
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
    lo, hi = box_arrays(box, x0_flat.size)
    if np.any(x0_flat < lo) or np.any(x0_flat > hi):
        raise UsageError(f"the image lies outside the input box [{np.min(lo)}, {np.max(hi)}]")
    return layers, x0_flat


def box_arrays(box: tuple[float, float], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-coordinate ends of the input box (scalars or arrays of the image's size)."""
    lo = np.broadcast_to(np.asarray(box[0], dtype=np.float64).reshape(-1), (size,))
    hi = np.broadcast_to(np.asarray(box[1], dtype=np.float64).reshape(-1), (size,))
    if np.any(lo > hi):
        raise UsageError("the input box has a lower end above its upper end")
    return lo, hi


def region(x0: np.ndarray, box: tuple[float, float], radius: float | None) -> tuple[np.ndarray, np.ndarray]:
    """The box intersected with the Linf ball of `radius` around x0 (the whole box when None)."""
    lo, hi = box_arrays(box, x0.size)
    if radius is None:
        return lo.copy(), hi.copy()
    return np.maximum(lo, x0 - radius), np.minimum(hi, x0 + radius)


def check_time_limit(time_limit: float) -> float:
    if not time_limit > 0.0:
        raise UsageError(f"the time limit must be > 0 seconds, got {time_limit}")
    return float(time_limit)


def time_left(start: float, time_limit: float) -> float:
    """Seconds left of `time_limit` since `start` (a `time.perf_counter()` value), for the solver."""
    return max(time_limit - (time.perf_counter() - start), _MIN_SOLVER_SHARE * time_limit)


def encode_forward(model: Model, layers: Layers, bounds: list[Bound], x: np.ndarray) -> tuple[np.ndarray, Switches]:
    """The hidden layers' big-M encoding; returns the last hidden activations and each layer's
    (unstable positions, binaries)."""
    a = x
    switches = []
    for (w, b), (lo, hi) in zip(layers[:-1], bounds):
        a, unstable, d = add_relu_layer(model, w, b, a, lo, hi)
        switches.append((unstable, d))
    return a, switches


def last_hidden(layers: Layers, x: np.ndarray) -> np.ndarray:
    """The last hidden layer's activations at flat input x (the input itself for an affine network)."""
    a = x
    for w, b in layers[:-1]:
        a = np.maximum(w @ a + b, 0.0)
    return a


def solve_checked(model: Model, objective: list[Term], time_limit: float, plausible: Callable[[Outcome], bool],
                  problem: str, stop_at_first: bool = False, presolve: bool = True) -> Outcome:
    """Solve; if the answer fails a cheap check, solve once more with another random seed.

    HiGHS 1.12 occasionally cuts off feasible points of these big-M models (wrong optima, false
    infeasibility); a different seed takes another path through its heuristics and cuts.
    `presolve=False` skips HiGHS' presolve (Model.solve).
    """
    outcome = model.solve(objective, time_limit=time_limit, mip_rel_gap=MIP_REL_GAP, stop_at_first=stop_at_first,
                          presolve=presolve)
    if plausible(outcome):
        return _with_dual_bound(model, objective, outcome, time_limit, presolve)
    left = time_limit - outcome.seconds
    if left > 0.0:
        retry = model.solve(objective, time_limit=left, mip_rel_gap=MIP_REL_GAP, seed=_RETRY_SEED,
                            stop_at_first=stop_at_first, presolve=presolve)
        if plausible(retry):
            return _with_dual_bound(model, objective, replace(retry, seconds=outcome.seconds + retry.seconds), time_limit,
                                    presolve)
    raise CleverError(f"the MILP solver (HiGHS) returned an inconsistent {problem} answer ({outcome.status}) "
                      "twice; try tighten='lp' or another time limit")


def _with_dual_bound(model: Model, objective: list[Term], outcome: Outcome, time_limit: float,
                     presolve: bool = True) -> Outcome:
    """Fill in a dual bound from the LP relaxation when the solver stopped without one.

    scipy's milp drops HiGHS' dual bound when the time limit comes before any incumbent; the LP
    relaxation's optimum is a weaker bound but a proven one.
    """
    if outcome.status != "time_limit" or outcome.dual_bound is not None:
        return outcome
    relaxation = model.solve(objective, time_limit=_RELAXATION_SHARE * time_limit, relaxed=True, presolve=presolve)
    dual = relaxation.objective if relaxation.status == "optimal" else None
    return replace(outcome, dual_bound=dual, seconds=outcome.seconds + relaxation.seconds)
