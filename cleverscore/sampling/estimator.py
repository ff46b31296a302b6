"""`EstimateLipschitz`: the original's front to the sampler, with its public methods and signatures.

For an image x0 of class c and targets j_1..j_K, each iteration draws Nsamps points in an Lp
ball around x0, clips them to the model's input range, and records, for every target, the
largest ||grad g_j||_2, ||grad g_j||_1 and ||grad g_j||_inf over the points, where
g_j = f_c - f_j on the logits (and, with `compute_slope`, the largest slopes between pairs of
points). All targets of an image share the samples and the forward pass.

The work is done by the modules behind it: the model adapter (model.py), the compiled steps
(steps.py), the collection loop for both samplers (collector.py), order 2 (second_order.py)
and search (search.py). The original's methods take flag strings (`sample_norm="l2"`); the
settings-based methods (`collect_maxima`, ...) take a `SamplingSettings`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from cleverscore.errors import UsageError
from cleverscore.log_lines import iteration_line
from cleverscore.norms import by_flag
from cleverscore.sampling.collector import (
    MAX_TARGETS_PER_PASS,
    GraphSource,
    NonFiniteError,
    PoolSource,
    SampledBall,
    StoppingRule,
    TargetResult,
    collect,
)
from cleverscore.sampling.model import DEFAULT_BATCH_SIZE, ModelAdapter
from cleverscore.sampling.second_order import HessianResult, collect_hessian
from cleverscore.sampling.steps import CompiledSteps, sample_batch
from cleverscore.settings import SamplingSettings

__all__ = ["EstimateLipschitz", "HessianResult", "NonFiniteError", "SampledBall", "TargetResult"]


class EstimateLipschitz:
    """Collects per-iteration maxima of gradient norms for CLEVER.

    Args:
        sess: unused; kept so that code written for the TF1 original still calls this.
        seed: seeds every random draw; the same seed, image id and settings give the same
            samples, whatever the targets or the number of workers.
        nthreads: worker processes for the pool sampler (0 = half the cores).
        sampler: "graph" (samples drawn inside the compiled step) or "pool" (NumPy workers).
        log: where per-iteration `[STATS][L2]` lines go (None to silence).
    """

    def __init__(self, sess=None, seed: int = 1215, nthreads: int = 0, sampler: str = "graph",
                 log: Callable[[str], None] | None = print):
        if sampler not in ("graph", "pool"):
            raise UsageError(f"unknown `sampler` {sampler!r}; choose graph or pool")
        self.seed = int(seed)
        self.nthreads = nthreads
        self.sampler = sampler
        self.log = log
        self.model = None
        self.adapter: ModelAdapter | None = None
        self.steps: CompiledSteps | None = None
        self.input_range = (-0.5, 0.5)
        self._pool = None

    @property
    def strategy(self):
        return None if self.adapter is None else self.adapter.strategy

    def load_model(self, dataset: str = "mnist", model_name: str = "normal", activation: str = "relu",
                   model=None, batch_size: int = 0, compute_slope: bool = False, order: int = 1,
                   input_range: tuple[float, float] = (-0.5, 0.5), devices: int = 1):
        """Select the classifier.

        Args:
            dataset, model_name, activation: a built-in model (spec section 5), used when
                `model` is None.
            model: any Keras model or callable mapping a batch in `input_range` to logits.
            batch_size: points per forward/backward pass (0 = 1024, or 32 for ImageNet).
            compute_slope: also record slope maxima between pairs of samples.
            order: 1 (gradient norms); 2 is the second-order bound.
            input_range: the range the model takes; samples are clipped to it.
            devices: split every batch across this many devices with MirroredStrategy
                (0 = all visible GPUs); results equal a single device's for the same seed.
        Returns:
            The model.
        """
        if order not in (1, 2):
            raise UsageError(f"`order` must be 1 or 2, got {order}")
        if model is None:
            from cleverscore.models.zoo import load_zoo_model

            model = load_zoo_model(dataset, model_name, activation)
        self.model = model
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.adapter = ModelAdapter(model, batch_size or DEFAULT_BATCH_SIZE.get(dataset, 1024), self.input_range,
                                    devices)
        self.steps = CompiledSteps(self.adapter, compute_slope)
        return model

    @property
    def batch_size(self) -> int:
        return 0 if self.adapter is None else self.adapter.batch_size

    @property
    def compute_slope(self) -> bool:
        return bool(self.steps and self.steps.compute_slope)

    def _require_model(self) -> None:
        if self.adapter is None:
            raise UsageError("call load_model before estimate")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits of a batch, in batches of `batch_size`."""
        self._require_model()
        return self.adapter.predict(x)

    def sample_points(self, x0: np.ndarray, image_id: int, iteration: int, batch_index: int, count: int,
                      sample_norm: str = "l2", radius: float | None = None) -> np.ndarray:
        """The exact points the compiled fast path evaluates for one batch (for inspection and tests)."""
        norm = by_flag(sample_norm)
        scale = (float(radius), float(radius)) if radius else norm.default_scale
        return sample_batch(x0, self._seed_key(image_id), iteration, batch_index, count, norm, scale,
                            self.input_range)

    # -- the original's methods (flag strings) ----------------------------------------------
    def sampling_settings(self, Nsamp: int, Niters: int, sample_norm: str, radius: float | None,
                          transform: str | None = None, rel_tol: float = 0.0, search_steps: int = 0) -> SamplingSettings:
        """The original's positional arguments as settings (`""` and 0 mean "not given")."""
        return SamplingSettings(nsamps=Nsamp, niters=Niters, sample_norm=by_flag(sample_norm), radius=radius or None,
                                transform=transform or None, rel_tol=rel_tol or None, search_steps=search_steps,
                                sampler=self.sampler, nthreads=self.nthreads, seed=self.seed)

    def estimate(self, x_0: np.ndarray, true_label: int, target_label: int, Nsamp: int, Niters: int,
                 sample_norm: str = "l2", transform: str | None = None, order: int = 1,
                 image_id: int = 0, radius: float | None = None) -> list:
        """Collect maxima for one target.

        Returns [L2_max, L1_max, Li_max, G2_max, G1_max, Gi_max, g_x0, pred] for order 1 and
        [H2_max, g_x0, g_x0_grad_2_norm, pred] for order 2.
        """
        if order == 2:
            if transform:
                raise UsageError("`order` 2 cannot be combined with a `transform`")
            res = self.estimate_hessian(x_0, true_label, target_label, Nsamp, Niters, sample_norm, image_id, radius)
            return [res.h2_max, res.g_x0, res.grad_norm_x0, res.pred]
        result = self.estimate_targets(x_0, true_label, [target_label], Nsamp, Niters, sample_norm,
                                       transform=transform, image_id=image_id, radius=radius)[0]
        return result.as_list()

    def estimate_targets(self, x_0: np.ndarray, true_label: int, target_labels: Sequence[int], Nsamp: int,
                         Niters: int, sample_norm: str = "l2", transform: str | None = None, image_id: int = 0,
                         radius: float | None = None,
                         progress: Callable[[int, int], Callable[[int], None]] | None = None,
                         rel_tol: float = 0.0) -> list[TargetResult]:
        """Collect maxima for several targets of one image on shared samples (see `collect_maxima`)."""
        sampling = self.sampling_settings(Nsamp, Niters, sample_norm, radius, transform, rel_tol)
        return self.collect_maxima(x_0, true_label, target_labels, sampling, image_id, progress)

    def estimate_hessian(self, x_0: np.ndarray, true_label: int, target_label: int, Nsamp: int, Niters: int,
                         sample_norm: str = "l2", image_id: int = 0, radius: float | None = None,
                         progress: Callable[[int, int], Callable[[int], None]] | None = None) -> HessianResult:
        """Order 2: per-iteration curvature maxima of g for one target (spec section 8)."""
        sampling = self.sampling_settings(Nsamp, Niters, sample_norm, radius)
        return self.hessian_maxima(x_0, true_label, target_label, sampling, image_id, progress)

    def search_maxima(self, x_0: np.ndarray, true_label: int, target_labels: Sequence[int], steps: int,
                      sample_norm: str = "l2", radius: float | None = None, image_id: int = 0) -> np.ndarray:
        """(targets, 3) largest gradient norms (G2, G1, Gi) found by ascent inside the sampled ball."""
        sampling = self.sampling_settings(1, 1, sample_norm, radius, search_steps=steps)
        return self.searched_maxima(x_0, true_label, target_labels, sampling, image_id)

    # -- the settings-based methods ---------------------------------------------------------
    def collect_maxima(self, x_0: np.ndarray, true_label: int, target_labels: Sequence[int],
                       sampling: SamplingSettings, image_id: int = 0,
                       progress: Callable[[int, int], Callable[[int], None]] | None = None) -> list[TargetResult]:
        """Collect maxima for several targets of one image on shared samples.

        Targets are processed MAX_TARGETS_PER_PASS at a time; every pass sees the same samples.
        `progress(niters, nsamp)`, if given, makes a callback that is told each finished iteration.
        With `sampling.rel_tol`, each target stops on its own once the relative half-width of its
        L2 score's 95% interval is at most rel_tol (checked after intervals.BURN_IN iterations
        and then every CHECK_EVERY); `niters` is the cap. Its result then holds only the
        iterations it used. The samples do not depend on which targets are still running, so
        the same seed gives the same stopping points.
        """
        self._require_model()
        if sampling.nsamps < 1 or sampling.niters < 1:
            raise UsageError("`nsamps` and `niters` must be positive")
        x0 = np.asarray(x_0, dtype=np.float32)
        pred = self.adapter.predict(x0[None])[0]
        if not np.all(np.isfinite(pred)):
            raise NonFiniteError(f"logits at x0 are not finite for image {image_id}")
        results = []
        targets = [int(t) for t in target_labels]
        for start in range(0, len(targets), MAX_TARGETS_PER_PASS):
            chunk = targets[start : start + MAX_TARGETS_PER_PASS]
            results += self._collect_pass(x0, int(true_label), chunk, pred, sampling, image_id, progress)
        return results

    def _collect_pass(self, x0, c: int, targets: list[int], pred, sampling: SamplingSettings, image_id: int,
                      progress) -> list[TargetResult]:
        """One pass over up to MAX_TARGETS_PER_PASS targets sharing every sample."""
        niters = sampling.niters
        tick = progress(niters, sampling.nsamps) if progress else None
        margins = [float(pred[c] - pred[t]) for t in targets]
        stop = StoppingRule(sampling.rel_tol, margins) if sampling.rel_tol else None
        source = self._source(x0, c, targets, sampling, image_id)
        batch = self.adapter.batches(sampling.nsamps)[0]
        gmax, smax, times, errors, radii = collect(source, len(targets), niters, batch, (targets, image_id), tick,
                                                   stop)
        results = []
        for k, t in enumerate(targets):
            used = stop.used[k] if stop else niters
            ball = SampledBall(sampling.sample_norm.flag, float(radii[:used].max()), int(x0.size))  # the samples it saw
            results.append(TargetResult(t, gmax[:used, k], smax[:used, k], margins[k], pred, times[:used],
                                        errors.get(k), "rel_tol" if used < niters else "max_iters", ball=ball))
        return results

    def _source(self, x0, c: int, targets: list[int], sampling: SamplingSettings, image_id: int):
        """Where the samples come from: the compiled step itself, or the pool (a transform needs it)."""
        key = self._seed_key(image_id)
        if self.sampler == "graph" and sampling.transform is None:
            return GraphSource(self.steps, x0, c, targets, sampling.nsamps, sampling.sample_norm, sampling.scale, key)
        return PoolSource(self.steps, self._get_pool(), x0, c, targets, sampling.nsamps, sampling.sample_norm,
                          sampling.scale, key, sampling.transform)

    def hessian_maxima(self, x_0: np.ndarray, true_label: int, target_label: int, sampling: SamplingSettings,
                       image_id: int = 0,
                       progress: Callable[[int, int], Callable[[int], None]] | None = None) -> HessianResult:
        """Order 2: per-iteration curvature maxima of g for one target (spec section 8)."""
        self._require_model()
        return collect_hessian(self.steps, x_0, int(true_label), int(target_label), sampling.nsamps, sampling.niters,
                               sampling.sample_norm, sampling.scale, self._seed_key(image_id), progress)

    def searched_maxima(self, x_0: np.ndarray, true_label: int, target_labels: Sequence[int],
                        sampling: SamplingSettings, image_id: int = 0, with_points: bool = False):
        """(targets, 3) largest gradient norms (G2, G1, Gi) found by `sampling.search_steps` of ascent.

        With `with_points`, also the ascent's end points per target and norm (search.search_maxima).
        """
        from cleverscore.sampling.search import search_maxima

        self._require_model()
        return search_maxima(self.steps, x_0, true_label, target_labels, sampling.sample_norm, sampling.scale,
                             sampling.search_steps, self._seed_key(image_id), with_points)

    def _seed_key(self, image_id: int) -> tuple[int, int]:
        return (self.seed, int(image_id))

    def _get_pool(self):
        if self._pool is None:
            from cleverscore.sampling.pool import SamplePool

            self._pool = SamplePool(self.nthreads)
        return self._pool

    def log_iterations(self, result: TargetResult) -> None:
        """Print one target's `[STATS][L2]` lines (per-iteration maxima and timings)."""
        if self.log is None:
            return
        elapsed = np.cumsum(result.iter_times)
        for it in range(len(result.grad_max)):
            slopes = result.slope_max[it] if self.compute_slope else None
            self.log(iteration_line(it, elapsed[it], result.iter_times[it], 0.0, result.grad_max[it], slopes))

    def close(self) -> None:
        """Stop the worker pool, if one was started."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None
