"""Iterative FGSM (Kurakin et al., 2017) in L2 or Linf, with the smallest epsilon of a fixed grid.

For each epsilon of a geometric grid (ascending), the images not yet fooled take `steps` steps
of size eps/steps down the target's cross-entropy (up the true class's, untargeted): the
normalised gradient for L2, its sign for Linf, projected on the eps ball and the box. The first
iterate that meets the criterion is the result. With the grid ratio r, the distortion found is
at most about r (relative) above the epsilon needed: the baseline the minimal-distortion attacks
are measured against.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cleverscore.attacks.criteria import as_criterion
from cleverscore.attacks.distances import distance
from cleverscore.attacks.result import AttackResult, verified
from cleverscore.attacks.steps import check_budget
from cleverscore.errors import UsageError
from cleverscore.norms import BY_FLAG

IFGSM_STEPS = 100
IFGSM_GRID = {"l2": np.geomspace(1e-2, 20.0, 40), "li": np.geomspace(1e-3, 0.5, 40)}


def ifgsm(logits_fn: Callable, x: np.ndarray, criterion, norm: str, *,
          grid: np.ndarray | None = None, steps: int = IFGSM_STEPS,
          box: tuple[float, float] = (-0.5, 0.5)) -> AttackResult:
    """I-FGSM in L2 (`norm='l2'`) or Linf (`'li'`) with the best epsilon of a grid (module docstring)."""
    import tensorflow as tf

    if norm not in IFGSM_GRID:
        raise UsageError(f"I-FGSM norm must be l2 or li, got {norm!r}")
    check_budget(steps=steps)
    criterion = as_criterion(criterion)
    geometry = distance(BY_FLAG[norm])
    grid = IFGSM_GRID[norm] if grid is None else np.asarray(grid)
    x = np.asarray(x, np.float32)
    size = int(np.prod(x.shape[1:]))
    sign = 1.0 if criterion.targeted else -1.0

    @tf.function(input_signature=[tf.TensorSpec([None, size], tf.float32), tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([], tf.float32)])
    def attack(x0, labels, eps):
        low, high = box[0] - x0, box[1] - x0
        radius = tf.fill([tf.shape(x0)[0], 1], eps)

        def body(k, xk, found, best):
            with tf.GradientTape() as tape:
                tape.watch(xk)
                logits = logits_fn(tf.reshape(xk, [-1, *x.shape[1:]]))
                loss = sign * tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            grad = tape.gradient(loss, xk, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            delta = xk - eps / steps * geometry.steepest(grad, low, high) - x0
            xk = x0 + geometry.project(delta, radius, low, high)
            hit = tf.logical_and(tf.logical_not(found),
                                 criterion.tf_adversarial(logits_fn(tf.reshape(xk, [-1, *x.shape[1:]])), labels))
            best = tf.where(hit[:, None], xk, best)
            return k + 1, xk, tf.logical_or(found, hit), best

        found = tf.zeros(tf.shape(labels), tf.bool)
        _, _, found, best = tf.while_loop(
            lambda k, _x, f, _b: tf.logical_and(k < steps, tf.logical_not(tf.reduce_all(f))),
            body, (tf.constant(0), x0, found, x0))
        return found, best

    flat = x.reshape(len(x), -1)
    success = np.zeros(len(x), bool)
    best = flat.copy()
    for eps in grid:
        todo = np.flatnonzero(~success)
        if not len(todo):
            break
        found, adv = attack(tf.constant(flat[todo]), tf.constant(criterion.labels[todo]), tf.constant(eps, tf.float32))
        found = found.numpy()
        best[todo[found]] = adv.numpy()[found]
        success[todo[found]] = True
    return verified(logits_fn, x, best.reshape(x.shape), success, criterion, box)
