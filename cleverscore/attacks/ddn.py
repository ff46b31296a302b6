"""DDN, decoupled direction and norm (Rony et al., CVPR 2019): a minimal-L2 attack without a constant to search.

Each step moves the perturbation down the normalised gradient of the criterion's margin (the
paper uses the cross-entropy; the margin found equal or smaller L2 distortions on 4 of 6 MNIST
CNN pairs, and the other attacks follow it too), then rescales it to a norm that shrinks by GAMMA
while the point is adversarial and grows by GAMMA while it is not: the norm settles on the
boundary as the direction improves. The step size anneals from 1 to 0.01 (cosine). The smallest
adversarial iterate is kept; `finished` then shortens it along its segment to the boundary.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from cleverscore.attacks.criteria import as_criterion
from cleverscore.attacks.distances import distance
from cleverscore.attacks.result import AttackResult, finished
from cleverscore.attacks.steps import check_budget, check_fraction, criterion_kind, flat_model, graph_cache
from cleverscore.norms import L2

DDN_STEPS = 1000  # steps per image; the norm needs a few hundred to settle after the direction
DDN_GAMMA = 0.05  # relative change of the norm per step
DDN_INITIAL_NORM = 1.0  # the first step's L2 norm (the box is 1 wide)
STEP_START, STEP_END = 1.0, 0.01  # the cosine-annealed step size


def ddn(logits_fn: Callable, x: np.ndarray, criterion, *, steps: int = DDN_STEPS, gamma: float = DDN_GAMMA,
        box: tuple[float, float] = (-0.5, 0.5)) -> AttackResult:
    """The closest L2 example DDN finds per image (see the module docstring).

    Args:
        criterion: a Criterion, or an array of target classes (targeted).
        steps: gradient steps per image; gamma: the norm's relative change per step.
    """
    import tensorflow as tf

    check_budget(steps=steps)
    check_fraction(gamma=gamma)
    criterion = as_criterion(criterion)
    x = np.asarray(x, np.float32)
    run = _compiled_run(logits_fn, x.shape[1:], criterion.targeted, steps, float(gamma), tuple(box))
    found, best = run(tf.constant(x.reshape(len(x), -1)), tf.constant(criterion.labels))
    return finished(logits_fn, x, best.numpy().reshape(x.shape), found.numpy(), criterion, box)


@graph_cache
def _compiled_run(logits_fn: Callable, image_shape: tuple[int, ...], targeted: bool, steps: int, gamma: float,
                  box: tuple[float, float]):
    """A tf.function (x0, labels) -> (found, closest example) per row."""
    import tensorflow as tf

    model, criterion, geometry = flat_model(logits_fn, image_shape), criterion_kind(targeted), distance(L2)

    @tf.function(input_signature=[tf.TensorSpec([None, int(np.prod(image_shape))], tf.float32),
                                  tf.TensorSpec([None], tf.int32)])
    def run(x0, labels):
        low, high = box[0] - x0, box[1] - x0
        widest = geometry.measure(tf.maximum(-low, high))

        def body(i, delta, norm, best, best_size):
            with tf.GradientTape() as tape:
                tape.watch(delta)
                logits = model(x0 + delta)
                loss = criterion.tf_margin(logits, labels)
            grad = tape.gradient(loss, delta, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            hit = criterion.tf_adversarial(logits, labels)
            size = geometry.measure(delta)
            closer = tf.logical_and(hit, size < best_size)
            best = tf.where(closer[:, None], delta, best)
            best_size = tf.where(closer, size, best_size)
            rate = STEP_END + (STEP_START - STEP_END) * (1 + tf.cos(math.pi * tf.cast(i, tf.float32) / steps)) / 2
            delta = delta - rate * geometry.steepest(grad, low - delta, high - delta)
            norm = tf.minimum(norm * tf.where(hit, 1.0 - gamma, 1.0 + gamma), widest)
            delta = delta * (norm / tf.maximum(geometry.measure(delta), 1e-30))[:, None]
            return i + 1, tf.clip_by_value(delta, low, high), norm, best, best_size

        start = (tf.zeros_like(x0), tf.fill(tf.shape(widest), DDN_INITIAL_NORM), tf.zeros_like(x0),
                 tf.fill(tf.shape(widest), np.inf))
        _, _, _, best, best_size = tf.while_loop(lambda i, *_: i < steps, body, (tf.constant(0), *start))
        return tf.math.is_finite(best_size), x0 + best

    return run
