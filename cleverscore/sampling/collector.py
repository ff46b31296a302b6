"""The collection loop: per-iteration maxima of gradient norms for the targets of one image.

One loop serves both samplers. Each iteration asks a sample source for the maxima of the
targets still running: `GraphSource` runs the compiled step that draws its own samples,
`PoolSource` feeds the step with samples that NumPy workers drew (and transformed) in shared
memory. The loop keeps the maxima and the timings, stops a target whose gradients turn NaN or
Inf, reports progress, and applies the `rel_tol` stopping rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cleverscore.errors import CleverError
from cleverscore.norms import LpNorm
from cleverscore.sampling.steps import CompiledSteps, out_of_memory_as_error

MAX_TARGETS_PER_PASS = 10  # backward passes per forward; bounds graph size and memory


class NonFiniteError(CleverError):
    """Logits or gradients became NaN or Inf for an (image, target)."""


@dataclass(frozen=True)
class SampledBall:
    """The ball the samples of an (image, target) actually came from.

    Attributes:
        sample_norm: 'l2', 'li' or 'l1'.
        radius: the largest ||x - x0|| in that norm over all samples, before clipping.
        input_dim: the number of input values d.
    """

    sample_norm: str
    radius: float
    input_dim: int


@dataclass
class TargetResult:
    """Per-iteration maxima for one target.

    Attributes:
        target: the target class j.
        grad_max: (Niters, 3) maxima of ||grad g||_2, ||grad g||_1, ||grad g||_inf (G2, G1, Gi).
        slope_max: (Niters, 3) slope maxima (L2, L1, Li); zeros unless slopes were computed.
        g_x0: f_c(x0) - f_j(x0).
        pred: the logits at x0.
        iter_times: wall time of each iteration (shared by all targets of a pass).
    """

    target: int
    grad_max: np.ndarray
    slope_max: np.ndarray
    g_x0: float
    pred: np.ndarray
    iter_times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    error: str | None = None  # set when gradients became NaN/Inf: this target has no usable maxima
    stop_reason: str = "max_iters"  # or "rel_tol": the score's interval became narrow enough
    search_max: np.ndarray | None = None  # (3,) G2, G1, Gi found by --search_steps ascent
    ball: SampledBall | None = None
    bounds: dict = field(default_factory=dict)  # certified and exact answers beside the maxima (.mat keys)

    @property
    def niters_used(self) -> int:
        return len(self.grad_max)

    def as_list(self) -> list:
        """The original return value: [L2_max, L1_max, Li_max, G2_max, G1_max, Gi_max, g_x0, pred]."""
        s, g = self.slope_max, self.grad_max
        return [s[:, 0], s[:, 1], s[:, 2], g[:, 0], g[:, 1], g[:, 2], self.g_x0, self.pred]


class StoppingRule:
    """rel_tol: per target, stop once its L2 score interval is narrow enough.

    `used[k]` is the number of iterations target k keeps (the cap until it stops).
    """

    def __init__(self, rel_tol: float, margins: Sequence[float]):
        self.rel_tol = rel_tol
        self.margins = list(margins)
        self.used: list[int] = [0] * len(self.margins)

    def update(self, gmax: np.ndarray, active: list[int]) -> list[int]:
        """Given the maxima so far (iterations, targets, 3), the targets that keep sampling."""
        from cleverscore.scoring.intervals import is_check_point, score_rel_half_width

        done = len(gmax)
        still = []
        for k in active:
            self.used[k] = done
            column = gmax[:, k, 0].astype(np.float64)  # G2: the L2 score's Lipschitz constant
            if not (is_check_point(done) and np.all(np.isfinite(column))
                    and score_rel_half_width(column, self.margins[k]) <= self.rel_tol):
                still.append(k)
        return still


class GraphSource:
    """Iterations of the compiled step that draws its own samples; a stopped target leaves the step."""

    def __init__(self, steps: CompiledSteps, x0: np.ndarray, c: int, targets: list[int], nsamp: int, norm: LpNorm,
                 scale, seed_key: tuple[int, int]):
        import tensorflow as tf

        self.steps, self.shape, self.nsamp, self.norm, self.scale = steps, x0.shape, nsamp, norm, scale
        self.targets = targets
        self.x0 = tf.constant(x0)
        self.c = tf.constant(c, tf.int32)
        self.seed = tf.constant(seed_key, tf.int64)
        self.active: list[int] = []
        self.retarget(list(range(len(targets))))

    def retarget(self, active: list[int]) -> None:
        """Compile (or reuse) the step for the targets still running."""
        import tensorflow as tf

        if active == self.active:
            return
        self.active = active
        self.step = self.steps.sampled_iteration(self.shape, self.nsamp, len(active), self.norm, self.scale)
        self.t = tf.constant([self.targets[a] for a in active], tf.int32)

    def iterations(self, niters: int):
        import tensorflow as tf

        for it in range(niters):
            g, s, reach = self.step(self.x0, self.c, self.t, self.seed, tf.constant(it, tf.int32))
            yield self.active, g.numpy(), s.numpy(), reach


class PoolSource:
    """Iterations of the step fed by the worker pool's samples; every target stays in the step
    (it is compiled for all of them), and a stopped target's later maxima are cut off."""

    def __init__(self, steps: CompiledSteps, pool, x0: np.ndarray, c: int, targets: list[int], nsamp: int,
                 norm: LpNorm, scale, seed_key: tuple[int, int], transform: str | None):
        import tensorflow as tf

        self.step = steps.given_iteration(x0.shape, nsamp, len(targets))
        self.c, self.t = tf.constant(c, tf.int32), tf.constant(targets, tf.int32)
        self.draw = lambda niters: pool.iterations(x0, nsamp, niters, norm, scale, seed_key, steps.model.input_range,
                                                   transform)
        self.active = list(range(len(targets)))

    def retarget(self, active: list[int]) -> None:
        self.active = active

    def iterations(self, niters: int):
        import tensorflow as tf

        for samples, reach in self.draw(niters):
            g, s, _ = self.step(tf.constant(samples), self.c, self.t)
            yield self.active, g.numpy()[self.active], s.numpy()[self.active], reach


def collect(source, num_targets: int, niters: int, batch: int, labels: tuple[list[int], int],
            tick: Callable[[int], None] | None = None, stop: StoppingRule | None = None):
    """Run `source` for up to `niters` iterations, keeping every target's maxima until it stops.

    Returns (gmax, smax, iteration times, errors per target, per-iteration sample radii).
    `labels` = (target classes, image id) name the pairs in error messages.
    """
    import tensorflow as tf

    gmax = np.zeros((niters, num_targets, 3), np.float32)
    smax = np.zeros((niters, num_targets, 3), np.float32)
    times = np.zeros(niters)
    errors: dict[int, str] = {}
    radii = []  # per iteration, the largest sample radius: tensors or floats, fetched once at the end
    begin = time.perf_counter()
    with out_of_memory_as_error(batch):
        for it, (active, g, s, reach) in enumerate(source.iterations(niters)):
            gmax[it, active], smax[it, active] = g, s
            radii.append(reach)
            now = time.perf_counter()
            times[it], begin = now - begin, now
            still = _after_iteration(it, gmax, labels, errors, tick, stop, active, niters)
            if not still:
                break
            source.retarget(still)
    return gmax, smax, times, errors, tf.stack(radii).numpy()


def _after_iteration(it, gmax, labels, errors, tick, stop, active, niters) -> list[int]:
    """Check finiteness, report progress and apply the stopping rule; the targets still sampling."""
    check_finite(gmax[it], labels, it, errors)
    if tick:
        tick(it + 1)
    if stop is not None:
        active = stop.update(gmax[: it + 1], active)
        if not active and tick:
            tick(niters)
    return active


def check_finite(values: np.ndarray, labels: tuple[list[int], int], it: int, errors: dict[int, str]) -> None:
    """Record the first non-finite iteration of each target; the others carry on."""
    targets, image_id = labels
    for k in np.flatnonzero(~np.all(np.isfinite(values), axis=1)):
        errors.setdefault(int(k), f"gradients are NaN or Inf for image {image_id}, target {targets[k]}, "
                                  f"iteration {it}")
    if len(errors) == len(targets):
        raise NonFiniteError("; ".join(errors[k] for k in sorted(errors)))
