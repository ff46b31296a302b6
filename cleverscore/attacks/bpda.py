"""The attacks' view of a model behind an input transformation (`--transform`), through BPDA.

The sampler evaluates a transformed model at transform(x) and takes the gradient there as if the
transformation were the identity (Backward Pass Differentiable Approximation: Athalye, Carlini and
Wagner, ICML 2018). `bpda_logits` gives the attacks the same function: its value is the model's
logits at the transformed input, its gradient the model's gradient there. Every example an attack
returns is checked through this function too, so it fools the defended model, not the bare one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np


@functools.lru_cache(maxsize=8)  # one function per model and transform: the attacks' graphs are cached on it
def bpda_logits(model: Callable, transform: str, box: tuple[float, float]) -> Callable:
    """x -> model(transform(x)), differentiated as model(x') at x' = transform(x) with d x'/dx = I.

    `transform` is one of `sampling.transforms.TRANSFORMS` (a one-line ValueError otherwise), applied
    in the model's input range `box` as the sampler applies it. Works eagerly and inside tf.function.
    """
    import tensorflow as tf

    from cleverscore.sampling.pool import apply_transform
    from cleverscore.sampling.transforms import get_transform

    get_transform(transform)  # refuse unknown names now, not inside a traced graph
    low, high = float(box[0]), float(box[1])

    def transformed(x: np.ndarray) -> np.ndarray:
        return apply_transform(transform, np.clip(x, low, high), (low, high))

    def logits(x):
        x = tf.convert_to_tensor(x, tf.float32)
        moved = tf.numpy_function(transformed, [x], tf.float32, stateful=False)
        moved = tf.ensure_shape(moved, x.shape)
        return model(x + tf.stop_gradient(moved - x))

    logits.transform = transform
    return logits
