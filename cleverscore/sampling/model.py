"""The classifier as the sampler sees it: logits of a batch, and the gradient norms of the margins g_j.

`ModelAdapter` wraps any Keras model or callable mapping a batch in its input range to logits,
with the batch size and the devices a batch is split across. Every compiled step, the search
and the second-order bound take their gradients through `grad_norms`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from cleverscore.errors import UsageError

DEFAULT_BATCH_SIZE = {"mnist": 1024, "cifar": 1024, "imagenet": 32}


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
        raise UsageError(f"`devices` {devices} asked for, but only {len(pool)} device(s) are visible")
    return tf.distribute.MirroredStrategy(pool[:devices])


class ModelAdapter:
    """A classifier with its input range, batch size and devices.

    Args:
        model: a Keras model or a callable from a batch in `input_range` to logits.
        batch_size: points per forward/backward pass.
        input_range: the range the model takes; samples are clipped to it.
        devices: split every batch across this many devices (0: all visible GPUs).
    """

    def __init__(self, model, batch_size: int, input_range: tuple[float, float] = (-0.5, 0.5), devices: int = 1):
        self.model = model
        self.batch_size = batch_size
        self.input_range = (float(input_range[0]), float(input_range[1]))
        self.strategy = make_strategy(devices)
        self._predict: Callable | None = None

    def logits(self, x):
        import keras

        if isinstance(self.model, keras.Model):
            return self.model(x, training=False)
        return self.model(x)

    def batches(self, nsamp: int) -> tuple[int, int]:
        """(points per model call, calls per iteration) for `nsamp` points."""
        batch = min(self.batch_size, nsamp)
        return batch, math.ceil(nsamp / batch)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits of a batch, in batches of `batch_size`."""
        import tensorflow as tf

        if self._predict is None:
            self._predict = tf.function(self.logits, reduce_retracing=True)
        step = self.batch_size or 1024
        outs = [np.asarray(self._predict(tf.constant(x[i : i + step], tf.float32))) for i in range(0, len(x), step)]
        return np.concatenate(outs)

    def grad_norms(self, x, c, targets, num_targets: int):
        """(B, K, 3) norms (L2, L1, Linf) of grad g_k and (B, K) values of g_k at a batch x."""
        import tensorflow as tf

        with tf.GradientTape(persistent=num_targets > 1) as tape:
            tape.watch(x)
            logits = self.logits(x)
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
