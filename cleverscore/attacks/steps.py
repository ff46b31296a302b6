"""What the attacks share inside their loops: the model on flat inputs, the margin and its gradient,
and the check of their budgets."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from cleverscore.attacks.criteria import Criterion
from cleverscore.errors import UsageError

# Compiled attack loops are kept per (model, image shape, kind of criterion, norm, budget): --exact
# and attacks.py call an attack once per image or batch, and tracing a loop costs seconds.
GRAPH_CACHE_SIZE = 16


def graph_cache(build: Callable) -> Callable:
    """Memoise a builder of compiled loops on its (hashable) arguments."""
    return functools.lru_cache(maxsize=GRAPH_CACHE_SIZE)(build)


def criterion_kind(targeted: bool) -> Criterion:
    """A criterion without labels: what a compiled loop needs (the labels come in as a tensor)."""
    return Criterion(np.zeros(0, np.int32), targeted)


def check_budget(**counts: int) -> None:
    """UsageError naming the first count (iterations, restarts, ...) that is not a positive integer."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"`{name}` must be a positive integer, got {value!r}")


def check_fraction(**values: float) -> None:
    """UsageError naming the first value that is not a finite number strictly between 0 and 1."""
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and 0.0 < value < 1.0):
            raise UsageError(f"`{name}` must be a number between 0 and 1, got {value!r}")


def flat_model(logits_fn: Callable, image_shape: tuple[int, ...]) -> Callable:
    """The logits of flat (points, size) inputs: the attacks move points as flat rows."""
    import tensorflow as tf

    def logits(flat):
        return logits_fn(tf.reshape(flat, [-1, *image_shape]))

    logits.image_shape = tuple(image_shape)
    return logits


def margin_and_gradient(model: Callable, criterion: Criterion, points, labels):
    """At flat points: the criterion's margin, its gradient and whether each point is adversarial.

    A model that cuts its gradient (stop_gradient, a non-differentiable step) gives a zero gradient,
    not an error: the attacks then fail there, which the masking check (`best.masking_counts`) shows."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(points)
        logits = model(points)
        margin = criterion.tf_margin(logits, labels)
    grad = tape.gradient(margin, points, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return margin, grad, criterion.tf_adversarial(logits, labels)
