"""The compiled sampling steps: one whole iteration (draw, clip, forward, backward per target, norms,
maxima) as one TensorFlow function, built and traced once per setting and checked against memory.

`sampled_iteration` draws its samples inside the graph (the default sampler); `given_iteration`
takes samples drawn elsewhere (the shared-memory worker pool). Both return, per target, the
maxima of the three gradient norms and of the slopes, and the largest sample radius.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np

from cleverscore.errors import CleverError
from cleverscore.norms import LpNorm
from cleverscore.sampling.balls import tf_norms, tf_perturbations
from cleverscore.sampling.model import ModelAdapter


def batch_seed(iteration_seed, batch_index):
    """The seed of one batch of an iteration: every sampler path draws the same points."""
    import tensorflow as tf

    return tf.random.experimental.stateless_fold_in(iteration_seed, batch_index)


def iteration_seed(seed_key: tuple[int, int], iteration):
    """The seed of one iteration of an image: (run seed, image id) folded with the iteration index."""
    import tensorflow as tf

    return tf.random.experimental.stateless_fold_in(tf.constant(seed_key, tf.int64), iteration)


def draw_points(x0, seed, norm: LpNorm, count: int, scale, input_range, valid=None):
    """`count` points x0 + delta, delta in the scaled `norm` ball, clipped to the input range,
    and the largest ||delta|| (before clipping) among the first `valid` of them."""
    import tensorflow as tf

    delta = tf_perturbations(seed, norm, count, int(np.prod(x0.shape)), scale)
    radii = tf_norms(delta, norm)
    if valid is not None:
        radii = tf.where(tf.range(count) < valid, radii, 0.0)
    points = tf.clip_by_value(x0[None] + tf.reshape(delta, (count, *x0.shape)), *input_range)
    return points, tf.reduce_max(radii)


def pair_slopes(x, g, valid):
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


def out_of_memory_as_error(batch: int):
    """A context that turns TensorFlow's multi-line out-of-memory report into one CleverError line."""
    import tensorflow as tf

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except tf.errors.ResourceExhaustedError as err:
            first = next((ln.strip() for ln in str(err.message).splitlines() if ln.strip()), "")
            raise CleverError(f"out of memory in a batch of {batch} points ({first[:200]}); lower `batch_size`") from None

    return guard()


class CompiledSteps:
    """The compiled functions of one model, built once per setting and kept.

    Args:
        model: the ModelAdapter the steps differentiate.
        compute_slope: the steps also record slope maxima between pairs of samples.
    """

    def __init__(self, model: ModelAdapter, compute_slope: bool = False):
        self.model = model
        self.compute_slope = compute_slope
        self._compiled: dict[tuple, Callable] = {}

    def cached(self, key: tuple, build: Callable[[], Callable], nsamp: int | None = None, fixed: int = 0) -> Callable:
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

        batch, nbatches = self.model.batches(nsamp)
        graph = fn.get_concrete_function().graph  # the call reuses this trace
        peak = graph_peak_bytes(graph, batch, nbatches)
        device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"
        if self.model.strategy is not None:  # each replica holds its shard of the batch
            peak //= self.model.strategy.num_replicas_in_sync
        check_batch_fits(peak, batch, nbatches, fixed, device)

    # -- the body shared by both steps ------------------------------------------------------
    def _batch_maxima(self, x, c, targets, valid, num_targets: int):
        import tensorflow as tf

        norms, g = self.model.grad_norms(x, c, targets, num_targets)
        mask = tf.range(tf.shape(x)[0]) < valid
        gmax = tf.reduce_max(tf.where(mask[:, None, None], norms, 0.0), axis=0)
        smax = pair_slopes(x, g, valid) if self.compute_slope else tf.zeros_like(gmax)
        return gmax, smax

    def _replicated_maxima(self, x, c, targets, valid, num_targets: int):
        """`_batch_maxima` with the batch split into one shard per replica, maxima merged."""
        import tensorflow as tf

        strategy = self.model.strategy
        replicas = strategy.num_replicas_in_sync
        # Even shards keep the slope pairs (0, 1), (2, 3), ... inside one replica.
        shard = ((tf.shape(x)[0] + replicas - 1) // replicas + 1) // 2 * 2

        def on_replica(x, valid):
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            part = x[rid * shard : (rid + 1) * shard]
            return self._batch_maxima(part, c, targets, valid - rid * shard, num_targets)

        gmax, smax = strategy.run(on_replica, args=(x, valid))
        local = strategy.experimental_local_results
        return (tf.reduce_max(tf.stack(local(gmax)), 0), tf.reduce_max(tf.stack(local(smax)), 0))

    def _loop(self, get_batch, nbatches, c, targets, num_targets: int):
        """Run get_batch(b) -> (x, valid, radius) for b < nbatches inside the graph, keeping maxima.

        Returns the (K, 3) gradient and slope maxima and the largest sample radius.
        """
        import tensorflow as tf

        gmax = tf.zeros([num_targets, 3])
        smax = tf.zeros([num_targets, 3])
        rmax = tf.constant(0.0)
        maxima = self._batch_maxima if self.model.strategy is None else self._replicated_maxima
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

    # -- the two steps ----------------------------------------------------------------------
    def sampled_iteration(self, shape, nsamp: int, num_targets: int, norm: LpNorm, scale) -> Callable:
        """The compiled fast path: step(x0, c, targets, seed, it) with samples drawn inside the graph."""
        key = ("graph", shape, nsamp, num_targets, norm, scale, self.model.batch_size, self.compute_slope,
               self.model.input_range)
        return self.cached(key, lambda: self._build_sampled_iteration(shape, nsamp, num_targets, norm, scale), nsamp)

    def _build_sampled_iteration(self, shape, nsamp: int, num_targets: int, norm: LpNorm, scale):
        import tensorflow as tf

        batch, nbatches = self.model.batches(nsamp)
        input_range = self.model.input_range

        @tf.function(input_signature=[
            tf.TensorSpec(shape, tf.float32), tf.TensorSpec([], tf.int32), tf.TensorSpec([num_targets], tf.int32),
            tf.TensorSpec([2], tf.int64), tf.TensorSpec([], tf.int32),
        ])
        def iteration(x0, c, targets, seed, it):
            it_seed = tf.random.experimental.stateless_fold_in(seed, it)  # as iteration_seed, on a seed tensor

            def get_batch(b):
                valid = nsamp - b * batch
                x, radius = draw_points(x0, batch_seed(it_seed, b), norm, batch, scale, input_range, valid)
                return x, valid, radius

            return self._loop(get_batch, nbatches, c, targets, num_targets)

        return iteration

    def given_iteration(self, shape, nsamp: int, num_targets: int) -> Callable:
        """The compiled step step(samples, c, targets) for samples drawn elsewhere (the worker pool)."""
        key = ("given", shape, nsamp, num_targets, self.model.batch_size, self.compute_slope)
        # The pool's two shared-memory buffers and the tensor copied from one hold Nsamps points each.
        fixed = 3 * nsamp * int(np.prod(shape)) * 4
        return self.cached(key, lambda: self._build_given_iteration(shape, nsamp, num_targets), nsamp, fixed)

    def _build_given_iteration(self, shape, nsamp: int, num_targets: int):
        import tensorflow as tf

        batch, nbatches = self.model.batches(nsamp)

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


def sample_batch(x0: np.ndarray, seed_key: tuple[int, int], iteration: int, batch_index: int, count: int,
                 norm: LpNorm, scale, input_range) -> np.ndarray:
    """The exact points the compiled step evaluates for one batch of one iteration."""
    import tensorflow as tf

    seed = batch_seed(iteration_seed(seed_key, iteration), batch_index)
    return draw_points(tf.constant(x0, tf.float32), seed, norm, count, scale, input_range)[0].numpy()
