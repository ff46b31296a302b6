"""A small sparse model builder over `scipy.optimize.milp` (HiGHS), and the big-M ReLU encoding.

Rows are two-sided (`lb <= A v <= ub`) and are given as blocks: a term is `(coef, idx)` where
`coef` is a (k, len(idx)) matrix, or a length-k vector meaning "row r uses coef[r] * v[idx[r]]".
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from cleverscore.errors import CleverError

Term = tuple[np.ndarray, np.ndarray]

# scipy's milp status codes (HiGHS model status mapped by scipy).
_STATUS = {0: "optimal", 1: "time_limit", 2: "infeasible", 3: "unbounded"}
_SOLUTION_LIMIT = "Solution limit reached"


@dataclass(frozen=True, eq=False)
class Outcome:
    """What HiGHS returned, in the minimisation sense of the model's objective."""

    status: str
    x: np.ndarray | None
    objective: float | None
    dual_bound: float | None
    seconds: float
    message: str


class Model:
    """Variables with bounds and integrality, and sparse two-sided rows."""

    def __init__(self) -> None:
        self._lb: list[np.ndarray] = []
        self._ub: list[np.ndarray] = []
        self._integer: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._cols: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []
        self._row_lb: list[np.ndarray] = []
        self._row_ub: list[np.ndarray] = []
        self.num_vars = 0
        self.num_rows = 0
        self._matrix: tuple[LinearConstraint, Bounds, np.ndarray] | None = None

    def add_vars(self, lb: np.ndarray | float, ub: np.ndarray | float, count: int | None = None,
                 integer: bool = False) -> np.ndarray:
        """Add variables with bounds; returns their indices."""
        lb_arr = np.asarray(lb, dtype=np.float64)
        n = int(count if count is not None else max(lb_arr.size, np.asarray(ub).size))
        self._lb.append(np.broadcast_to(lb_arr, (n,)).astype(np.float64))
        self._ub.append(np.broadcast_to(np.asarray(ub, dtype=np.float64), (n,)).astype(np.float64))
        self._integer.append(np.full(n, 1 if integer else 0, dtype=np.uint8))
        idx = np.arange(self.num_vars, self.num_vars + n)
        self.num_vars += n
        self._matrix = None
        return idx

    def add_rows(self, terms: Sequence[Term], lb: np.ndarray | float, ub: np.ndarray | float) -> None:
        """Add rows `lb <= sum of terms <= ub`; every term must describe the same number of rows."""
        k = None
        for coef, idx in terms:
            coef = np.asarray(coef, dtype=np.float64)
            idx = np.asarray(idx)
            rows_here = coef.shape[0]
            if k is None:
                k = rows_here
            if coef.ndim == 1:
                r = np.arange(rows_here)
                c = idx
                v = coef
            else:
                r, j = np.nonzero(coef)
                c = idx[j]
                v = coef[r, j]
            keep = v != 0.0
            self._rows.append(r[keep] + self.num_rows)
            self._cols.append(c[keep])
            self._vals.append(v[keep])
        if not k:
            return
        self._row_lb.append(np.broadcast_to(np.asarray(lb, dtype=np.float64), (k,)).astype(np.float64))
        self._row_ub.append(np.broadcast_to(np.asarray(ub, dtype=np.float64), (k,)).astype(np.float64))
        self.num_rows += k
        self._matrix = None

    @property
    def num_integers(self) -> int:
        return int(sum(int(i.sum()) for i in self._integer))

    def relax(self) -> None:
        """Drop integrality: every later solve is the LP relaxation."""
        self._integer = [np.zeros_like(i) for i in self._integer]
        self._matrix = None

    def solve(self, objective: Sequence[Term], constant: float = 0.0, time_limit: float | None = None,
              mip_rel_gap: float | None = None, seed: int | None = None, relaxed: bool = False,
              stop_at_first: bool = False, presolve: bool = True) -> Outcome:
        """Minimise `sum of objective terms + constant` (each term a coefficient vector and its indices).

        `relaxed` solves the LP relaxation instead, whose optimum bounds the MILP's from below;
        `stop_at_first` stops at the first incumbent (status 'solution_limit'); `presolve=False`
        skips HiGHS' presolve.
        """
        c = np.zeros(self.num_vars)
        for coef, idx in objective:
            np.add.at(c, np.asarray(idx), np.asarray(coef, dtype=np.float64))
        constraint, bounds, integrality = self._assemble()
        if relaxed:
            integrality = np.zeros_like(integrality)
        options: dict[str, float | bool] = {"disp": False}
        if time_limit is not None:
            options["time_limit"] = float(time_limit)
        if mip_rel_gap is not None and integrality.any():
            options["mip_rel_gap"] = float(mip_rel_gap)
        # scipy passes keys it does not know (random_seed, mip_max_improving_sols) to HiGHS
        # verbatim, with a warning silenced below.
        extra: dict[str, int] = {} if seed is None else {"random_seed": int(seed)}
        if stop_at_first:
            extra["mip_max_improving_sols"] = 1
        if not presolve:
            options["presolve"] = False
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Unrecognized options detected", category=RuntimeWarning)
            res = milp(c, integrality=integrality, bounds=bounds, constraints=constraint, options={**options, **extra})
        seconds = time.perf_counter() - start
        status = _STATUS.get(int(res.status))
        if status is None and res.x is not None and _SOLUTION_LIMIT in str(res.message):
            # scipy 1.17 has no code for HiGHS' solution limit and reports it as 'other' (4).
            status = "solution_limit"
        if status is None:
            message = " ".join(str(res.message).split())
            raise CleverError(f"the MILP solver (HiGHS) failed: {message}")
        x = None if res.x is None else np.asarray(res.x, dtype=np.float64)
        objective_value = None if x is None else float(res.fun) + constant
        dual = getattr(res, "mip_dual_bound", None)
        dual_bound = None if dual is None or not np.isfinite(dual) else float(dual) + constant
        if dual_bound is None and status == "optimal":
            # Pure LPs report no MIP dual bound; their optimum is its own bound.
            dual_bound = objective_value
        return Outcome(status, x, objective_value, dual_bound, seconds, str(res.message))

    def _assemble(self) -> tuple[LinearConstraint | None, Bounds, np.ndarray]:
        if self._matrix is None:
            matrix = scipy.sparse.csr_array(
                (np.concatenate(self._vals or [np.zeros(0)]),
                 (np.concatenate(self._rows or [np.zeros(0, int)]), np.concatenate(self._cols or [np.zeros(0, int)]))),
                shape=(self.num_rows, self.num_vars),
            )
            constraint = (LinearConstraint(matrix, np.concatenate(self._row_lb), np.concatenate(self._row_ub))
                          if self.num_rows else None)
            bounds = Bounds(np.concatenate(self._lb), np.concatenate(self._ub))
            self._matrix = (constraint, bounds, np.concatenate(self._integer))
        return self._matrix


def add_l1_distance(model: Model, x: np.ndarray, x0: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Variables d >= |x - x0| coordinate-wise, for inputs `x` in the box [lower, upper]; returns their indices
    (sum d is then an upper bound of ||x - x0||_1, equal to it where a row minimises or caps the sum)."""
    n = x0.size
    ones = np.ones(n)
    dist = model.add_vars(0.0, np.maximum(x0 - lower, upper - x0), n)
    model.add_rows([(ones, dist), (-ones, x)], -x0, np.inf)
    model.add_rows([(ones, dist), (ones, x)], x0, np.inf)
    return dist


def add_relu_layer(model: Model, w: np.ndarray, b: np.ndarray, inputs: np.ndarray, lower: np.ndarray,
                   upper: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode a = ReLU(W v + b) for input variables `inputs`, given pre-activation bounds [lower, upper].

    Big-M encoding (Tjeng et al. 2019): an unstable unit gets a binary d with d = 1 meaning it passes
    its input; stable units get none. Returns the indices of a, the unstable units' positions and
    their binaries. With the binaries relaxed to [0, 1] the same rows are the triangle relaxation.
    The pre-activation gets no variable of its own: on a Lipschitz MILP that carried one, HiGHS
    1.12 (scipy 1.17) returned a wrong optimum or false infeasibility depending on its seed; the
    same model without them solved right on every seed tried.
    """
    n = w.shape[0]
    a = model.add_vars(np.maximum(lower, 0.0), np.maximum(upper, 0.0), n)
    active = np.flatnonzero(lower >= 0.0)
    if active.size:
        model.add_rows([(np.ones(active.size), a[active]), (-w[active], inputs)], b[active], b[active])
    unstable = np.flatnonzero((lower < 0.0) & (upper > 0.0))
    k = unstable.size
    d = model.add_vars(0.0, 1.0, k, integer=True)
    if k:
        lo, hi, wu, bu = lower[unstable], upper[unstable], w[unstable], b[unstable]
        ones = np.ones(k)
        model.add_rows([(ones, a[unstable]), (-wu, inputs)], bu, np.inf)
        model.add_rows([(ones, a[unstable]), (-wu, inputs), (-lo, d)], -np.inf, bu - lo)
        model.add_rows([(ones, a[unstable]), (-hi, d)], -np.inf, 0.0)
    return a, unstable, d
