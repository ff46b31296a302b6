"""FAB, the fast adaptive boundary attack (Croce & Hein, ICML 2020): steps across the linearised boundary.

At each iteration the decision boundary is replaced by the plane of its first-order expansion at
the current point (the criterion's margin; untargeted, the class whose plane is nearest). The
smallest step onto that plane (in the attack's norm, inside the box) is taken from the current
point and from the original image, and the two are mixed, leaning towards the image by at most
ALPHA_MAX, with a 5% overshoot. Whenever the point is adversarial it is recorded if it is the
closest yet, then pulled back towards the image (BETA), so the search keeps closing in on the
boundary from both sides. The first run starts at the image, the others at random points at half
the best distortion found so far. On piecewise-linear networks the plane is exact within a
linear region, which makes FAB a fast second opinion on minimal distortions.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cleverscore.attacks.criteria import Criterion, as_criterion
from cleverscore.attacks.distances import distance
from cleverscore.attacks.result import AttackResult, finished
from cleverscore.attacks.steps import check_budget, criterion_kind, flat_model, graph_cache, margin_and_gradient
from cleverscore.norms import LINF, LpNorm

FAB_ITERATIONS = 100  # steps per run, as in FAB's paper
FAB_RESTARTS = 3  # runs: the first from the image, the others from random points
ALPHA_MAX = 0.1  # the most a step leans towards the original image's own projection
ETA = 1.05  # overshoot past the linearised boundary
BETA = 0.9  # after a success, the point moves back to this share of its distortion
RESTART_SHARE = 0.5  # random restarts start at this share of the best distortion so far
# Targeted, the plane is that of a smoothed margin, SMOOTHING * logsumexp(z_k / SMOOTHING, k != t) - z_t:
# with the largest other logit alone, the plane jumps between classes that take turns on top and
# FAB cycles without reaching targets (least likely ones) that must beat several at once.
SMOOTHING = 0.1


def fab(logits_fn: Callable, x: np.ndarray, criterion, norm: LpNorm = LINF, *, iterations: int = FAB_ITERATIONS,
        restarts: int = FAB_RESTARTS, box: tuple[float, float] = (-0.5, 0.5), seed: int = 0) -> AttackResult:
    """The closest example FAB finds per image, in `norm` (see the module docstring).

    Args:
        criterion: a Criterion, or an array of target classes (targeted).
        iterations, restarts: steps per run, runs per image.
    """
    import tensorflow as tf

    check_budget(iterations=iterations, restarts=restarts)
    criterion = as_criterion(criterion)
    x = np.asarray(x, np.float32)
    flat = x.reshape(len(x), -1)
    geometry = distance(norm)
    run = _compiled_run(logits_fn, x.shape[1:], criterion.targeted, norm, iterations, tuple(box))
    labels = tf.constant(criterion.labels)
    found, best = run(tf.constant(flat), labels, tf.zeros(len(x)), tf.constant([seed, 0], tf.int64))
    found, best = found.numpy(), best.numpy()
    size = np.where(found, geometry.numpy_measure(best - flat), np.inf)
    if restarts > 1:
        radius = np.where(found, RESTART_SHARE * size, _first_guess(logits_fn, x, criterion, geometry))
        more = restarts - 1
        again, points = run(tf.constant(np.tile(flat, (more, 1))), tf.constant(np.tile(criterion.labels, more)),
                            tf.constant(np.tile(radius, more), tf.float32), tf.constant([seed, 1], tf.int64))
        again, points = again.numpy().reshape(more, len(x)), points.numpy().reshape(more, len(x), -1)
        sizes = np.where(again, geometry.numpy_measure(points.reshape(more * len(x), -1) - np.tile(flat, (more, 1)))
                         .reshape(more, len(x)), np.inf)
        pick = np.argmin(sizes, axis=0)
        closest = sizes[pick, np.arange(len(x))]
        better = closest < size
        best[better] = points[pick, np.arange(len(x))][better]
        found |= np.isfinite(closest)
    return finished(logits_fn, x, best.reshape(x.shape), found, criterion, box)


def _first_guess(logits_fn: Callable, x: np.ndarray, criterion: Criterion, geometry) -> np.ndarray:
    """The first-order distance to the boundary at the images: where restarts begin if no run succeeded."""
    import tensorflow as tf

    margin, grad, _ = margin_and_gradient(flat_model(logits_fn, x.shape[1:]), criterion,
                                          tf.constant(x.reshape(len(x), -1)), tf.constant(criterion.labels))
    return geometry.first_order_distance(margin, grad).numpy()


def _plane(model: Callable, criterion: Criterion, geometry, points, labels):
    """The linearised boundary at `points`: (value g, gradient w) with g + w.(z - points) = 0 on it.

    Targeted: the smoothed margin (see SMOOTHING), whose zero set lies inside the target's region.
    Untargeted: of the planes z_y - z_j (j != y), the one whose first-order distance
    |g_j| / ||w_j||_dual is smallest, as in FAB.
    """
    import tensorflow as tf

    if criterion.targeted:
        with tf.GradientTape() as tape:
            tape.watch(points)
            logits = model(points)
            onehot = tf.one_hot(labels, tf.shape(logits)[1], dtype=logits.dtype)
            others = SMOOTHING * tf.reduce_logsumexp((logits - onehot * 1e30) / SMOOTHING, axis=1)
            margin = others - tf.reduce_sum(onehot * logits, axis=1)
        return margin, tape.gradient(margin, points, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    with tf.GradientTape() as tape:
        tape.watch(points)
        logits = model(points)
    jacobian = tape.batch_jacobian(logits, points, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    onehot = tf.one_hot(labels, tf.shape(logits)[1], dtype=logits.dtype)
    own = tf.reduce_sum(onehot * logits, axis=1, keepdims=True)
    own_grad = tf.einsum("nk,nkd->nd", onehot, jacobian)[:, None, :]
    values, grads = own - logits, own_grad - jacobian
    norms = tf.reshape(geometry.dual_measure(tf.reshape(grads, [-1, tf.shape(grads)[2]])), tf.shape(values))
    reach = tf.abs(values) / tf.maximum(norms, 1e-30) + onehot * 1e30  # the own class is no boundary
    nearest = tf.argmin(reach, axis=1, output_type=tf.int32)
    return (tf.gather(values, nearest, axis=1, batch_dims=1), tf.gather(grads, nearest, axis=1, batch_dims=1))


@graph_cache
def _compiled_run(logits_fn: Callable, image_shape: tuple[int, ...], targeted: bool, norm: LpNorm, iterations: int,
                  box: tuple[float, float]):
    """A tf.function (x0, labels, start radius, seed) -> (found, closest example) per row."""
    import tensorflow as tf

    model, criterion, geometry = flat_model(logits_fn, image_shape), criterion_kind(targeted), distance(norm)
    size = int(np.prod(model.image_shape))

    @tf.function(input_signature=[tf.TensorSpec([None, size], tf.float32), tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None], tf.float32), tf.TensorSpec([2], tf.int64)])
    def run(x0, labels, radius, seed):
        low0, high0 = box[0] - x0, box[1] - x0
        noise = geometry.random_in_ball(seed, tf.shape(x0)[0], int(x0.shape[1])) * radius[:, None]
        start = x0 + geometry.project(noise, radius[:, None], low0, high0)
        best = tf.identity(x0)
        best_size = tf.fill(tf.shape(radius), np.inf)

        def body(i, point, best, best_size):
            g, w = _plane(model, criterion, geometry, point, labels)
            # the smallest steps onto the plane, from the current point and from the image
            from_point = geometry.plane(w, -g, box[0] - point, box[1] - point)
            from_image = geometry.plane(w, tf.reduce_sum(w * (point - x0), axis=1) - g, low0, high0)
            a1, a2 = geometry.measure(from_point), geometry.measure(from_image)
            alpha = tf.clip_by_value(a1 / tf.maximum(a1 + a2, 1e-30), 0.0, ALPHA_MAX)[:, None]
            point = tf.clip_by_value((1 - alpha) * (point + ETA * from_point) + alpha * (x0 + ETA * from_image),
                                     *box)
            hit = criterion.tf_adversarial(model(point), labels)
            size = geometry.measure(point - x0)
            closer = tf.logical_and(hit, size < best_size)
            best = tf.where(closer[:, None], point, best)
            best_size = tf.where(closer, size, best_size)
            point = tf.where(hit[:, None], x0 + BETA * (point - x0), point)
            return i + 1, point, best, best_size

        _, _, best, best_size = tf.while_loop(lambda i, *_: i < iterations, body,
                                              (tf.constant(0), start, best, best_size))
        return tf.math.is_finite(best_size), best

    return run
