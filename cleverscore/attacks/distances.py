"""The geometry of each perturbation norm, for the attacks: measure, project, step, and cross a plane.

One class per norm (Linf, L2, L1) with the same methods, so an attack is written once for all
norms and never branches on p. Every method works on flat (points, input size) TensorFlow tensors;
`low` and `high` are the room the input box leaves around the centre (box - centre, per
coordinate: low <= 0 <= high), so a perturbation d is in the box when low <= d <= high.
"""

from __future__ import annotations

from cleverscore.norms import L1, L2, LINF, LpNorm
from cleverscore.sampling.balls import numpy_norms, tf_norms, tf_unit_ball

# Halvings of a scalar per point (a plane's crossing, the L1 projection's threshold): 2^-30 of its range.
BISECTIONS = 30


class LpDistance:
    """A perturbation norm's geometry (see the module docstring); subclasses fill in the norm."""

    norm: LpNorm
    dual: LpNorm

    def measure(self, flat):
        """Per row, the norm of a (points, size) tensor."""
        return tf_norms(flat, self.norm)

    def numpy_measure(self, flat):
        """Per row, the norm of a (points, size) array, in float64."""
        return numpy_norms(flat.astype("float64"), self.norm)

    def dual_measure(self, flat):
        """Per row, the dual norm: how much a gradient gains per unit step in this norm."""
        return tf_norms(flat, self.dual)

    def first_order_distance(self, margin, grad):
        """The distance to the zero of `margin` along its linearisation: |margin| / ||grad||_dual."""
        import tensorflow as tf

        return tf.abs(margin) / tf.maximum(self.dual_measure(grad), 1e-30)

    def project(self, delta, eps, low, high):
        """delta moved into the ball of radius eps (points, 1) and the box."""
        raise NotImplementedError

    def steepest(self, up, low, high):
        """A direction of unit norm that gains most along `up` (points, size) within the box's room."""
        raise NotImplementedError

    def plane(self, w, c, low, high):
        """The smallest d (in this norm) with w.d = c (points,) and low <= d <= high.

        Where no d in the box reaches c, the d in the box that comes closest."""
        raise NotImplementedError

    def random_direction(self, seed, count, dim: int):
        """`count` random directions of unit norm (stateless, from an int64[2] seed)."""
        import tensorflow as tf

        unit = tf_unit_ball(seed, self.norm, count, dim)
        return unit / tf.maximum(self.measure(unit)[:, None], 1e-30)

    def random_in_ball(self, seed, count, dim: int):
        """`count` points uniform in the unit ball."""
        return tf_unit_ball(seed, self.norm, count, dim)


def _room(direction, low, high):
    """How far each coordinate can move along the sign of `direction` before leaving the box."""
    import tensorflow as tf

    return tf.where(direction > 0, high, -low)


def _bisect(gain, need, top):
    """Per row, the smallest s in [0, top] with gain(s) >= need (gain nondecreasing), or top.

    BISECTIONS halvings: 2^-30 of the range, below what the attacks need (FAB overshoots by 5%).
    Sorting the kinks would give the exact crossing, but TensorFlow's CPU sort made the L1 attacks
    ten times slower on the MNIST MLPs."""
    import tensorflow as tf

    lo, hi = tf.zeros_like(top), top
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        enough = gain(mid) >= need
        lo, hi = tf.where(enough, lo, mid), tf.where(enough, mid, hi)
    return hi


def _signs(w, c):
    """Per coordinate, the sign d should take to move w.d towards c."""
    import tensorflow as tf

    return tf.sign(w) * tf.sign(c)[:, None]


class LinfDistance(LpDistance):
    norm, dual = LINF, L1

    def project(self, delta, eps, low, high):
        import tensorflow as tf

        return tf.clip_by_value(tf.clip_by_value(delta, -eps, eps), low, high)

    def steepest(self, up, low, high):
        import tensorflow as tf

        return tf.sign(up)

    def plane(self, w, c, low, high):
        import tensorflow as tf

        sign = _signs(w, c)
        room = _room(sign, low, high)
        weight = tf.abs(w)
        # moving every coordinate by up to t gains sum_i |w_i| min(t, room_i), nondecreasing in t
        # moving every coordinate by up to t gains sum_i |w_i| min(t, room_i), nondecreasing in t
        top = tf.reduce_max(tf.where(weight > 0, room, 0.0), axis=1)
        t = _bisect(lambda t: tf.reduce_sum(weight * tf.minimum(t[:, None], room), axis=1), tf.abs(c), top)
        return sign * tf.minimum(t[:, None], room)

    def random_direction(self, seed, count, dim: int):
        import tensorflow as tf

        # the cube's corners: a random direction that uses the whole budget in every coordinate
        return tf.sign(tf_unit_ball(seed, self.norm, count, dim) + 1e-30)


class L2Distance(LpDistance):
    norm, dual = L2, L2

    def project(self, delta, eps, low, high):
        import tensorflow as tf

        length = tf.maximum(self.measure(delta)[:, None], 1e-30)
        return tf.clip_by_value(delta * tf.minimum(1.0, eps / length), low, high)

    def steepest(self, up, low, high):
        import tensorflow as tf

        return up / tf.maximum(self.measure(up)[:, None], 1e-30)

    def plane(self, w, c, low, high):
        import tensorflow as tf

        sign = _signs(w, c)
        room = _room(sign, low, high)
        weight = tf.abs(w)
        # d_i = sign_i min(s |w_i|, room_i): the L2-smallest step, cut at the box; gain nondecreasing in s
        # d_i = sign_i min(s |w_i|, room_i): the L2-smallest step, cut at the box; gain nondecreasing in s
        top = tf.reduce_max(tf.where(weight > 0, room / tf.maximum(weight, 1e-30), 0.0), axis=1)
        s = _bisect(lambda s: tf.reduce_sum(weight * tf.minimum(s[:, None] * weight, room), axis=1), tf.abs(c), top)
        return sign * tf.minimum(s[:, None] * weight, room)


class L1Distance(LpDistance):
    """L1: sparse steps (the coordinates of largest gain), an exact projection on ball and box."""

    norm, dual = L1, LINF
    # steps move this share of the coordinates (at least one): the ones with the largest gain
    STEP_SHARE = 0.01

    def project(self, delta, eps, low, high):
        import tensorflow as tf

        inside = tf.clip_by_value(delta, low, high)
        # argmin ||z - delta||_2 over the ball and the box: delta shrunk by lambda, then clipped
        size = tf.abs(delta)

        def shrunk(lam):
            return tf.clip_by_value(tf.sign(delta) * tf.maximum(size - lam[:, None], 0.0), low, high)

        lam = _bisect(lambda lam: -self.measure(shrunk(lam)), -eps[:, 0], tf.reduce_max(size, axis=1))
        return tf.where(self.measure(inside)[:, None] <= eps, inside, shrunk(lam))

    def steepest(self, up, low, high):
        import tensorflow as tf

        room = _room(up, low, high)
        gain = tf.where(room > 0, tf.abs(up), 0.0)  # a coordinate at the box's edge cannot move on
        k = max(1, int(round(self.STEP_SHARE * int(up.shape[1]))))
        kth = tf.math.top_k(gain, k).values[:, -1:]
        chosen = tf.logical_and(gain >= kth, gain > 0)
        step = tf.where(chosen, up, 0.0)  # magnitudes kept: the projection then favours the largest
        return step / tf.maximum(self.measure(step)[:, None], 1e-30)

    def plane(self, w, c, low, high):
        import tensorflow as tf

        # The L1-smallest step uses the coordinates of largest |w_i| first, each up to its room.
        sign = _signs(w, c)
        room = _room(sign, low, high)
        order = tf.argsort(tf.abs(w), axis=1, direction="DESCENDING")
        weight = tf.gather(tf.abs(w), order, batch_dims=1)
        space = tf.gather(room, order, batch_dims=1)
        gained = tf.cumsum(weight * space, axis=1)
        need = tf.abs(c)[:, None]
        full = gained <= need  # coordinates used to their room
        before = gained - weight * space
        partial = tf.clip_by_value(tf.math.divide_no_nan(need - before, weight), 0.0, space)
        amount = tf.where(full, space, tf.where(before < need, partial, 0.0))
        back = tf.argsort(order, axis=1)
        return sign * tf.gather(amount, back, batch_dims=1)


DISTANCES: dict[LpNorm, LpDistance] = {LINF: LinfDistance(), L2: L2Distance(), L1: L1Distance()}


def distance(norm: LpNorm) -> LpDistance:
    """The geometry of a perturbation norm (L1, L2 or LINF from cleverscore.norms)."""
    return DISTANCES[norm]
