"""Activation regions of a ReLU network: where one lies (one LP), and a local search over them.

While the activation pattern holds, every pre-activation is an affine map of the input, so the
region of a pattern inside the Linf box [lower, upper] is a polytope, and the gradient of
g = f_true - f_target is constant on it. Whether a pattern is met in the box, and where, is one
LP (`centre`). The Lipschitz MILP uses that to check its answers; `region_search` uses it to
walk from region to region towards larger gradient norms.

Why the walk: on the shipped 784-32-32-10 MLP at Linf radius 0.02, the smoothed ascent
(sampling/smoothed.py) ends one to four flipped units away from the pattern where the exact
constant is attained, and its starts all end in the same pattern; a step to a neighbouring
pattern is what it misses.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cleverscore.certify.milp.bounds import interval_bounds
from cleverscore.certify.milp.model import Model, add_l1_distance
from cleverscore.certify.milp.network import Layers, activation_pattern, input_gradient, margin_gradient

CANDIDATES_PER_MOVE = 30  # improving neighbours, best first, a move tries to reach before it gives up


def pattern_affine_maps(layers: Layers, pattern: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each hidden layer's pre-activation as an affine map of the input while `pattern` holds."""
    maps = []
    a_map: np.ndarray | None = None
    a_off: np.ndarray | None = None
    for (w, b), on in zip(layers[:-1], pattern):
        z_map, z_off = (w, b) if a_map is None else (w @ a_map, w @ a_off + b)
        maps.append((z_map, z_off))
        a_map, a_off = z_map * on[:, None], z_off * on
    return maps


def margin_rows(layers: Layers, pattern: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows (M, c) with (M x + c)_i the signed Linf distance of x to unit i's switching hyperplane."""
    rows, offsets = [], []
    for (z_map, z_off), on in zip(pattern_affine_maps(layers, pattern), pattern):
        sign = np.where(on, 1.0, -1.0)
        scale = np.abs(z_map).sum(axis=1)
        keep = scale > 0.0
        rows.append(sign[keep, None] * z_map[keep] / scale[keep, None])
        offsets.append(sign[keep] * z_off[keep] / scale[keep])
    if not rows:
        return np.zeros((0, layers[0][0].shape[1])), np.zeros(0)
    return np.concatenate(rows), np.concatenate(offsets)


def centre(layers: Layers, pattern: list[np.ndarray], lower: np.ndarray, upper: np.ndarray,
           l1_ball: tuple[np.ndarray, float] | None = None,
           presolve: bool = True) -> tuple[np.ndarray | None, float]:
    """The point of the region farthest (in Linf) from the pattern's switching boundaries, by one LP.

    `pattern` may cover only the first hidden layers (then `layers` holds those and the next one).
    `l1_ball` (centre, radius) also keeps the point in that L1 ball. Returns it with its margin t
    (None and -inf if the LP fails): t >= 0 means the pattern is met in the closed region, t > 0
    that g is differentiable at the point.
    """
    matrix, offset = margin_rows(layers, pattern)
    if matrix.shape[0] == 0 and l1_ball is None:
        return (lower + upper) / 2.0, np.inf
    model = Model()
    x = model.add_vars(lower, upper, lower.size)
    t = model.add_vars(-np.inf, float(np.max(upper - lower, initial=0.0)) + 1.0, 1)
    model.add_rows([(matrix, x), (-np.ones(matrix.shape[0]), np.full(matrix.shape[0], t[0]))], -offset, np.inf)
    if l1_ball is not None:
        x0, radius = l1_ball
        dist = add_l1_distance(model, x, x0, lower, upper)
        model.add_rows([(np.ones((1, x0.size)), dist)], -np.inf, radius)
    outcome = model.solve([(-np.ones(1), t)], presolve=presolve)
    if outcome.x is None:
        return None, -np.inf
    point = outcome.x[x]
    return point, float(np.min(matrix @ point + offset, initial=np.inf))


def region_margin(layers: Layers, pattern: list[np.ndarray], x: np.ndarray) -> float:
    matrix, offset = margin_rows(layers, pattern)
    return float(np.min(matrix @ x + offset, initial=np.inf))


@dataclass(frozen=True)
class RegionSearch:
    """The best point the walk reached, ||grad g||_q there, and what the walk cost.

    patterns: neighbouring patterns whose gradient norm was computed (a gradient each);
    lps: region LPs solved; moves: steps taken to a better region.
    """

    value: float
    x: np.ndarray
    patterns: int
    lps: int
    moves: int


def region_search(layers: Layers, true_label: int, target: int, lower: np.ndarray, upper: np.ndarray,
                  starts: Sequence[np.ndarray], q: float, max_moves: int, max_patterns: int,
                  max_lps: int, max_walks: int, deadline: float | None = None) -> RegionSearch:
    """Walk over activation regions in the box [lower, upper] towards a larger ||grad g||_q.

    From each start point (flat, in the box, best first; one walk per distinct pattern, at most
    `max_walks`), a move
    scores every pattern that differs in one unit that can switch in the box (interval bounds),
    then tries the better ones, best first, until an LP finds a point inside one: first with the
    whole pattern fixed, then, for a unit before the last hidden layer, with only the layers up to
    the unit's fixed (the later ones then follow the point). A move is taken when the gradient
    norm at the point found exceeds the current one. Every value is ||grad g||_q at a point of
    the box, so the result is a certain lower bound of max ||grad g||_q over the box. No move
    starts, and no LP, after `deadline` (a time.perf_counter() value).
    """
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    bounds = interval_bounds(layers, lower, upper)[: len(layers) - 1]
    walker = _Walker(layers, true_label, target, q, lower, upper,
                     [np.flatnonzero((lo < 0.0) & (hi > 0.0)) for lo, hi in bounds],
                     {"patterns": max_patterns, "lps": max_lps}, deadline)
    best_value, best_x = -np.inf, np.asarray(starts[0], np.float64)
    moves = walks = 0
    for start in starts:
        x = np.clip(np.asarray(start, np.float64), lower, upper)
        pattern = activation_pattern(layers, x)
        if _key(pattern) in walker.seen:
            continue
        if walks == max_walks:
            break
        walks += 1
        value = walker.norm_at(x)
        for _ in range(max_moves):
            if walker.out_of_time():
                break
            walker.seen.add(_key(pattern))
            step = walker.move(pattern, value)
            if step is None:
                break
            x, pattern, value = step
            moves += 1
        if value > best_value:
            best_value, best_x = value, x
        if walker.budget["patterns"] <= 0 or walker.budget["lps"] <= 0:
            break
    return RegionSearch(best_value, best_x, max_patterns - walker.budget["patterns"],
                        max_lps - walker.budget["lps"], moves)


def _key(pattern: list[np.ndarray]) -> bytes:
    return b"".join(np.asarray(on, bool).tobytes() for on in pattern)


@dataclass
class _Walker:
    """What every move of a search shares: the network, the box, the budget left and the patterns seen."""

    layers: Layers
    true_label: int
    target: int
    q: float
    lower: np.ndarray
    upper: np.ndarray
    switchable: list[np.ndarray]
    budget: dict[str, int]
    deadline: float | None
    seen: set[bytes] = field(default_factory=set)

    def norm_of(self, pattern: list[np.ndarray]) -> float:
        return float(np.linalg.norm(margin_gradient(self.layers, pattern, self.true_label, self.target), self.q))

    def norm_at(self, point: np.ndarray) -> float:
        return float(np.linalg.norm(input_gradient(self.layers, point, self.true_label, self.target), self.q))

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.perf_counter() > self.deadline

    def move(self, pattern: list[np.ndarray], value: float):
        """(point, its pattern, its norm) of the best neighbouring region reached, or None."""
        candidates = []
        for layer, units in enumerate(self.switchable):
            for unit in units:
                if self.budget["patterns"] <= 0:
                    break
                flipped = [on.copy() for on in pattern]
                flipped[layer][unit] = not flipped[layer][unit]
                if _key(flipped) in self.seen:
                    continue
                self.budget["patterns"] -= 1
                candidates.append((self.norm_of(flipped), layer, flipped))
        candidates.sort(key=lambda c: -c[0])
        for score, layer, flipped in candidates[:CANDIDATES_PER_MOVE]:
            if score <= value or self.budget["lps"] <= 0 or self.out_of_time():
                return None
            for fixed in (len(pattern), layer + 1)[: 1 + (layer + 1 < len(pattern))]:
                self.budget["lps"] -= 1
                point, margin = centre(self.layers[: fixed + 1], flipped[:fixed], self.lower, self.upper)
                if point is None or margin <= 0.0:
                    continue
                point = np.clip(point, self.lower, self.upper)
                reached = self.norm_at(point)
                if reached > value:
                    return point, activation_pattern(self.layers, point), reached
                break  # the region is met but its point is no better: the next candidate
        return None
