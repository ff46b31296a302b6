"""Sampling the maxima of gradient norms around an input: the compute core of CLEVER.

For an image x0 of class c and targets j_1..j_K, each iteration draws Nsamps points in an Lp
ball around x0, clips them to the model's input range, and records, for every target, the
largest ||grad g_j||_2, ||grad g_j||_1 and ||grad g_j||_inf over the points, where
g_j = f_c - f_j on the logits (and, with `compute_slope`, the largest slopes between pairs of
points). All targets of an image share the samples and the forward pass.

The default `sampler="graph"` runs a whole iteration (sampling, clipping, forward, one
backward per target, norms, maxima) as one compiled TensorFlow function; only the maxima come
back to Python. `sampler="pool"` draws the samples with NumPy in worker processes writing to
shared memory (and applies `--transform` there) while the model works on the previous
iteration.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from cleverscore.errors import CleverError, UsageError
from cleverscore.log_lines import iteration_line
from cleverscore.norms import by_flag
from cleverscore.sampling.balls import tf_norms, tf_perturbations

DEFAULT_BATCH_SIZE = {"mnist": 1024, "cifar": 1024, "imagenet": 32}
MAX_TARGETS_PER_PASS = 10  # backward passes per forward; bounds graph size and memory
SEARCH_ITERATION = 2**31 - 1  # the iteration index of the search's start samples: no collection draws it


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

    @property
    def niters_used(self) -> int:
        return len(self.grad_max)

    def as_list(self) -> list:
        """The original return value: [L2_max, L1_max, Li_max, G2_max, G1_max, Gi_max, g_x0, pred]."""
        s, g = self.slope_max, self.grad_max
        return [s[:, 0], s[:, 1], s[:, 2], g[:, 0], g[:, 1], g[:, 2], self.g_x0, self.pred]


def make_strategy(devices: int):
    """None for one device, else a MirroredStrategy over `devices` GPUs (or logical CPUs)."""
    if devices == 1:
        return None
    import tensorflow as tf

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if devices == 0:
        return tf.distribute.MirroredStrategy(gpus) if len(gpus) > 1 else None
    pool = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
    if devices > len(pool):
        raise UsageError(f"--devices {devices} asked for, but only {len(pool)} device(s) are visible")
    return tf.distribute.MirroredStrategy(pool[:devices])


@dataclass
class HessianResult:
    """Per-iteration curvature maxima for one target (order 2).

    Attributes:
        h2_max: (Niters,) per iteration, the eigenvalue of largest magnitude among the samples'
            negative-preferring extreme Hessian eigenvalues of g.
        g_x0, grad_norm_x0: g(x0) and ||grad g(x0)||_2.
    """

    target: int
    h2_max: np.ndarray
    g_x0: float
    grad_norm_x0: float
    pred: np.ndarray
    iter_times: np.ndarray
    ball: SampledBall | None = None


class StoppingRule:
    """--rel_tol: per target, stop once its L2 score interval is narrow enough (see estimate_targets).

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
            raise UsageError(f"unknown sampler {sampler!r}; choose graph or pool")
        self.seed = int(seed)
        self.nthreads = nthreads
        self.sampler = sampler
        self.log = log
        self.model = None
        self.batch_size = 0
        self.compute_slope = False
        self.input_range = (-0.5, 0.5)
        self._pool = None
        self.strategy = None
        self._compiled: dict[tuple, Callable] = {}

    # ----------------------------------------------------------------------------------------
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
            raise UsageError(f"--order must be 1 or 2, got {order}")
        if model is None:
            from cleverscore.models.zoo import load_zoo_model

            model = load_zoo_model(dataset, model_name, activation)
        self.model = model
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE.get(dataset, 1024)
        self.compute_slope = compute_slope
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.strategy = make_strategy(devices)
        self._compiled.clear()
        return model

    # ----------------------------------------------------------------------------------------
    def _logits(self, x):
        import keras

        if isinstance(self.model, keras.Model):
            return self.model(x, training=False)
        return self.model(x)

    def _grad_norms(self, x, c, targets, num_targets: int):
        """(B, K, 3) norms (L2, L1, Linf) of grad g_k and (B, K) values of g_k at a batch x."""
        import tensorflow as tf

        with tf.GradientTape(persistent=num_targets > 1) as tape:
            tape.watch(x)
            logits = self._logits(x)
            g = tf.gather(logits, c, axis=1)[:, None] - tf.gather(logits, targets, axis=1)
            # Slices must be taken under the tape for it to differentiate through them.
            columns = [g] if num_targets == 1 else [g[:, k] for k in range(num_targets)]
        batch = tf.shape(x)[0]
        stats = []
        for col in columns:
            # One backward pass at a time: run concurrently, K passes thrash the caches and
            # were slower than K separate runs; in sequence they share one forward pass.
            with tf.control_dependencies(stats[-1:]):
                a = tf.abs(tf.reshape(tape.gradient(col, x), tf.stack([batch, -1])))
                stats.append(tf.stack([tf.sqrt(tf.reduce_sum(a * a, 1)), tf.reduce_sum(a, 1), tf.reduce_max(a, 1)], -1))
        del tape
        return tf.stack(stats, axis=1), g

    @staticmethod
    def _pair_slopes(x, g, valid):
        """(K, 3) maxima of |g(x_a) - g(x_b)| / ||x_a - x_b|| over pairs (0,1), (2,3), ...

        Columns are (L2, L1, Li): distances in the L2, Linf and L1 norms respectively, so each
        column bounds the same Lipschitz constant as G2, G1 and Gi (mean value theorem).
        """
        import tensorflow as tf

        pairs = tf.shape(x)[0] // 2
        flat = tf.reshape(x, tf.stack([tf.shape(x)[0], -1]))
        dx = tf.abs(flat[0 : 2 * pairs : 2] - flat[1 : 2 * pairs : 2])
        dist = tf.stack([tf.sqrt(tf.reduce_sum(dx * dx, 1)), tf.reduce_max(dx, 1), tf.reduce_sum(dx, 1)], -1)
        dg = tf.abs(g[0 : 2 * pairs : 2] - g[1 : 2 * pairs : 2])  # (P, K)
        ok = tf.logical_and(2 * tf.range(pairs) + 1 < valid, dist[:, 0] > 0)
        slopes = dg[:, :, None] / tf.where(dist > 0, dist, 1.0)[:, None, :]
        slopes = tf.where(ok[:, None, None], slopes, 0.0)
        return tf.reduce_max(slopes, axis=0)

    def _batch_maxima(self, x, c, targets, valid, num_targets: int):
        import tensorflow as tf

        norms, g = self._grad_norms(x, c, targets, num_targets)
        mask = tf.range(tf.shape(x)[0]) < valid
        gmax = tf.reduce_max(tf.where(mask[:, None, None], norms, 0.0), axis=0)
        if self.compute_slope:
            smax = self._pair_slopes(x, g, valid)
        else:
            smax = tf.zeros_like(gmax)
        return gmax, smax

    def _replicated_maxima(self, x, c, targets, valid, num_targets: int):
        """`_batch_maxima` with the batch split into one shard per replica, maxima merged."""
        import tensorflow as tf

        replicas = self.strategy.num_replicas_in_sync
        # Even shards keep the slope pairs (0, 1), (2, 3), ... inside one replica.
        shard = ((tf.shape(x)[0] + replicas - 1) // replicas + 1) // 2 * 2

        def on_replica(x, valid):
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            part = x[rid * shard : (rid + 1) * shard]
            return self._batch_maxima(part, c, targets, valid - rid * shard, num_targets)

        gmax, smax = self.strategy.run(on_replica, args=(x, valid))
        local = self.strategy.experimental_local_results
        return (tf.reduce_max(tf.stack(local(gmax)), 0), tf.reduce_max(tf.stack(local(smax)), 0))

    def _loop(self, get_batch, nbatches, c, targets, num_targets: int):
        """Run get_batch(b) -> (x, valid, radius) for b < nbatches inside the graph, keeping maxima.

        Returns the (K, 3) gradient and slope maxima and the largest sample radius.
        """
        import tensorflow as tf

        gmax = tf.zeros([num_targets, 3])
        smax = tf.zeros([num_targets, 3])
        rmax = tf.constant(0.0)
        maxima = self._batch_maxima if self.strategy is None else self._replicated_maxima
        if nbatches == 1:  # no while_loop: its per-call cost is visible next to small models
            x, valid, radius = get_batch(tf.constant(0))
            return (*maxima(x, c, targets, valid, num_targets), radius)
        for b in tf.range(nbatches):
            x, valid, radius = get_batch(b)
            bg, bs = maxima(x, c, targets, valid, num_targets)
            gmax = tf.maximum(gmax, bg)
            smax = tf.maximum(smax, bs)
            rmax = tf.maximum(rmax, radius)
        return gmax, smax, rmax

    def _draw_points(self, x0, seed, norm, count: int, scale, valid=None):
        """`count` points x0 + delta, delta in the scaled `norm` ball, clipped to the input range,
        and the largest ||delta|| (before clipping) among the first `valid` of them."""
        import tensorflow as tf

        delta = tf_perturbations(seed, norm, count, int(np.prod(x0.shape)), scale)
        radii = tf_norms(delta, norm)
        if valid is not None:
            radii = tf.where(tf.range(count) < valid, radii, 0.0)
        points = tf.clip_by_value(x0[None] + tf.reshape(delta, (count, *x0.shape)), *self.input_range)
        return points, tf.reduce_max(radii)

    def sample_points(self, x0: np.ndarray, image_id: int, iteration: int, batch_index: int, count: int,
                      sample_norm: str = "l2", radius: float | None = None) -> np.ndarray:
        """The exact points the compiled fast path evaluates for one batch (for inspection and tests)."""
        import tensorflow as tf

        norm = by_flag(sample_norm)
        scale = (float(radius), float(radius)) if radius else norm.default_scale
        seed = tf.constant(self._seed_key(image_id), tf.int64)
        seed = self._batch_seed(tf.random.experimental.stateless_fold_in(seed, iteration), batch_index)
        return self._draw_points(tf.constant(x0, tf.float32), seed, norm, count, scale)[0].numpy()

    @staticmethod
    def _batch_seed(iteration_seed, batch_index):
        """The seed of one batch of an iteration: every sampler path draws the same points."""
        import tensorflow as tf

        return tf.random.experimental.stateless_fold_in(iteration_seed, batch_index)

    def _batches(self, nsamp: int) -> tuple[int, int]:
        """(points per model call, calls per iteration) for `nsamp` points."""
        batch = min(self.batch_size, nsamp)
        return batch, math.ceil(nsamp / batch)

    def _cached(self, key: tuple, build: Callable[[], Callable], nsamp: int | None = None,
                fixed: int = 0) -> Callable:
        """A compiled function per settings key, built (and traced) once.

        With `nsamp`, the function is a sampling step: it is traced now and refused (UsageError)
        if one of its batches would not fit in memory, before it ever runs.
        """
        if key not in self._compiled:
            fn = build()
            if nsamp is not None:
                self._check_memory(fn, nsamp, fixed)
            self._compiled[key] = fn
        return self._compiled[key]

    def _check_memory(self, fn, nsamp: int, fixed: int) -> None:
        """Compare the traced step's peak of live tensors with the memory available."""
        import tensorflow as tf

        from cleverscore.sampling.memory import check_batch_fits, graph_peak_bytes

        batch, nbatches = self._batches(nsamp)
        graph = fn.get_concrete_function().graph  # the call reuses this trace
        peak = graph_peak_bytes(graph, batch, nbatches)
        device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
        if self.strategy is not None:  # each replica holds its shard of the batch
            peak //= self.strategy.num_replicas_in_sync
        check_batch_fits(peak, batch, nbatches, fixed, device)

    def _sampled_iteration(self, shape, nsamp: int, num_targets: int, flag: str, scale):
        """The compiled fast path: one iteration with samples drawn inside the graph."""
        key = ("graph", shape, nsamp, num_targets, flag, scale, self.batch_size, self.compute_slope, self.input_range)
        return self._cached(key, lambda: self._build_sampled_iteration(shape, nsamp, num_targets, flag, scale), nsamp)

    def _build_sampled_iteration(self, shape, nsamp: int, num_targets: int, flag: str, scale):
        import tensorflow as tf

        norm = by_flag(flag)
        batch, nbatches = self._batches(nsamp)

        @tf.function(input_signature=[
            tf.TensorSpec(shape, tf.float32), tf.TensorSpec([], tf.int32), tf.TensorSpec([num_targets], tf.int32),
            tf.TensorSpec([2], tf.int64), tf.TensorSpec([], tf.int32),
        ])
        def iteration(x0, c, targets, seed, it):
            it_seed = tf.random.experimental.stateless_fold_in(seed, it)

            def get_batch(b):
                valid = nsamp - b * batch
                x, radius = self._draw_points(x0, self._batch_seed(it_seed, b), norm, batch, scale, valid)
                return x, valid, radius

            return self._loop(get_batch, nbatches, c, targets, num_targets)

        return iteration

    def _given_iteration(self, shape, nsamp: int, num_targets: int):
        """The compiled step for samples drawn elsewhere (the worker pool)."""
        key = ("given", shape, nsamp, num_targets, self.batch_size, self.compute_slope)
        # The pool's two shared-memory buffers and the tensor copied from one hold Nsamps points each.
        fixed = 3 * nsamp * int(np.prod(shape)) * 4
        return self._cached(key, lambda: self._build_given_iteration(shape, nsamp, num_targets), nsamp, fixed)

    def _build_given_iteration(self, shape, nsamp: int, num_targets: int):
        import tensorflow as tf

        batch, nbatches = self._batches(nsamp)

        @tf.function(input_signature=[
            tf.TensorSpec((nsamp, *shape), tf.float32), tf.TensorSpec([], tf.int32),
            tf.TensorSpec([num_targets], tf.int32),
        ])
        def iteration(samples, c, targets):
            def get_batch(b):
                x = samples[b * batch : (b + 1) * batch]
                return x, tf.shape(x)[0], tf.constant(0.0)  # the pool measures the radius

            return self._loop(get_batch, nbatches, c, targets, num_targets)

        return iteration

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits of a batch, in batches of `batch_size`."""
        import tensorflow as tf

        logits = self._cached(("predict",), lambda: tf.function(self._logits, reduce_retracing=True))
        step = self.batch_size or 1024
        outs = [np.asarray(logits(tf.constant(x[i : i + step], tf.float32))) for i in range(0, len(x), step)]
        return np.concatenate(outs)

    # ----------------------------------------------------------------------------------------
    def estimate(self, x_0: np.ndarray, true_label: int, target_label: int, Nsamp: int, Niters: int,
                 sample_norm: str = "l2", transform: str | None = None, order: int = 1,
                 image_id: int = 0, radius: float | None = None) -> list:
        """Collect maxima for one target.

        Returns [L2_max, L1_max, Li_max, G2_max, G1_max, Gi_max, g_x0, pred] for order 1 and
        [H2_max, g_x0, g_x0_grad_2_norm, pred] for order 2.
        """
        if order == 2:
            if transform:
                raise UsageError("order 2 cannot be combined with a transform")
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
        """Collect maxima for several targets of one image on shared samples.

        Targets are processed MAX_TARGETS_PER_PASS at a time; every pass sees the same samples.
        `progress(niters, nsamp)`, if given, makes a callback that is told each finished iteration.
        With `rel_tol` > 0 each target stops on its own once the relative half-width of its L2
        score's 95% interval is at most `rel_tol` (checked after clever_interval.BURN_IN
        iterations and then every CHECK_EVERY); `Niters` is the cap. Its result then holds only
        the iterations it used. The samples do not depend on which targets are still running,
        so the same seed gives the same stopping points.
        """
        if self.model is None:
            raise UsageError("call load_model before estimate")
        if Nsamp < 1 or Niters < 1:
            raise UsageError("Nsamps and Niters must be positive")
        x0 = np.asarray(x_0, dtype=np.float32)
        norm = by_flag(sample_norm)
        scale = (float(radius), float(radius)) if radius else norm.default_scale
        transform = transform or None  # the original passes "" for no transformation
        pred = self.predict(x0[None])[0]
        if not np.all(np.isfinite(pred)):
            raise NonFiniteError(f"logits at x0 are not finite for image {image_id}")
        results = []
        targets = [int(t) for t in target_labels]
        for start in range(0, len(targets), MAX_TARGETS_PER_PASS):
            chunk = targets[start : start + MAX_TARGETS_PER_PASS]
            tick = progress(Niters, Nsamp) if progress else None
            margins = [float(pred[true_label] - pred[t]) for t in chunk]
            stop = StoppingRule(rel_tol, margins) if rel_tol > 0 else None
            gmax, smax, times, errors, radii = self._collect(x0, int(true_label), chunk, Nsamp, Niters, norm.flag,
                                                             scale, transform, image_id, tick, stop)
            for k, t in enumerate(chunk):
                used = stop.used[k] if stop else Niters
                ball = SampledBall(norm.flag, float(radii[:used].max()), int(x0.size))  # the samples it saw
                results.append(TargetResult(t, gmax[:used, k], smax[:used, k], margins[k], pred, times[:used],
                                            errors.get(k), "rel_tol" if used < Niters else "max_iters", ball=ball))
        return results

    def _hessian_iteration(self, shape, nsamp: int, flag: str, scale):
        """The compiled order-2 step: per-sample extreme eigenvalues, the largest in magnitude kept."""
        key = ("hessian", shape, nsamp, flag, scale, self.batch_size, self.input_range)
        return self._cached(key, lambda: self._build_hessian_iteration(shape, nsamp, flag, scale), nsamp)

    def _build_hessian_iteration(self, shape, nsamp: int, flag: str, scale):
        import tensorflow as tf

        from cleverscore.sampling.second_order import extreme_eigenvalues

        norm = by_flag(flag)
        batch, nbatches = self._batches(nsamp)

        @tf.function(input_signature=[
            tf.TensorSpec(shape, tf.float32), tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.int32),
            tf.TensorSpec([2], tf.int64), tf.TensorSpec([], tf.int32),
        ])
        def iteration(x0, c, j, seed, it):
            it_seed = tf.random.experimental.stateless_fold_in(seed, it)
            best = tf.constant(0.0)
            rmax = tf.constant(0.0)
            for b in tf.range(nbatches):
                b_seed = self._batch_seed(it_seed, b)
                # the same points as order 1
                x, radius = self._draw_points(x0, b_seed, norm, batch, scale, nsamp - b * batch)
                rmax = tf.maximum(rmax, radius)
                v0 = tf.random.stateless_normal(tf.shape(x), tf.random.experimental.stateless_fold_in(b_seed, 7),
                                                alg="philox")
                _, negative = extreme_eigenvalues(self._logits, x, c, j, v0)
                negative = tf.where(tf.range(batch) < nsamp - b * batch, negative, 0.0)
                pick = negative[tf.argmax(tf.abs(negative))]
                best = tf.where(tf.abs(pick) > tf.abs(best), pick, best)
            return best, rmax

        return iteration

    def estimate_hessian(self, x_0: np.ndarray, true_label: int, target_label: int, Nsamp: int, Niters: int,
                         sample_norm: str = "l2", image_id: int = 0, radius: float | None = None,
                         progress: Callable[[int, int], Callable[[int], None]] | None = None) -> HessianResult:
        """Order 2: per-iteration curvature maxima of g for one target (spec section 8)."""
        import tensorflow as tf

        if self.model is None:
            raise UsageError("call load_model before estimate")
        x0 = np.asarray(x_0, dtype=np.float32)
        norm = by_flag(sample_norm)
        scale = (float(radius), float(radius)) if radius else norm.default_scale
        pred = self.predict(x0[None])[0]
        x0_t, c_t, j_t = tf.constant(x0), tf.constant(int(true_label)), tf.constant(int(target_label))
        grad_norms = self._cached(("grad_norms_x0",), lambda: tf.function(
            lambda x, c, j: self._grad_norms(x, c, j[None], 1)[0], reduce_retracing=True))
        grad_norm_x0 = float(grad_norms(x0_t[None], c_t, j_t).numpy()[0, 0, 0])
        step = self._hessian_iteration(x0.shape, Nsamp, norm.flag, scale)
        seed = tf.constant(self._seed_key(image_id), tf.int64)
        h2 = np.zeros(Niters, np.float32)
        times = np.zeros(Niters)
        radii = []  # kept as tensors: no extra host copy per iteration
        tick = progress(Niters, Nsamp) if progress else None
        with self._out_of_memory_as_error(Nsamp):
            for it in range(Niters):
                begin = time.perf_counter()
                value, reach = step(x0_t, c_t, j_t, seed, tf.constant(it))
                h2[it] = value.numpy()
                radii.append(reach)
                times[it] = time.perf_counter() - begin
                if not np.isfinite(h2[it]):
                    raise NonFiniteError(f"Hessian estimates are NaN or Inf for image {image_id}, target {target_label}")
                if tick:
                    tick(it + 1)
        ball = SampledBall(norm.flag, float(tf.reduce_max(tf.stack(radii))), int(x0.size))
        return HessianResult(int(target_label), h2, float(pred[true_label] - pred[target_label]), grad_norm_x0,
                             pred, times, ball)

    def search_maxima(self, x_0: np.ndarray, true_label: int, target_labels: Sequence[int], steps: int,
                      sample_norm: str = "l2", radius: float | None = None, image_id: int = 0) -> np.ndarray:
        """(targets, 3) largest gradient norms (G2, G1, Gi) found by ascent inside the sampled ball.

        Starts from the gradient_search.STARTS best of one batch of fresh samples (drawn with an
        iteration index no collection uses) per target and norm; see gradient_search.py.
        """
        import tensorflow as tf

        from cleverscore.sampling.search import STARTS, build_search

        norm = by_flag(sample_norm)
        scale = (float(radius), float(radius)) if radius else norm.default_scale
        search = self._cached(("search", x_0.shape, norm.flag, scale[1], steps, self.input_range),
                              lambda: build_search(self._logits, norm, scale[1], self.input_range, steps))
        x0 = tf.constant(np.asarray(x_0, np.float32))
        points = tf.constant(self.sample_points(x_0, image_id, SEARCH_ITERATION, 0, self.batch_size, sample_norm,
                                                radius))
        c = tf.constant(int(true_label))
        targets = [int(j) for j in target_labels]
        norms, _ = self._grad_norms(points, c, tf.constant(targets), len(targets))  # one forward for all targets
        found = np.zeros((len(targets), 3), np.float32)
        for k, j in enumerate(targets):
            for col in range(3):
                best = tf.argsort(norms[:, k, col], direction="DESCENDING")[:STARTS]
                found[k, col] = search(x0, tf.gather(points, best), c, tf.constant(j), tf.constant(col)).numpy()
        return found

    def _seed_key(self, image_id: int) -> tuple[int, int]:
        return (self.seed, int(image_id))

    def _collect(self, x0, c, targets, nsamp, niters, flag, scale, transform, image_id, tick=None, stop=None):
        import tensorflow as tf

        k = len(targets)
        errors: dict[int, str] = {}
        gmax = np.zeros((niters, k, 3), np.float32)
        smax = np.zeros((niters, k, 3), np.float32)
        times = np.zeros(niters)
        c_t = tf.constant(c, tf.int32)
        radii = []  # per-iteration largest sample radius: tensors (graph) or floats (pool), fetched once at the end
        if self.sampler == "graph" and transform is None:
            x0_t = tf.constant(x0)
            seed = tf.constant(self._seed_key(image_id), tf.int64)
            active = list(range(k))  # targets still sampling; a stopped target leaves the compiled step
            step = self._sampled_iteration(x0.shape, nsamp, k, flag, scale)
            t_t = tf.constant(targets, tf.int32)
            with self._out_of_memory_as_error(nsamp):
                for it in range(niters):
                    begin = time.perf_counter()
                    g, s, reach = step(x0_t, c_t, t_t, seed, tf.constant(it, tf.int32))
                    gmax[it, active], smax[it, active] = g.numpy(), s.numpy()
                    radii.append(reach)
                    times[it] = time.perf_counter() - begin
                    still = self._after_iteration(it, gmax, targets, image_id, errors, tick, stop, active, niters)
                    if not still:
                        break
                    if still != active:  # only when a target stops: a step compiled for the rest
                        active = still
                        step = self._sampled_iteration(x0.shape, nsamp, len(active), flag, scale)
                        t_t = tf.constant([targets[a] for a in active], tf.int32)
        else:
            step = self._given_iteration(x0.shape, nsamp, k)
            t_t = tf.constant(targets, tf.int32)
            pool = self._get_pool()
            begin = time.perf_counter()
            active = list(range(k))
            with self._out_of_memory_as_error(nsamp):
                for it, (samples, reach) in enumerate(pool.iterations(x0, nsamp, niters, flag, scale,
                                                                      self._seed_key(image_id), self.input_range,
                                                                      transform)):
                    g, s, _ = step(tf.constant(samples), c_t, t_t)
                    gmax[it], smax[it] = g.numpy(), s.numpy()
                    radii.append(reach)
                    now = time.perf_counter()
                    times[it], begin = now - begin, now
                    # Every target stays in this step (it is compiled for all of them); a stopped
                    # target's later maxima are computed and then cut off.
                    active = self._after_iteration(it, gmax, targets, image_id, errors, tick, stop, active, niters)
                    if not active:
                        break
        return gmax, smax, times, errors, tf.stack(radii).numpy()

    def _after_iteration(self, it, gmax, targets, image_id, errors, tick, stop, active, niters) -> list[int]:
        """Check finiteness, report progress and apply --rel_tol; the targets still sampling."""
        self._check_finite(gmax[it], targets, image_id, it, errors)
        if tick:
            tick(it + 1)
        if stop is not None:
            active = stop.update(gmax[: it + 1], active)
            if not active and tick:
                tick(niters)
        return active

    def _out_of_memory_as_error(self, nsamp: int):
        """A context that turns TensorFlow's multi-line out-of-memory report into one CleverError line."""
        import tensorflow as tf

        batch, _ = self._batches(nsamp)

        @contextlib.contextmanager
        def guard():
            try:
                yield
            except tf.errors.ResourceExhaustedError as err:
                first = next((ln.strip() for ln in str(err.message).splitlines() if ln.strip()), "")
                raise CleverError(f"out of memory in a batch of {batch} points ({first[:200]}); "
                                  "lower -b/--batch_size") from None

        return guard()

    @staticmethod
    def _check_finite(values: np.ndarray, targets, image_id: int, it: int, errors: dict[int, str]) -> None:
        """Record the first non-finite iteration of each target; the others carry on."""
        for k in np.flatnonzero(~np.all(np.isfinite(values), axis=1)):
            errors.setdefault(int(k), f"gradients are NaN or Inf for image {image_id}, target {targets[k]}, "
                                      f"iteration {it}")
        if len(errors) == len(targets):
            raise NonFiniteError("; ".join(errors[k] for k in sorted(errors)))

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
