"""Adversarial training (Madry et al., ICLR 2018): fit the model on PGD examples in an Linf ball.

Self-contained on purpose: the PGD here crafts training examples and measures the robust accuracy
a training run reports, so it does not follow the attack package's changes. Inputs live in
[-0.5, 0.5], and `eps` is in those units (0.3 is 30% of the pixel range, Madry's MNIST setting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cleverscore.errors import UsageError

INPUT_LOW, INPUT_HIGH = -0.5, 0.5
TRAIN_STEPS = 10  # PGD steps per training batch: each costs about one forward and backward pass
STEP_FACTOR = 2.5  # step size = 2.5 * eps / steps, so a walk can cross the ball from a random start
EVAL_STEPS = 40  # Madry's evaluation attack on MNIST
EVAL_RESTARTS = 2  # random starts in the evaluation; an image counts as robust only if it survives all


@dataclass(frozen=True)
class PGDSettings:
    """A projected gradient ascent on the cross-entropy, in an Linf ball around each input.

    Attributes:
        eps: radius of the ball, in input units ([-0.5, 0.5] images).
        steps: signed-gradient steps.
        step_size: length of one step; None for STEP_FACTOR * eps / steps.
        random_start: start from a uniform point in the ball instead of the input itself.
    """

    eps: float
    steps: int = TRAIN_STEPS
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.eps) and 0 < self.eps <= INPUT_HIGH - INPUT_LOW):
            raise UsageError(f"`adv_eps` must be in (0, {INPUT_HIGH - INPUT_LOW:g}], got {self.eps}")
        if self.steps < 1:
            raise UsageError(f"`adv_steps` must be at least 1, got {self.steps}")
        if self.step_size is not None and not (math.isfinite(self.step_size) and self.step_size > 0):
            raise UsageError(f"`adv_step_size` must be positive, got {self.step_size}")

    @property
    def step(self) -> float:
        return self.step_size if self.step_size is not None else STEP_FACTOR * self.eps / self.steps

    def with_steps(self, steps: int) -> PGDSettings:
        """The same ball with another number of steps (and the default step size for it, unless one was set)."""
        return PGDSettings(self.eps, steps, self.step_size, self.random_start)


def pgd(model, x, labels, eps, steps: int, step_size, random_start: bool = True):
    """PGD examples for `model` (logits) at one-hot `labels`: `steps` signed steps, kept in the ball and the image range.

    `eps` and `step_size` may be tensors (a warm-up changes them without retracing). The model runs
    in inference mode: dropout would make the ascent chase noise.
    """
    import tensorflow as tf

    x = tf.convert_to_tensor(x)
    low = tf.maximum(x - eps, INPUT_LOW)
    high = tf.minimum(x + eps, INPUT_HIGH)
    adv = x
    if random_start:
        noise = tf.random.uniform(tf.shape(x), -1.0, 1.0, dtype=x.dtype)
        adv = tf.clip_by_value(x + eps * noise, low, high)
    for _ in range(steps):
        with tf.GradientTape() as tape:
            tape.watch(adv)
            loss = tf.reduce_sum(tf.nn.softmax_cross_entropy_with_logits(labels, model(adv, training=False)))
        adv = tf.clip_by_value(adv + step_size * tf.sign(tape.gradient(loss, adv)), low, high)
    return tf.stop_gradient(adv)


def robust_accuracy(model, x, labels, attack: PGDSettings, restarts: int = EVAL_RESTARTS,
                    batch_size: int = 500, seed: int = 0) -> float:
    """Fraction of images classified correctly at the input and at every restart's PGD example."""
    return float(survivors(model, x, labels, attack, restarts, batch_size, seed).mean())


def survivors(model, x, labels, attack: PGDSettings, restarts: int = EVAL_RESTARTS, batch_size: int = 500,
              seed: int = 0, test=None):
    """Per image, whether it is classified correctly at the input and at every restart's PGD example.

    `test`: the compiled check from `survival_test` for these settings, when a caller runs it often.
    """
    import numpy as np
    import tensorflow as tf

    test = test or survival_test(model, attack, restarts)
    tf.random.set_seed(seed)  # the random starts, so that a rerun measures the same number
    return np.concatenate([test(tf.constant(x[i:i + batch_size]), tf.constant(labels[i:i + batch_size])).numpy()
                           for i in range(0, len(x), batch_size)])


def survival_test(model, attack: PGDSettings, restarts: int):
    """The compiled per-batch check of `survivors`: (images, one-hot labels) -> correct at the image and every restart."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)  # plain Python loops: nothing for AutoGraph to convert
    def survives(xb, yb):
        truth = tf.argmax(yb, 1)
        ok = tf.equal(tf.argmax(model(xb, training=False), 1), truth)
        for restart in range(restarts):
            adv = pgd(model, xb, yb, attack.eps, attack.steps, attack.step, attack.random_start or restart > 0)
            ok &= tf.equal(tf.argmax(model(adv, training=False), 1), truth)
        return ok

    return survives


def make_adversarial_trainer(model, attack: PGDSettings, warmup_steps: int = 0):
    """A Keras model that trains `model`'s weights on PGD examples of each batch (it shares the weights).

    With `warmup_steps`, the radius (and step) grows linearly from 0 over that many optimizer
    steps: a network fine-tuned from normal weights first meets small perturbations. The ramp
    reads the optimizer's step counter, which a resumed run restores, so it resumes too.
    """
    import keras
    import tensorflow as tf

    class AdversarialTrainer(keras.Model):
        def __init__(self):
            super().__init__(name=f"{model.name}_adversarial")
            self.inner = model

        def call(self, x, training=False):
            return self.inner(x, training=training)

        def train_step(self, data):
            x, y = data[0], data[1]
            scale = 1.0
            if warmup_steps:
                done = tf.cast(self.optimizer.iterations + 1, tf.float32)
                scale = tf.minimum(1.0, done / float(warmup_steps))
            adv = pgd(self.inner, x, y, attack.eps * scale, attack.steps, attack.step * scale, attack.random_start)
            return super().train_step((adv, y))

    trainer = AdversarialTrainer()
    trainer(tf.zeros((1, *model.input_shape[1:])))  # built, so that BackupAndRestore can restore into it
    return trainer


def robust_validation_callback(model, x, labels, attack: PGDSettings):
    """A Keras callback that prints PGD accuracy on (`x`, `labels`) after each epoch: progress a log can show."""
    import keras

    test = survival_test(model, attack, restarts=1)  # traced once, not every epoch

    class RobustValidation(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            acc = float(survivors(model, x, labels, attack, restarts=1, test=test).mean())
            print(f"epoch {epoch + 1}: robust validation accuracy = {acc:.4f} "
                  f"(PGD eps {attack.eps:g}, {attack.steps} steps, {len(x)} images)", flush=True)

    return RobustValidation()
