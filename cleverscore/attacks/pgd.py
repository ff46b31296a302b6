"""Minimal-distortion PGD: the smallest eps at which projected gradient descent finds an example.

For a given eps, every example runs `restarts` projected descents of the criterion's margin
side by side (the first from the image itself, the others from random points of the eps ball)
and succeeds when any of them meets the criterion. The steps follow APGD's schedule (Croce &
Hein, ICML 2020), which needs no tuning per model: momentum 0.75, a step size starting at 2 eps
(eps in L1) that halves, with a restart from the best point so far, at checkpoints where the
margin fell in fewer than 75% of the steps since the last one or stopped improving.

The eps of each example is searched on its own: the first guess is the first-order distance to
the boundary (|margin| / ||gradient||_dual), doubled until a run succeeds, then bisected between
the largest failed eps and the smallest distortion found. A success at eps hands back an example
whose distortion may be below eps; that distortion becomes the new upper end.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from cleverscore.attacks.criteria import Criterion, as_criterion
from cleverscore.attacks.distances import distance
from cleverscore.attacks.result import AttackResult, finished
from cleverscore.attacks.steps import check_budget, criterion_kind, flat_model, graph_cache, margin_and_gradient
from cleverscore.norms import LINF, LpNorm

# Descent steps per eps and restart: at 100 the margin has settled on the MNIST networks.
PGD_ITERATIONS = 100
# Parallel descents per eps (the first from the image): more finds smaller eps, at their cost.
PGD_RESTARTS = 3
# eps values tried per example (doublings to a first success, then bisections): 12 leave the
# bracket at 2^-10 of its width or less, well under the spread between restarts.
PGD_ROUNDS = 12
MOMENTUM = 0.75  # APGD's weight of the new step against the last move
RHO = 0.75  # APGD: below this share of falling steps in a window the step size halves
# Initial step size per eps: APGD's 2 eps, and eps for L1, whose steps are sparse.
STEP_FACTOR = {"L1": 1.0}


def checkpoint_windows(iterations: int) -> np.ndarray:
    """APGD's checkpoints: at iteration w_j the window w_j - w_{j-1} is entered, 0 elsewhere.

    w_0 = 0, w_1 = 0.22 n, and w_{j+1} = w_j + max(w_j - w_{j-1} - 0.03 n, 0.06 n).
    """
    marks, previous, share = [0.0], 0.0, 0.22
    while share < 1.0:
        marks.append(share)
        previous, share = share, share + max(share - previous - 0.03, 0.06)
    windows = np.zeros(iterations + 1, np.int32)
    points = sorted({max(1, math.ceil(m * iterations)) for m in marks[1:]})
    for before, at in zip([0] + points, points):
        if at <= iterations:
            windows[at] = at - before
    return windows


def pgd(logits_fn: Callable, x: np.ndarray, criterion, norm: LpNorm = LINF, *,
        iterations: int = PGD_ITERATIONS, restarts: int = PGD_RESTARTS, rounds: int = PGD_ROUNDS,
        box: tuple[float, float] = (-0.5, 0.5), seed: int = 0) -> AttackResult:
    """The smallest-eps example PGD finds per image, in `norm` (see the module docstring).

    Args:
        criterion: a Criterion, or an array of target classes (targeted).
        iterations, restarts, rounds: descent steps per eps, parallel descents per eps, eps values.
    """
    check_budget(iterations=iterations, restarts=restarts, rounds=rounds)
    criterion = as_criterion(criterion)
    x = np.asarray(x, np.float32)
    search = _EpsSearch(logits_fn, x, criterion, norm, iterations, restarts, box, seed)
    return search.run(rounds)


class _EpsSearch:
    """The per-example eps search around one compiled APGD run."""

    def __init__(self, logits_fn: Callable, x: np.ndarray, criterion: Criterion, norm: LpNorm, iterations: int,
                 restarts: int, box: tuple[float, float], seed: int):
        self.logits_fn, self.x, self.criterion, self.box, self.seed = logits_fn, x, criterion, box, seed
        self.distance = distance(norm)
        self.flat = x.reshape(len(x), -1)
        self.run_at = _compiled_run(logits_fn, x.shape[1:], criterion.targeted, norm, iterations, restarts,
                                    tuple(box), STEP_FACTOR.get(norm.label, 2.0))

    def first_guess(self) -> np.ndarray:
        import tensorflow as tf

        model = flat_model(self.logits_fn, self.x.shape[1:])
        margin, grad, _ = margin_and_gradient(model, self.criterion, tf.constant(self.flat),
                                              tf.constant(self.criterion.labels))
        return self.distance.first_order_distance(margin, grad).numpy().astype(np.float64)

    def run(self, rounds: int) -> AttackResult:
        import tensorflow as tf

        n = len(self.x)
        low, high = self.box[0] - self.flat, self.box[1] - self.flat
        diameter = self.distance.numpy_measure(np.maximum(-low, high))
        eps = np.clip(self.first_guess(), 1e-6 * diameter, diameter)
        lo, hi = np.zeros(n), np.full(n, np.inf)
        best = self.flat.copy()
        labels = tf.constant(self.criterion.labels)
        for k in range(rounds):
            found, delta = self.run_at(tf.constant(self.flat), labels, tf.constant(eps, tf.float32),
                                       tf.constant([self.seed, k], tf.int64))
            found, delta = found.numpy(), delta.numpy()
            size = np.where(found, self.distance.numpy_measure(delta), np.inf)
            better = size < hi
            best[better] = self.flat[better] + delta[better]
            hi = np.minimum(hi, size)
            lo = np.where(found, lo, np.maximum(lo, eps))
            lo = np.where(lo >= hi, hi / 2, lo)  # a failure above a found distortion: restarts differ
            eps = np.where(np.isfinite(hi), (lo + hi) / 2, np.minimum(2 * eps, diameter))
        found = np.isfinite(hi)
        return finished(self.logits_fn, self.x, best.reshape(self.x.shape), found, self.criterion, self.box)


@graph_cache
def _compiled_run(logits_fn: Callable, image_shape: tuple[int, ...], targeted: bool, norm: LpNorm, iterations: int,
                  restarts: int, box: tuple[float, float], step_factor: float):
    """A tf.function (x0, labels, eps, seed) -> (found per example, its smallest adversarial delta)."""
    import tensorflow as tf

    model, criterion, geometry = flat_model(logits_fn, image_shape), criterion_kind(targeted), distance(norm)
    windows = tf.constant(checkpoint_windows(iterations))

    def evaluate(x0, labels, delta):
        return margin_and_gradient(model, criterion, x0 + delta, labels)

    size = int(np.prod(model.image_shape))

    @tf.function(input_signature=[tf.TensorSpec([None, size], tf.float32), tf.TensorSpec([None], tf.int32),
                                  tf.TensorSpec([None], tf.float32), tf.TensorSpec([2], tf.int64)])
    def run(x0, labels, eps, seed):
        b = tf.shape(x0)[0]
        x0 = tf.tile(x0, [restarts, 1])
        labels = tf.tile(labels, [restarts])
        radius = tf.tile(eps, [restarts])[:, None]
        low, high = box[0] - x0, box[1] - x0
        noise = geometry.random_in_ball(seed, tf.shape(x0)[0], int(x0.shape[1])) * radius
        first = tf.range(tf.shape(x0)[0]) < b  # the first descent of each example starts at the image
        delta = geometry.project(tf.where(first[:, None], 0.0, noise), radius, low, high)
        loss, grad, hit = evaluate(x0, labels, delta)
        state = {
            "delta": delta, "prev": delta, "grad": grad, "loss": loss, "step": step_factor * radius,
            "best": delta, "best_loss": loss, "best_grad": grad, "falls": tf.zeros_like(loss),
            "loss_at_check": loss, "halved_at_check": tf.ones_like(hit), "found": hit,
            "adv": tf.where(hit[:, None], delta, 0.0),
        }

        def example_done(found):
            return tf.reduce_any(tf.reshape(found, [restarts, b]), axis=0)

        def body(i, s):
            a = tf.where(i == 0, 1.0, MOMENTUM)  # no momentum before there is a last move
            d = s["delta"]
            z = geometry.project(d + s["step"] * geometry.steepest(-s["grad"], low - d, high - d), radius, low, high)
            new = geometry.project(d + a * (z - d) + (1 - a) * (d - s["prev"]), radius, low, high)
            loss, grad, adversarial = evaluate(x0, labels, new)
            hit = tf.logical_and(adversarial, tf.logical_not(s["found"]))
            s = dict(s, prev=d, delta=new, grad=grad, falls=s["falls"] + tf.cast(loss < s["loss"], loss.dtype),
                     loss=loss, found=tf.logical_or(s["found"], hit), adv=tf.where(hit[:, None], new, s["adv"]))
            better = loss < s["best_loss"]
            s.update(best=tf.where(better[:, None], new, s["best"]), best_loss=tf.minimum(loss, s["best_loss"]),
                     best_grad=tf.where(better[:, None], grad, s["best_grad"]))
            window = windows[i + 1]

            def checkpoint(s):
                stuck = s["falls"] < RHO * tf.cast(window, tf.float32)
                flat = tf.logical_and(tf.logical_not(s["halved_at_check"]), s["best_loss"] >= s["loss_at_check"])
                halve = tf.logical_or(stuck, flat)[:, None]
                return dict(s, step=tf.where(halve, s["step"] / 2, s["step"]),
                            delta=tf.where(halve, s["best"], s["delta"]), prev=tf.where(halve, s["best"], s["delta"]),
                            grad=tf.where(halve, s["best_grad"], s["grad"]), falls=tf.zeros_like(s["falls"]),
                            loss_at_check=s["best_loss"], halved_at_check=halve[:, 0])

            s = tf.cond(window > 0, lambda: checkpoint(s), lambda: s)
            return i + 1, s

        def more(i, s):
            return tf.logical_and(i < iterations, tf.logical_not(tf.reduce_all(example_done(s["found"]))))

        _, state = tf.while_loop(more, body, (tf.constant(0), state))
        found = tf.reshape(state["found"], [restarts, b])
        size = tf.where(found, tf.reshape(geometry.measure(state["adv"]), [restarts, b]), np.inf)
        pick = tf.argmin(size, axis=0, output_type=tf.int32)  # the smallest example over the restarts
        per_example = tf.transpose(tf.reshape(state["adv"], [restarts, b, -1]), [1, 0, 2])
        delta = tf.gather(per_example, pick, axis=1, batch_dims=1)
        return tf.reduce_any(found, axis=0), delta

    return run
