"""What counts as adversarial: the target class (targeted) or any class but the true one (untargeted).

Attacks follow the criterion's margin down to zero: for a target t, max_{k != t} z_k - z_t; for
a true label y, z_y - max_{k != y} z_k. It is negative exactly where the example is adversarial
(ties aside); whether an example counts is always decided by the arg max of the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Criterion:
    """The classes an attack aims at (or away from), one per example.

    Attributes:
        labels: (B,) int32, the target classes (targeted) or the true classes (untargeted).
        targeted: whether `labels` are targets to reach or classes to leave.
    """

    labels: np.ndarray
    targeted: bool

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, index) -> Criterion:
        """The criterion of some examples (an index array or a boolean mask)."""
        return Criterion(self.labels[index], self.targeted)

    def adversarial(self, logits: np.ndarray) -> np.ndarray:
        """Per example, whether its logits' arg max meets the criterion."""
        predicted = np.argmax(np.asarray(logits), axis=1)
        return predicted == self.labels if self.targeted else predicted != self.labels

    def tf_adversarial(self, logits, labels):
        """The TensorFlow twin of `adversarial`, with the labels as a tensor (the batch changes)."""
        import tensorflow as tf

        predicted = tf.argmax(logits, axis=1, output_type=tf.int32)
        return tf.equal(predicted, labels) if self.targeted else tf.not_equal(predicted, labels)

    def tf_margin(self, logits, labels):
        """Per example, the margin an attack drives below zero (see the module docstring)."""
        import tensorflow as tf

        onehot = tf.one_hot(labels, tf.shape(logits)[1], dtype=logits.dtype)
        own = tf.reduce_sum(onehot * logits, axis=1)
        other = tf.reduce_max(logits - onehot * 1e30, axis=1)  # the best class but labels'
        return other - own if self.targeted else own - other


def targeted(targets) -> Criterion:
    """Reach each example's target class."""
    return Criterion(np.asarray(targets, np.int32).reshape(-1), True)


def untargeted(labels) -> Criterion:
    """Leave each example's true class for any other."""
    return Criterion(np.asarray(labels, np.int32).reshape(-1), False)


def as_criterion(criterion) -> Criterion:
    """A Criterion as given, or an array of target classes made into a targeted one."""
    return criterion if isinstance(criterion, Criterion) else targeted(criterion)
