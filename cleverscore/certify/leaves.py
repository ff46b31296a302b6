"""The split search's leaves on a ReLU MLP: whether a fully split part holds a point, by one LP.

A part of the split search (`jacobian.py`) in which every ReLU is fixed - split, or stable over
the part's forward bounds - has one activation pattern. Every pre-activation is then an affine map
of the input, and the part is the polytope of the ball (intersected with the box) where each
pre-activation keeps its sign; its gradient bound is that pattern's gradient norm. The forward
bounds and cuts of a part relax the layers after the first, so they can miss that the polytope is
empty: on the 784-32-32-10 MLP at Linf radius 0.02 the search ran out of parts above the exact
constant on 11 of 16 pairs because its worst leaves held no point (on image 0 the LP below put
them 0.003-0.008 away, in Linf, from meeting their own pattern). One LP per leaf settles it (the
one of `milp.regions.centre`, over the ball): the point of the ball deepest inside the pattern's
region.

- Deepest margin below -tolerance: the leaf holds no point of the ball and is dropped.
- Above +tolerance, on an Linf or L1 ball (LPs): the point has the pattern, with the gradient the
  leaf's bound is; the bound is attained and the search has the exact constant once such a leaf
  is its worst part.
- On an L2 ball the LP is over the Linf and L1 balls that contain it, so only its emptiness is
  proof; a second LP over the L1 ball of the same radius, which lies inside the L2 ball, can
  still find a point that meets the pattern.
- Otherwise (within the tolerance), the leaf stays as it is.

Leaves are checked lazily, when one becomes the worst part of its target: a few LPs per search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from .graph import Graph
from .milp.network import Layers
from .milp.regions import centre
from .ops.activation import ReLU
from .ops.linear import Dense, Reshape

# Margins are Linf distances to the pattern's switching hyperplanes; the network runs in float32.
_TOLERANCE = 1e-5


class Leaf(Enum):
    EMPTY = "empty"        # no point of the ball has the pattern: the part bounds nothing
    ATTAINED = "attained"  # a point of the ball has the pattern strictly: the bound is a gradient norm there
    OPEN = "open"          # neither is proven


@dataclass(frozen=True)
class LeafChecker:
    """The LP of a pattern's region in one ball: the network as dense layers and the ball's geometry."""

    layers: Layers
    relu_nodes: tuple[int, ...]     # the graph's ReLU nodes, one per hidden layer, in order
    x0: np.ndarray                  # flat centre
    lower: np.ndarray               # the box intersected with the ball's Linf box (flat)
    upper: np.ndarray
    l1_radius: float | None         # an L1 ball constraint (L1 balls; L2 balls: the L1 ball holding them)
    exact_ball: bool                # whether the LP's region is the ball itself (Linf, L1)
    inner_l1_radius: float | None = None  # L2 balls: the L1 ball of the same radius, which lies inside

    def check(self, multipliers: Sequence[tuple[np.ndarray, np.ndarray]]) -> Leaf:
        """The verdict on a part whose ReLU multipliers (lo, hi) per hidden layer are given (flat, 0/1)."""
        if any(np.any(lo != hi) for lo, hi in multipliers):
            return Leaf.OPEN  # a ReLU still free: no single pattern
        pattern = [hi > 0.5 for _, hi in multipliers]
        point, margin = self._deepest(pattern, self.l1_radius)
        if point is None or abs(margin) <= _TOLERANCE:
            return Leaf.OPEN
        if margin < 0:
            return Leaf.EMPTY
        if self.exact_ball:
            return Leaf.ATTAINED
        # An L2 ball: a point of the pattern in the L1 ball inside it is a point of the ball.
        return Leaf.OPEN if self.witness(pattern) is None else Leaf.ATTAINED

    def witness(self, pattern: list[np.ndarray]) -> np.ndarray | None:
        """A point of the ball (in the box) that meets the pattern with a margin above the tolerance, if the LP
        finds one: over the ball itself (Linf, L1) or over the L1 ball inside it (L2)."""
        if not self.exact_ball and self.inner_l1_radius is None:
            return None
        point, margin = self._deepest(pattern, self.l1_radius if self.exact_ball else self.inner_l1_radius)
        return point if point is not None and margin > _TOLERANCE else None

    def _deepest(self, pattern: list[np.ndarray], l1_radius: float | None) -> tuple[np.ndarray | None, float]:
        """The point of the Linf box (and the L1 ball of `l1_radius`) deepest in the pattern's region, and its
        margin (`regions.centre`; None when the solver gave no answer, which proves nothing)."""
        ball = None if l1_radius is None else (self.x0, l1_radius)
        # Without presolve these small LPs take half the time (12 against 28 ms at 784 inputs).
        return centre(self.layers, pattern, self.lower, self.upper, ball, presolve=False)


def leaf_checker(graph: Graph, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray, radius: float,
                 p: float) -> LeafChecker | None:
    """A checker for a network of Dense layers with ReLUs between them (Flatten/Reshape before the first),
    in the ball of `radius` (norm order `p`) around x0 within [lower, upper]; None for any other network."""
    layers, relus = _dense_relu_chain(graph)
    if layers is None:
        return None
    flat0 = np.asarray(x0, np.float64).reshape(-1)
    lo = np.maximum(np.asarray(lower, np.float64).reshape(-1), flat0 - radius)
    hi = np.minimum(np.asarray(upper, np.float64).reshape(-1), flat0 + radius)
    l1 = None if p == np.inf else (radius if p == 1 else radius * np.sqrt(flat0.size))
    return LeafChecker(layers, relus, flat0, lo, hi, l1, p in (1, np.inf), radius if p == 2 else None)


def _dense_relu_chain(graph: Graph) -> tuple[Layers | None, tuple[int, ...]]:
    """The graph as dense layers [(W, b), ...] (ReLU after all but the last) and its ReLU nodes, if it is one."""
    layers: Layers = []
    relus: list[int] = []
    expect_relu = False
    for k, node in enumerate(graph.nodes[1:], start=1):
        if node.inputs != (k - 1,):
            return None, ()
        op = node.op
        if isinstance(op, Reshape) and not layers:
            continue
        if isinstance(op, Dense) and not expect_relu and len(node.shape) == 1:
            w = op.kernel.numpy().astype(np.float64).T
            b = np.zeros(w.shape[0]) if op.bias is None else op.bias.numpy().astype(np.float64).reshape(-1)
            layers.append((w, b))
            expect_relu = True
        elif isinstance(op, ReLU) and expect_relu:
            relus.append(k)
            expect_relu = False
        else:
            return None, ()
    if not layers or not expect_relu:  # the last node must be a Dense (the logits)
        return None, ()
    return layers, tuple(relus)
