"""Pooling: max pooling (nonlinear), average and global average pooling (linear).

Max pooling over non-overlapping windows (strides equal to the pool size, as in the zoo and
in auto_LiRPA's relaxation). In each window with input bounds [l_i, u_i], let s be the chosen
entry: the one with the largest lower bound (ties: the one that reaches highest), or, given a
`WindowOrder`, the entry largest at the centre of the ball. Then y = max_i x_i >= x_s always.
Another entry k is a candidate, i.e. may be the strict maximum, if u_k > l_s and no order proves
x_s >= x_k over the ball (`certify/dominance.py`). Without a candidate the window is stable and
y = x_s. With one candidate k whose gap x_k - x_s the order bounds in [g_lo, g_hi] around 0,
y = x_s + relu(x_k - x_s) <= that ReLU's chord; otherwise y <= max u_i over s and the candidates,
a constant. For gradients, a stable window routes the gradient to s; otherwise s and each
candidate may receive it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from ..patches import Patches, patch_sum
from .base import Interval, Operator, expand_spec, fold_spec, lower_product_line, sum_spec, unfold_spec
from .linear import LinearOperator


class WindowOrder(NamedTuple):
    """What a max pooling's windows are known to keep over a ball: in every window, entry `chosen` (Ho, Wo, C)
    is at least each entry marked in `dominated` (B or 1, Ho, Wo, C, k), which so is never the strict maximum;
    and, where given, x_k - x_s lies in [gap_lo, gap_hi] (B or 1, Ho, Wo, C, k) for every entry k."""

    chosen: tf.Tensor
    dominated: tf.Tensor
    gap_lo: tf.Tensor | None = None
    gap_hi: tf.Tensor | None = None


class MaxPooling2D(Operator):
    nonlinear = True
    binary_multipliers = True

    def __init__(self, name: str, pool_size: tuple[int, int], padding: str, input_shape: tuple[int, ...]):
        super().__init__(name)
        self.pool = tuple(pool_size)
        self.padding = padding.upper()
        self.in_shape = tuple(input_shape)
        h, w, _ = self.in_shape
        ph, pw = self.pool
        if self.padding == "SAME":
            self.out_hw = (-(-h // ph), -(-w // pw))
        else:
            self.out_hw = ((h - ph) // ph + 1, (w - pw) // pw + 1)
        extra_h, extra_w = self.out_hw[0] * ph - h, self.out_hw[1] * pw - w
        # TF's 'same' padding puts the odd row/column at the bottom/right.
        self.pads = ((extra_h // 2, extra_h - extra_h // 2), (extra_w // 2, extra_w - extra_w // 2))

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*self.out_hw, shape[-1])

    def forward(self, x: tf.Tensor) -> tf.Tensor:
        return tf.nn.max_pool2d(x, self.pool, self.pool, self.padding)

    def _windows(self, t: tf.Tensor, fill: float) -> tf.Tensor:
        """(N, H, W, C) -> (N, Ho, Wo, C, ph*pw); 'same' padding entries hold `fill`, 'valid' drops the rest."""
        (ho, wo), (ph, pw) = self.out_hw, self.pool
        if self.padding == "SAME":
            t = tf.pad(t, [[0, 0], list(self.pads[0]), list(self.pads[1]), [0, 0]], constant_values=fill)
        else:
            t = t[:, :ho * ph, :wo * pw, :]
        t = tf.reshape(t, (-1, ho, ph, wo, pw, self.in_shape[-1]))
        return tf.reshape(tf.transpose(t, (0, 1, 3, 5, 2, 4)), (-1, ho, wo, self.in_shape[-1], ph * pw))

    def _unwindow(self, t: tf.Tensor) -> tf.Tensor:
        """Inverse of _windows, with zeros where 'valid' pooling dropped entries."""
        (ho, wo), (ph, pw) = self.out_hw, self.pool
        h, w, c = self.in_shape
        t = tf.transpose(tf.reshape(t, (-1, ho, wo, c, ph, pw)), (0, 1, 4, 2, 5, 3))
        t = tf.reshape(t, (-1, ho * ph, wo * pw, c))
        if self.padding == "SAME":
            return t[:, self.pads[0][0]:self.pads[0][0] + h, self.pads[1][0]:self.pads[1][0] + w, :]
        return tf.pad(t, [[0, 0], [0, h - ho * ph], [0, w - wo * pw], [0, 0]])

    def _window_facts(self, bounds: Interval, order: WindowOrder | None = None
                      ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """Per window: one-hot of the chosen entry s, l_s, stability, the upper bounds, and the candidates (the
        other entries that may be the strict maximum)."""
        lo_w = self._windows(bounds.lo, float("-inf"))
        hi_w = self._windows(bounds.hi, float("-inf"))
        lowest = tf.cast(float("-inf"), hi_w.dtype)
        if order is None:
            # Ties in the lower bound are common (ReLU outputs at 0): the entry that can reach highest.
            top = tf.reduce_max(lo_w, axis=-1, keepdims=True)
            pick = tf.argmax(tf.where(lo_w >= top, hi_w, lowest), axis=-1)
            dominated = tf.zeros_like(lo_w, dtype=tf.bool)
        else:
            pick, dominated = tf.broadcast_to(order.chosen, tf.shape(lo_w)[:-1]), order.dominated
        chosen = tf.one_hot(pick, lo_w.shape[-1], dtype=lo_w.dtype)
        lo_chosen = tf.reduce_max(tf.where(chosen > 0, lo_w, lowest), axis=-1)
        candidates = (hi_w > tf.expand_dims(lo_chosen, -1)) & (chosen == 0) & ~dominated
        return chosen, lo_chosen, ~tf.reduce_any(candidates, axis=-1), hi_w, candidates

    def interval(self, bounds: Interval, order: WindowOrder | None = None) -> Interval:
        """max l_i <= y <= max u_i over s and the candidates (the others never exceed x_s)."""
        chosen, _, _, hi_w, candidates = self._window_facts(bounds, order)
        return Interval(self.forward(bounds.lo), _highest(hi_w, chosen, candidates))

    def refine_mask(self, bounds: Interval) -> tf.Tensor:
        """Entries that may be the maximum of a window that is not stable: only their bounds shape the relaxation.

        In a stable window the relaxation is exact, and an entry whose upper bound is below the
        chosen entry's lower bound never matters; tighter bounds keep both facts true.
        """
        chosen, _, stable, _, candidates = self._window_facts(bounds)
        matters = (candidates | (chosen > 0)) & ~tf.expand_dims(stable, -1)
        flat = tf.reshape(tf.cast(matters, bounds.lo.dtype), (-1, *matters.shape[1:]))
        return self._unwindow(flat) > 0

    def relax(self, bounds: Interval, order: WindowOrder | None = None) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """(one-hot of s, upper weights, upper constant): x_s <= y <= upper weights . x + constant.

        Stable: y = x_s. One candidate k with x_k - x_s in [g_lo, g_hi] (g_lo < 0 < g_hi, from an order):
        y = x_s + relu(x_k - x_s), and the ReLU's chord gives y <= (1 - lam) x_s + lam x_k - lam g_lo with
        lam = g_hi / (g_hi - g_lo), which keeps how y moves with its inputs. Otherwise the constant upper bound.
        """
        chosen, _, stable, hi_w, candidates = self._window_facts(bounds, order)
        top = _highest(hi_w, chosen, candidates)
        weights = tf.where(tf.expand_dims(stable, -1), chosen, tf.zeros_like(chosen))
        constant = tf.where(stable, tf.zeros_like(top), top)
        if order is not None and order.gap_lo is not None:
            picked = tf.cast(candidates, chosen.dtype)
            g_lo = tf.reduce_sum(tf.where(candidates, order.gap_lo, tf.zeros_like(order.gap_lo)), axis=-1)
            g_hi = tf.reduce_sum(tf.where(candidates, order.gap_hi, tf.zeros_like(order.gap_hi)), axis=-1)
            chord = (tf.reduce_sum(picked, axis=-1) == 1) & (g_lo < 0) & (g_hi > 0)
            lam = tf.where(chord, g_hi / tf.where(chord, g_hi - g_lo, tf.ones_like(g_hi)), tf.zeros_like(g_hi))
            weights = tf.where(tf.expand_dims(chord, -1), (1 - lam[..., None]) * chosen + lam[..., None] * picked,
                               weights)
            constant = tf.where(chord, -lam * g_lo, constant)
        return expand_spec(chosen), expand_spec(weights), expand_spec(constant)

    def backward(self, a: tf.Tensor, relaxation: tuple[tf.Tensor, ...]) -> tuple[list[tf.Tensor], tf.Tensor]:
        chosen, weights, constant = relaxation
        constant = sum_spec(tf.minimum(a, 0) * constant)
        # A positive coefficient takes the lower bound x_s, a negative one the upper bound.
        coef = tf.expand_dims(tf.nn.relu(a), -1) * chosen + tf.expand_dims(tf.minimum(a, 0), -1) * weights
        flat, lead = fold_spec(coef, 4)
        return [unfold_spec(self._unwindow(flat), lead)], constant

    def patch_window(self, ph: int, pw: int) -> tuple[int, int]:
        return ph * self.pool[0], pw * self.pool[1]

    def patch_backward(self, p: Patches, relaxation: tuple[tf.Tensor, ...]) -> tuple[list[Patches], tf.Tensor]:
        chosen, weights, constant = relaxation
        chosen, weights = self._gather_windows(p, chosen), self._gather_windows(p, weights)
        total = patch_sum(Patches(tf.minimum(p.a, 0), p.top, p.left, p.map_shape), p.gather(constant))
        coef = tf.nn.relu(p.a)[..., None, None] * chosen + tf.minimum(p.a, 0)[..., None, None] * weights
        coef = tf.transpose(coef, (0, 1, 2, 5, 3, 6, 4))                 # (B, S, ph, p1, pw, p2, C)
        ph, pw = self.patch_window(*p.window)
        coef = tf.reshape(coef, tf.concat([tf.shape(coef)[:2], [ph, pw, self.in_shape[-1]]], 0))
        top = p.top * self.pool[0] - self.pads[0][0]
        left = p.left * self.pool[1] - self.pads[1][0]
        return [p.moved(coef, top, left, self.in_shape)], total

    def _gather_windows(self, p: Patches, per_entry: tf.Tensor) -> tf.Tensor:
        """Per-entry window values (B, 1, Ho, Wo, C, k) read on each row's window: (B, S, h, w, C, ph, pw)."""
        k = per_entry.shape[-1]
        read = p.gather(tf.reshape(per_entry, (-1, *per_entry.shape[2:4], per_entry.shape[4] * k)))
        return tf.reshape(read, tf.concat([tf.shape(read)[:4], [self.in_shape[-1], *self.pool]], 0))

    def gradient_multipliers(self, bounds: Interval, order: WindowOrder | None = None) -> Interval:
        """Per input entry: 1 for the maximum of a stable window, [0, 1] for an entry that may be the maximum of an
        unstable window, 0 otherwise (the constraint that a window routes to one entry is given up)."""
        chosen, _, stable, _, candidates = self._window_facts(bounds, order)
        maybe_max = tf.cast(candidates | (chosen > 0), chosen.dtype)
        stable = tf.expand_dims(stable, -1)
        lo = tf.where(stable, chosen, tf.zeros_like(chosen))
        hi = tf.where(stable, chosen, maybe_max)
        return Interval(self._unwindow(lo), self._unwindow(hi))

    def spread_bounds(self, g: Interval) -> Interval:
        return Interval(*(self._spread(t) for t in g))

    def _spread(self, t: tf.Tensor) -> tf.Tensor:
        """(B, S?, Ho, Wo, C) -> (B, S?, H, W, C): each window's value on every entry of the window."""
        lead = tf.shape(t)[:-3]
        flat = tf.reshape(t, tf.concat([[-1], tf.shape(t)[-3:]], 0))
        repeated = tf.repeat(flat[..., None], self.pool[0] * self.pool[1], axis=-1)
        out = self._unwindow(repeated)
        return tf.reshape(out, tf.concat([lead, tf.shape(out)[1:]], 0))

    def gather_spread(self, c: tf.Tensor) -> tf.Tensor:
        lead = tf.shape(c)[:-3]
        flat = tf.reshape(c, tf.concat([[-1], tf.shape(c)[-3:]], 0))
        summed = tf.reduce_sum(self._windows(flat, 0.0), axis=-1)
        return tf.reshape(summed, tf.concat([lead, tf.shape(summed)[1:]], 0))

    def _pad_offsets(self) -> tuple[int, int]:
        same = self.padding == "SAME"  # 'valid' pooling pads nothing (its `pads` count the cells it drops)
        return (self.pads[0][0], self.pads[1][0]) if same else (0, 0)

    def _widen(self, p: Patches) -> tuple[tf.Tensor, Patches, Patches]:
        """Each row's window widened to whole pooling cells (zeros around it): the cells (B, S, ch, ph, cw, pw, C),
        the widened window on the input map and the cells' window on the output map (both with zero values)."""
        (ph, pw), (top_pad, left_pad) = self.pool, self._pad_offsets()
        hh, ww = p.window
        cells_h, cells_w = (hh + ph - 1) // ph + 1, (ww + pw - 1) // pw + 1
        first_row, first_col = (p.top + top_pad) // ph, (p.left + left_pad) // pw
        off_y = p.top + top_pad - first_row * ph       # where the window starts inside its first cell
        off_x = p.left + left_pad - first_col * pw
        ey = np.arange(cells_h * ph)[None, :, None] - off_y[:, None, None]
        ex = np.arange(cells_w * pw)[None, None, :] - off_x[:, None, None]
        inside = (ey >= 0) & (ey < hh) & (ex >= 0) & (ex < ww)
        index = np.where(inside, ey * ww + ex, hh * ww).reshape(len(p.top), -1).astype(np.int32)
        flat = tf.reshape(p.a, tf.concat([tf.shape(p.a)[:2], [hh * ww, -1]], 0))
        flat = tf.concat([flat, tf.zeros_like(flat[:, :, :1])], axis=2)
        wide = tf.transpose(tf.gather(tf.transpose(flat, (1, 0, 2, 3)), index, axis=2, batch_dims=1), (1, 0, 2, 3))
        cells = tf.reshape(wide, tf.concat([tf.shape(p.a)[:2], [cells_h, ph, cells_w, pw, -1]], 0))
        zero = tf.zeros((1, 1, 1, 1, 1), p.a.dtype)
        on_input = Patches(zero, first_row * ph - top_pad, first_col * pw - left_pad, self.in_shape)
        on_output = Patches(zero, first_row, first_col, self.output_shape(self.in_shape))
        return cells, _sized(on_input, cells_h * ph, cells_w * pw), _sized(on_output, cells_h, cells_w)

    def patch_gather_spread(self, p: Patches) -> Patches:
        """Window sums of coefficients held on windows: each row's window widened to whole cells, each cell summed."""
        cells, _, on_output = self._widen(p)
        return p.moved(tf.reduce_sum(cells, axis=(3, 5)), on_output.top, on_output.left, on_output.map_shape)

    def gradient_chord(self, a: tf.Tensor, d: Interval, g: Interval) -> tuple[tf.Tensor, tf.Tensor]:
        """A window passes its gradient t to exactly one entry, one of its candidates (d.hi > 0; the entries
        forced to 1 where the split search fixed one): a . (routing * t) >= min over candidates of a_i t, a
        concave function of t, bounded by its chord. Summing a over the window instead would count t once per
        candidate."""
        flat, lead = fold_spec(a, 3)
        windows = self._windows(flat, 0.0)
        windows = tf.reshape(windows, tf.concat([lead, tf.shape(windows)[1:]], 0))
        candidates = self._candidates(d.lo[:, 0], d.hi[:, 0])[:, None]
        big = _big(a.dtype)
        lowest = tf.reduce_min(tf.where(candidates, windows, big), axis=-1)
        highest = tf.reduce_max(tf.where(candidates, windows, -big), axis=-1)
        return self._route(lowest, highest, ~tf.reduce_any(candidates, axis=-1), g)

    def patch_gradient_chord(self, p: Patches, d: Interval, g: Interval) -> tuple[Patches, tf.Tensor]:
        cells, on_input, on_output = self._widen(p)                                  # (B, S, ch, ph, cw, pw, C)
        candidates = self._candidates(d.lo[:, 0], d.hi[:, 0])                         # (B, Ho, Wo, C, k)
        # Candidacy is a property of the map: it is laid out on the map once and read on each window.
        on_map = self._unwindow(tf.reshape(tf.cast(candidates, cells.dtype), (-1, *candidates.shape[1:]))) > 0
        lowest, highest = self._cell_extremes(cells, self._read_cells(on_input, on_map))
        some = on_output.gather(tf.reduce_any(candidates, axis=-1))
        slope, constant = self._route(lowest, highest, ~some, Interval(on_output.gather(g.lo), on_output.gather(g.hi)))
        return p.moved(slope, on_output.top, on_output.left, on_output.map_shape), constant

    def _cell_extremes(self, cells: tf.Tensor, candidates: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Min and max (B, S, ch, cw, C) over each cell's candidates of cells (B, S, ch, ph, cw, pw, C).

        (ch, ph, cw, pw) is the row-major layout of a (ch ph) x (cw pw) image, so TF's max pooling
        reduces the cells in place, much faster than a reduction over two inner axes."""
        big = _big(cells.dtype)

        def pooled_max(values: tf.Tensor) -> tf.Tensor:
            # The shape after the mask: coefficients shared by all problems (batch 1) meet per-problem candidates.
            masked = tf.where(candidates, values, -big)
            shape = tf.shape(masked)
            images = (-1, shape[2] * shape[3], shape[4] * shape[5], shape[6])
            out = tf.nn.max_pool2d(tf.reshape(masked, images), self.pool, self.pool, "VALID")
            return tf.reshape(out, tf.stack([shape[0], shape[1], shape[2], shape[4], shape[6]]))

        return -pooled_max(-cells), pooled_max(cells)

    def _read_cells(self, window: Patches, maps: tf.Tensor) -> tf.Tensor:
        """Maps (B, 1, H, W, C) read on a widened window: (B, S, ch, ph, cw, pw, C)."""
        read = window.gather(maps)
        (ph, pw), (hh, ww) = self.pool, window.window
        return tf.reshape(read, tf.concat([tf.shape(read)[:2], [hh // ph, ph, ww // pw, pw, -1]], 0))

    def _candidates(self, lo: tf.Tensor, hi: tf.Tensor) -> tf.Tensor:
        """Per window (B, Ho, Wo, C, k): the entries that may receive the gradient (d.hi > 0, or the entries
        forced to 1 where the split search fixed one)."""
        lo_w, hi_w = self._windows(lo, 0.0), self._windows(hi, 0.0)
        forced = lo_w > 0
        return tf.where(tf.reduce_any(forced, axis=-1, keepdims=True), forced, hi_w > 0)

    @staticmethod
    def _route(lowest: tf.Tensor, highest: tf.Tensor, none: tf.Tensor, g: Interval) -> tuple[tf.Tensor, tf.Tensor]:
        """The chord of min over a window's candidates of a_i t, from the min and max of their a_i; `none` marks
        windows without a candidate (cells off the map)."""
        lowest, highest = tf.where(none, tf.zeros_like(lowest), lowest), tf.where(none, tf.zeros_like(highest), highest)
        line = lower_product_line(Interval(lowest, highest), g)
        return line.slope, sum_spec(line.constant)

    def gradient_backward(self, g: Interval, bounds: Interval, order: WindowOrder | None = None) -> list[Interval]:
        chosen, _, stable, _, candidates = self._window_facts(bounds, order)
        maybe_max = tf.cast(candidates | (chosen > 0), chosen.dtype)
        chosen, maybe_max = expand_spec(chosen), expand_spec(maybe_max)
        stable = expand_spec(tf.expand_dims(stable, -1))
        g_lo, g_hi = tf.expand_dims(g.lo, -1), tf.expand_dims(g.hi, -1)
        lo_w = tf.where(stable, chosen * g_lo, maybe_max * tf.minimum(g_lo, 0))
        hi_w = tf.where(stable, chosen * g_hi, maybe_max * tf.maximum(g_hi, 0))
        out = []
        for w in (lo_w, hi_w):
            flat, lead = fold_spec(w, 4)
            out.append(unfold_spec(self._unwindow(flat), lead))
        return [Interval(*out)]


def _highest(hi_w: tf.Tensor, chosen: tf.Tensor, candidates: tf.Tensor) -> tf.Tensor:
    """Per window, the largest upper bound of the chosen entry and its candidates: an upper bound of y."""
    return tf.reduce_max(tf.where(candidates | (chosen > 0), hi_w, tf.cast(float("-inf"), hi_w.dtype)), axis=-1)


def _big(dtype: tf.DType) -> tf.Tensor:
    """A stand-in for +infinity that keeps masked reductions finite."""
    return tf.constant(np.finfo(dtype.as_numpy_dtype).max, dtype)


def _sized(p: Patches, hh: int, ww: int) -> Patches:
    """A zero-valued window of (hh, ww) cells at p's positions, for reading maps with `gather`."""
    return Patches(tf.zeros((1, len(p.top), hh, ww, 1), p.a.dtype), p.top, p.left, p.map_shape)


class AveragePooling2D(LinearOperator):
    """Average pooling; with 'same' padding TF divides by the number of real entries, as Keras does."""

    def __init__(self, name: str, pool_size: tuple[int, int], strides: tuple[int, int], padding: str,
                 input_shape: tuple[int, ...]):
        super().__init__(name)
        self.ksize = (1, *pool_size, 1)
        self.strides = (1, *strides, 1)
        self.padding = padding.upper()
        self.in_shape = tuple(input_shape)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        h, w, c = shape
        (ph, pw), (sh, sw) = self.ksize[1:3], self.strides[1:3]
        if self.padding == "SAME":
            return (-(-h // sh), -(-w // sw), c)
        return ((h - ph) // sh + 1, (w - pw) // sw + 1, c)

    def apply(self, x: tf.Tensor) -> tf.Tensor:
        return tf.nn.avg_pool2d(x, self.ksize, self.strides, self.padding)

    def transpose(self, a: tf.Tensor) -> tf.Tensor:
        flat, lead = fold_spec(a, 3)
        in_shape = tf.concat([tf.shape(flat)[:1], self.in_shape], 0)
        back = tf.raw_ops.AvgPoolGrad(orig_input_shape=in_shape, grad=flat, ksize=self.ksize,
                                      strides=self.strides, padding=self.padding)
        return unfold_spec(back, lead)


class GlobalAveragePooling2D(LinearOperator):
    """The mean over the spatial axes, optionally keeping them as size 1."""

    def __init__(self, name: str, input_shape: tuple[int, ...], keepdims: bool):
        super().__init__(name)
        self.in_shape = tuple(input_shape)
        self.keepdims = keepdims

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (1, 1, shape[-1]) if self.keepdims else (shape[-1],)

    def apply(self, x: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(x, axis=(1, 2), keepdims=self.keepdims)

    def transpose(self, a: tf.Tensor) -> tf.Tensor:
        h, w, c = self.in_shape
        per_channel = tf.reshape(a, tf.concat([tf.shape(a)[:2], [1, 1, c]], 0)) / (h * w)
        return tf.broadcast_to(per_channel, tf.concat([tf.shape(a)[:2], self.in_shape], 0))
