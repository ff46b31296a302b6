"""The geometry of each perturbation norm, for the attacks: measure, project, step, and cross a plane.

One class per norm (Linf, L2, L1) with the same methods, so an attack is written once for all
norms and never branches on p. Every method works on flat (points, input size) TensorFlow tensors;
`low` and `high` are the room the input box leaves around the centre (box - centre, per
coordinate: low <= 0 <= high), so a perturbation d is in the box when low <= d <= high.
"""

from __future__ import annotations

from cleverscore.norms import L1, L2, LINF, LpNorm
from cleverscore.sampling.balls import numpy_norms, tf_norms, tf_unit_ball


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

    def box_diameter(self, low, high):
        """Per row, the largest distance a point of the box can have from the centre."""
        import tensorflow as tf

        return self.measure(tf.maximum(-low, high))


def _room(direction, low, high):
    """How far each coordinate can move along the sign of `direction` before leaving the box."""
    import tensorflow as tf

    return tf.where(direction > 0, high, -low)


def _crossing(breaks, saturated, slope, need):
    """Per row, the smallest s with G(s) >= need, where G(s) = sum over i of saturated_i if s >= breaks_i,
    else s * slope_i (nondecreasing and piecewise linear, with kinks at the breaks).

    Exact: G at the sorted breaks comes from cumulative sums, and it is linear between two of them.
    Where G never reaches `need`, the largest break (every coordinate saturated)."""
    import tensorflow as tf

    order = tf.argsort(breaks, axis=1)
    b, sat, m = (tf.gather(t, order, batch_dims=1) for t in (breaks, saturated, slope))
    cum_sat, cum_m = tf.cumsum(sat, axis=1), tf.cumsum(m, axis=1)
    total_m = cum_m[:, -1:]
    reached = cum_sat + b * (total_m - cum_m)  # G at each break
    k = tf.reduce_sum(tf.cast(reached < need[:, None], tf.int32), axis=1)
    before = tf.maximum(k - 1, 0)[:, None]
    prev_sat = tf.where(k > 0, tf.gather(cum_sat, before, batch_dims=1)[:, 0], 0.0)
    prev_m = tf.where(k > 0, tf.gather(cum_m, before, batch_dims=1)[:, 0], 0.0)
    s = tf.math.divide_no_nan(need - prev_sat, total_m[:, 0] - prev_m)
    return tf.where(k >= tf.shape(b)[1], b[:, -1], s)


def _relu_sums(sorted_values, prefix, points):
    """Per row, sum_i max(v_i - p, 0) at each of `points` (points, m), from ascending values and their prefix sums."""
    import tensorflow as tf

    below = tf.searchsorted(sorted_values, points, side="right")
    count = tf.cast(tf.shape(sorted_values)[1] - below, points.dtype)
    return prefix[:, -1:] - tf.gather(prefix, below, batch_dims=1) - points * count


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
        t = _crossing(room, weight * room, weight, tf.abs(c))
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
        breaks = tf.where(weight > 0, room / tf.maximum(weight, 1e-30), 0.0)  # where d_i meets the box
        s = _crossing(breaks, weight * room, weight * weight, tf.abs(c))
        return sign * tf.minimum(s[:, None] * weight, room)


class L1Distance(LpDistance):
    """L1: sparse steps (the coordinates of largest gain), an exact projection on ball and box."""

    norm, dual = L1, LINF
    # steps move this share of the coordinates (at least one): the ones with the largest gain
    STEP_SHARE = 0.01

    def project(self, delta, eps, low, high):
        import tensorflow as tf

        inside = tf.clip_by_value(delta, low, high)
        # argmin ||z - delta||_2 over the ball and the box: |z_i| = min(max(|delta_i| - lam, 0), room_i).
        # Its L1 norm S(lam) = sum relu(u_i - lam) - sum relu(u_i - room_i - lam) is piecewise linear and
        # falls with lam: evaluated at every kink, then solved on the segment where it crosses eps.
        size = tf.abs(delta)
        room = _room(delta, low, high)
        u, a = tf.sort(size, axis=1), tf.sort(size - room, axis=1)
        zero = tf.zeros_like(u[:, :1])
        pu, pa = tf.concat([zero, tf.cumsum(u, axis=1)], 1), tf.concat([zero, tf.cumsum(a, axis=1)], 1)
        kinks = tf.sort(tf.concat([zero, u, tf.maximum(a, 0.0)], axis=1), axis=1)
        norm_at = _relu_sums(u, pu, kinks) - _relu_sums(a, pa, kinks)
        j = tf.minimum(tf.reduce_sum(tf.cast(norm_at > eps, tf.int32), axis=1), tf.shape(kinks)[1] - 1)
        j0 = tf.maximum(j - 1, 0)[:, None]
        lam_lo, lam_hi = tf.gather(kinks, j0, batch_dims=1)[:, 0], tf.gather(kinks, j[:, None], batch_dims=1)[:, 0]
        s_lo, s_hi = tf.gather(norm_at, j0, batch_dims=1)[:, 0], tf.gather(norm_at, j[:, None], batch_dims=1)[:, 0]
        lam = lam_lo + tf.math.divide_no_nan((s_lo - eps[:, 0]) * (lam_hi - lam_lo), s_lo - s_hi)
        shrunk = tf.sign(delta) * tf.minimum(tf.maximum(size - lam[:, None], 0.0), room)
        return tf.where(self.measure(inside)[:, None] <= eps, inside, shrunk)

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
