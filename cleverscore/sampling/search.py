"""Searching the sampled ball for larger gradient norms than random sampling finds (`--search_steps`).

A gradient norm found anywhere in the ball is a certain lower bound on the ball's Lipschitz
constant, so g(x0) / (that norm) is a certain upper bound on the CLEVER score. Random samples of
a high-dimensional ball rarely land where ||grad g|| peaks; projected gradient ascent on
||grad g||_q, started from the best random samples, climbs there when g is twice differentiable.
On a ReLU network grad g is piecewise constant and that ascent stays put: the search then
follows a smoothed copy of the network instead (smoothed.py), scoring every iterate on the
true network.

The ascent runs inside one compiled function, batched over the start points, with one
Hessian-vector product per step (the gradient of ||grad g||_q).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from cleverscore.norms import LpNorm
from cleverscore.sampling.ascent import check_ascent_ball, margin_grad_norm, project, steepest_direction
from cleverscore.sampling.smoothed import BETA_SCHEDULE, build_smoothed_search, smoothed_copy, smoothed_search
from cleverscore.sampling.steps import CompiledSteps, sample_batch

STARTS = 32  # best random samples the ascent starts from, per target and norm
SEARCH_ITERATION = 2**31 - 1  # the iteration index of the search's start samples: no collection draws it
STEP = 0.25  # first ascent step, as a fraction of the radius; halved for a point whenever a step fails


def build_search(logits: Callable, sample_norm: LpNorm, radius: float, input_range: tuple[float, float],
                 steps: int) -> Callable:
    """A compiled search(x0, starts, c, j, q_index) -> per start, the largest ||grad g||_q its ascent met
    and the (flat) point where it did.

    q_index picks the gradient norm (0: L2, 1: L1, 2: Linf, the estimator's G2, G1, Gi columns).
    Steps are normalised in the sampling norm's geometry and projected back on its ball (L2 or
    Linf) and the input box.
    """
    import tensorflow as tf

    check_ascent_ball(sample_norm)

    def norms_and_ascent(x, c, j, q_index):
        with tf.GradientTape() as outer:
            outer.watch(x)
            norm = margin_grad_norm(logits, x, c, j, q_index)
        up = outer.gradient(norm, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)  # 0 for affine g
        return norm, tf.reshape(up, (tf.shape(x)[0], -1))

    @tf.function(reduce_retracing=True)
    def search(x0, starts, c, j, q_index):
        shape = tf.shape(starts)
        flat0 = tf.reshape(x0, (1, -1))
        x = tf.reshape(starts, (shape[0], -1))
        unflat = lambda v: tf.reshape(v, shape)  # noqa: E731
        best, up = norms_and_ascent(unflat(x), c, j, q_index)
        size = tf.fill([shape[0], 1], STEP * radius)
        for _ in tf.range(steps):
            cand = project(flat0, x + size * steepest_direction(up, sample_norm), sample_norm, radius, input_range)
            value, cand_up = norms_and_ascent(unflat(cand), c, j, q_index)
            better = value > best  # a step that lowers the norm is not taken; the next one is half as long
            x = tf.where(better[:, None], cand, x)
            up = tf.where(better[:, None], cand_up, up)
            best = tf.where(better, value, best)
            size = tf.where(better[:, None], size, size / 2)
        return best, x

    return search


def search_maxima(steps: CompiledSteps, x0: np.ndarray, c: int, targets: Sequence[int], norm: LpNorm, scale,
                  num_steps: int, seed_key: tuple[int, int],
                  with_points: bool = False) -> np.ndarray | tuple[np.ndarray, list[list[np.ndarray]]]:
    """(targets, 3) largest gradient norms (G2, G1, Gi) found by ascent inside the sampled ball.

    Starts from the STARTS best of one batch of fresh samples (drawn with an iteration index no
    collection uses) per target and norm. With `with_points`, also, per target and norm column,
    the (STARTS, input size) points where each start's ascent met its largest norm, best first
    (where the region search of the running stage starts).
    """
    import tensorflow as tf

    model = steps.model
    smoothed = steps.cached(("smoothed copy",), lambda: smoothed_copy(model.model))
    if smoothed is not None:
        smooth, beta = smoothed
        phase = steps.cached(("smoothed search", x0.shape, norm, scale[1], num_steps, model.input_range),
                             lambda: build_smoothed_search(model.logits, lambda x: smooth(x, training=False), norm,
                                                           scale[1], model.input_range,
                                                           max(1, num_steps // len(BETA_SCHEDULE))))
        search = partial(smoothed_search, phase, beta)
    else:
        search = steps.cached(("search", x0.shape, norm, scale[1], num_steps, model.input_range),
                              lambda: build_search(model.logits, norm, scale[1], model.input_range, num_steps))
    points = tf.constant(sample_batch(x0, seed_key, SEARCH_ITERATION, 0, model.batch_size, norm, scale,
                                      model.input_range))
    x0_t, c_t = tf.constant(np.asarray(x0, np.float32)), tf.constant(int(c))
    targets = [int(j) for j in targets]
    norms, _ = model.grad_norms(points, c_t, tf.constant(targets), len(targets))  # one forward for all targets
    found = np.zeros((len(targets), 3), np.float32)
    ends: list[list[np.ndarray]] = []
    for k, j in enumerate(targets):
        ends.append([])
        for col in range(3):
            best = tf.argsort(norms[:, k, col], direction="DESCENDING")[:STARTS]
            values, where = search(x0_t, tf.gather(points, best), c_t, tf.constant(j), tf.constant(col))
            order = np.argsort(-np.asarray(values), kind="stable")
            found[k, col] = np.asarray(values)[order[0]]
            ends[k].append(np.reshape(where, (len(order), -1))[order])
    return (found, ends) if with_points else found
