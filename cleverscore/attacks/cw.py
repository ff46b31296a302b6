"""Carlini-Wagner L2 (IEEE S&P 2017), as in the reference implementation: tanh box, Adam, abort early.

minimise ||x' - x||_2^2 + c * max(margin(x'), -confidence) over x' = tanh(w) scaled to the box,
with the criterion's margin (max_{j != t} Z_j - Z_t for a target t). Per image, a binary search
on c keeps the smallest successful distortion.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from cleverscore.attacks.criteria import as_criterion
from cleverscore.attacks.result import AttackResult, predict, verified
from cleverscore.attacks.steps import check_budget

# 9 binary-search steps over the constant and 1000 Adam iterations per step, as the reference.
CW_BINARY_STEPS = 9
CW_ITERATIONS = 1000
CW_LEARNING_RATE = 1e-2
CW_INITIAL_CONST = 1e-3
CW_MAX_CONST = 1e10


def _flat_sum(t):
    import tensorflow as tf

    return tf.reduce_sum(tf.reshape(t, [tf.shape(t)[0], -1]), axis=1)


def carlini_wagner_l2(logits_fn: Callable, x: np.ndarray, criterion, *,
                      binary_steps: int = CW_BINARY_STEPS, iterations: int = CW_ITERATIONS,
                      learning_rate: float = CW_LEARNING_RATE, initial_const: float = CW_INITIAL_CONST,
                      confidence: float = 0.0, box: tuple[float, float] = (-0.5, 0.5),
                      abort_early: bool = True) -> AttackResult:
    """CW L2 on a batch (see the module docstring); `criterion` a Criterion or an array of targets.

    Adam on w; iterations stop early when the loss stops falling (checked 10 times per step).
    """
    import tensorflow as tf

    check_budget(binary_steps=binary_steps, iterations=iterations)
    criterion = as_criterion(criterion)
    x = np.asarray(x, np.float32)
    lo, hi = box
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    w0 = np.arctanh(np.clip((x - mid) / half, -1 + 1e-6, 1 - 1e-6)).astype(np.float32)
    labels = tf.constant(criterion.labels)
    x_t = tf.constant(x)
    chunk = max(iterations // 10, 1)

    @tf.function
    def run_chunk(w, m, v, step, const, best_l2, best_adv):
        def body(k, w, m, v, step, best_l2, best_adv, loss_sum):
            with tf.GradientTape() as tape:
                tape.watch(w)
                adv = tf.tanh(w) * half + mid
                logits = logits_fn(adv)
                margin = criterion.tf_margin(logits, labels)
                l2sq = _flat_sum(tf.square(adv - x_t))
                loss_each = l2sq + const * tf.maximum(margin, -confidence)
                loss = tf.reduce_sum(loss_each)
            grad = tape.gradient(loss, w, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            success = tf.logical_and(criterion.tf_adversarial(logits, labels), margin <= -confidence)
            better = tf.logical_and(success, l2sq < best_l2)
            best_l2 = tf.where(better, l2sq, best_l2)
            best_adv = tf.where(tf.reshape(better, [-1] + [1] * (len(x.shape) - 1)), adv, best_adv)
            step = step + 1.0
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * tf.square(grad)
            decay = tf.maximum(1.0 - step / iterations, 0.01)  # fine steps at the end find the boundary
            lr = learning_rate * decay * tf.sqrt(1 - 0.999 ** step) / (1 - 0.9 ** step)
            w = w - lr * m / (tf.sqrt(v) + 1e-8)
            return k + 1, w, m, v, step, best_l2, best_adv, loss
        out = tf.while_loop(lambda k, *_: k < chunk, body,
                            (tf.constant(0), w, m, v, step, best_l2, best_adv, tf.constant(0.0)))
        return out[1:]

    n = len(x)
    lower = np.zeros(n)
    upper = np.full(n, CW_MAX_CONST)
    const = np.full(n, initial_const)
    best_l2 = np.full(n, np.inf, np.float32)
    best_adv = x.copy()
    for _ in range(binary_steps):
        w = tf.constant(w0)
        m = tf.zeros_like(w)
        v = tf.zeros_like(w)
        step = tf.constant(0.0)
        round_l2 = tf.constant(np.full(n, np.inf, np.float32))
        round_adv = tf.constant(x)
        previous = np.inf
        c_t = tf.constant(const, tf.float32)
        for _ in range(math.ceil(iterations / chunk)):
            w, m, v, step, round_l2, round_adv, loss = run_chunk(w, m, v, step, c_t, round_l2, round_adv)
            loss = float(loss)
            if abort_early and loss > previous * 0.9999:
                break
            previous = loss
        round_l2, round_adv = round_l2.numpy(), round_adv.numpy()
        improve = np.isfinite(round_l2) & (round_l2 < best_l2)
        best_l2[improve] = round_l2[improve]
        best_adv[improve] = round_adv[improve]
        # The search on c follows where the optimisation ended, not every iterate it passed:
        # Adam's first, sign-like steps can cross a near boundary even when c is far too small,
        # and lowering c on such a crossing would keep the search from the boundary.
        found = criterion.adversarial(predict(logits_fn, (np.tanh(w.numpy()) * half + mid).astype(np.float32)))
        upper = np.where(found, np.minimum(upper, const), upper)
        lower = np.where(found, lower, np.maximum(lower, const))
        const = np.where(upper < CW_MAX_CONST / 10, (lower + upper) / 2, const * 10)
    return verified(logits_fn, x, best_adv, np.isfinite(best_l2), criterion, box)
