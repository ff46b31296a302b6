"""Targeted attacks to compare CLEVER scores with: Carlini-Wagner L2 and I-FGSM (L2 and Linf).

Both attacks are batched over images and run as compiled TF2 loops. Each returns the adversarial
examples, their L2 and Linf distortions and success flags (the example is classified as the
target). An attack finds an upper bound on the minimum adversarial distortion; CLEVER estimates
that minimum, so on most images CLEVER is a little below what the attacks find.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cleverscore.errors import UsageError

# Carlini-Wagner L2, as in the reference implementation (abort early, Adam, tanh box) with
# 9 binary-search steps over the constant and 1000 Adam iterations per step.
CW_BINARY_STEPS = 9
CW_ITERATIONS = 1000
CW_LEARNING_RATE = 1e-2
CW_INITIAL_CONST = 1e-3
CW_MAX_CONST = 1e10
# I-FGSM: for each epsilon of a geometric grid (ascending), IFGSM_STEPS steps of size eps/steps,
# projected on the eps ball; the first iterate classified as the target is kept. With the grid
# ratio r below, the distortion found is at most r/steps (relative) above the epsilon needed.
IFGSM_STEPS = 100
IFGSM_GRID = {"l2": np.geomspace(1e-2, 20.0, 40), "li": np.geomspace(1e-3, 0.5, 40)}
ATTACKS = ("cw_l2", "ifgsm_l2", "ifgsm_li")


@dataclass
class AttackResult:
    """Per-image outcome of one attack on a batch.

    Attributes:
        adversarial: (B, ...) examples (the original image where the attack failed).
        success: (B,) bool, the example is classified as its target.
        l2, linf: (B,) distortions of the examples (inf where the attack failed).
    """

    adversarial: np.ndarray
    success: np.ndarray
    l2: np.ndarray
    linf: np.ndarray


def _distortions(x: np.ndarray, adv: np.ndarray, success: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    delta = (adv - x).reshape(len(x), -1).astype(np.float64)
    l2 = np.where(success, np.linalg.norm(delta, axis=1), np.inf)
    linf = np.where(success, np.abs(delta).max(axis=1), np.inf)
    return l2, linf


def _result(x: np.ndarray, best: np.ndarray, success: np.ndarray) -> AttackResult:
    adv = np.where(success.reshape((-1,) + (1,) * (x.ndim - 1)), best, x)
    l2, linf = _distortions(x, adv, success)
    return AttackResult(adv, success, l2, linf)


def _flat_sum(t):
    import tensorflow as tf

    return tf.reduce_sum(tf.reshape(t, [tf.shape(t)[0], -1]), axis=1)


def carlini_wagner_l2(logits_fn: Callable, x: np.ndarray, targets: np.ndarray, *,
                      binary_steps: int = CW_BINARY_STEPS, iterations: int = CW_ITERATIONS,
                      learning_rate: float = CW_LEARNING_RATE, initial_const: float = CW_INITIAL_CONST,
                      confidence: float = 0.0, box: tuple[float, float] = (-0.5, 0.5),
                      abort_early: bool = True) -> AttackResult:
    """Targeted CW L2 on a batch: minimise ||x' - x||^2 + c * max(max_{j != t} Z_j - Z_t, -confidence).

    x' = tanh(w) scaled to `box`; Adam on w; per image, a binary search on c keeps the smallest
    successful distortion. Iterations stop early when the loss stops falling (checked 10 times).
    """
    import tensorflow as tf

    x = np.asarray(x, np.float32)
    lo, hi = box
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    w0 = np.arctanh(np.clip((x - mid) / half, -1 + 1e-6, 1 - 1e-6)).astype(np.float32)
    t = tf.constant(targets, tf.int32)
    num_classes = int(logits_fn(tf.constant(x[:1])).shape[-1])
    onehot = tf.one_hot(t, num_classes)
    x_t = tf.constant(x)
    chunk = max(iterations // 10, 1)

    @tf.function
    def run_chunk(w, m, v, step, const, best_l2, best_adv):
        def body(k, w, m, v, step, best_l2, best_adv, loss_sum):
            with tf.GradientTape() as tape:
                tape.watch(w)
                adv = tf.tanh(w) * half + mid
                logits = logits_fn(adv)
                target_logit = tf.reduce_sum(onehot * logits, 1)
                other = tf.reduce_max(logits - 1e9 * onehot, 1)
                l2sq = _flat_sum(tf.square(adv - x_t))
                loss_each = l2sq + const * tf.maximum(other - target_logit, -confidence)
                loss = tf.reduce_sum(loss_each)
            grad = tape.gradient(loss, w)
            success = tf.logical_and(tf.argmax(logits, 1, output_type=tf.int32) == t, other - target_logit <= -confidence)
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
        found = classified_as(logits_fn, (np.tanh(w.numpy()) * half + mid).astype(np.float32), targets)
        upper = np.where(found, np.minimum(upper, const), upper)
        lower = np.where(found, lower, np.maximum(lower, const))
        const = np.where(upper < CW_MAX_CONST / 10, (lower + upper) / 2, const * 10)
    success = np.isfinite(best_l2)
    return _result(x, best_adv, success & classified_as(logits_fn, best_adv, targets))


def classified_as(logits_fn: Callable, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Whether each example's top logit is its target (re-checked on the returned float32 arrays)."""
    import tensorflow as tf

    return np.argmax(np.asarray(logits_fn(tf.constant(x, tf.float32))), axis=1) == np.asarray(targets)


def ifgsm(logits_fn: Callable, x: np.ndarray, targets: np.ndarray, norm: str, *,
          grid: np.ndarray | None = None, steps: int = IFGSM_STEPS,
          box: tuple[float, float] = (-0.5, 0.5)) -> AttackResult:
    """Targeted iterative FGSM in L2 (`norm='l2'`) or Linf (`'li'`) with the best epsilon of a grid.

    For each epsilon (ascending) the images not yet fooled take `steps` steps of size eps/steps
    down the target's cross-entropy (normalised gradient for L2, its sign for Linf), projected on
    the eps ball and the box; the first iterate classified as the target is the result.
    """
    import tensorflow as tf

    if norm not in IFGSM_GRID:
        raise UsageError(f"I-FGSM norm must be l2 or li, got {norm!r}")
    grid = IFGSM_GRID[norm] if grid is None else np.asarray(grid)
    x = np.asarray(x, np.float32)
    rank = x.ndim
    expand = lambda s: tf.reshape(s, [-1] + [1] * (rank - 1))

    @tf.function(input_signature=[tf.TensorSpec([None, *x.shape[1:]], tf.float32), tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([], tf.float32)])
    def attack(x0, t, eps):
        size = eps / steps

        def body(k, xk, found, best):
            with tf.GradientTape() as tape:
                tape.watch(xk)
                loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(t, logits_fn(xk)))
            grad = tape.gradient(loss, xk)
            if norm == "l2":
                norms = tf.norm(tf.reshape(grad, [tf.shape(grad)[0], -1]), axis=1)
                direction = grad / expand(tf.maximum(norms, 1e-12))
            else:
                direction = tf.sign(grad)
            xk = xk - size * direction
            delta = xk - x0
            if norm == "l2":
                dn = tf.norm(tf.reshape(delta, [tf.shape(delta)[0], -1]), axis=1)
                delta = delta * expand(tf.minimum(1.0, eps / tf.maximum(dn, 1e-12)))
            else:
                delta = tf.clip_by_value(delta, -eps, eps)
            xk = tf.clip_by_value(x0 + delta, *box)
            hit = tf.logical_and(tf.logical_not(found), tf.argmax(logits_fn(xk), 1, output_type=tf.int32) == t)
            best = tf.where(expand(hit), xk, best)
            return k + 1, xk, tf.logical_or(found, hit), best

        found = tf.zeros(tf.shape(t), tf.bool)
        _, _, found, best = tf.while_loop(
            lambda k, _x, f, _b: tf.logical_and(k < steps, tf.logical_not(tf.reduce_all(f))),
            body, (tf.constant(0), x0, found, x0))
        return found, best

    success = np.zeros(len(x), bool)
    best = x.copy()
    for eps in grid:
        todo = np.flatnonzero(~success)
        if not len(todo):
            break
        found, adv = attack(tf.constant(x[todo]), tf.constant(targets[todo], tf.int32), tf.constant(eps, tf.float32))
        found = found.numpy()
        best[todo[found]] = adv.numpy()[found]
        success[todo[found]] = True
    return _result(x, best, success & classified_as(logits_fn, best, targets))


def run_attack(name: str, logits_fn: Callable, x: np.ndarray, targets: np.ndarray, **options) -> AttackResult:
    """One of ATTACKS by name."""
    if name == "cw_l2":
        return carlini_wagner_l2(logits_fn, x, targets, **options)
    if name in ("ifgsm_l2", "ifgsm_li"):
        return ifgsm(logits_fn, x, targets, name.split("_")[1], **options)
    raise UsageError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
