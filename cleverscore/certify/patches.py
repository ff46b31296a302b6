"""Backward coefficients with local support ("patches"), for convolutional layers.

The objective e_i . y for a neuron i at position (h, w) of a feature map depends, a few layers
back, only on the neurons in its receptive field. Storing each row's coefficients on that
window, rather than on the whole map, makes CROWN bounds for convolutional layers affordable:
rows times window size instead of rows times map size. Row s covers the node positions
[top[s], top[s] + ph) x [left[s], left[s] + pw); window positions outside the map are not
neurons (the zero padding of a 'same' convolution) and hold zero coefficients.

Operators that can propagate patches implement `patch_backward`; anywhere else (a merge with
several consumers, Flatten, Dense) or once a window covers the whole map, the coefficients are
scattered back into dense form.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import tensorflow as tf


class _Layout(NamedTuple):
    """Where a set of windows lies on its map: cell rows and columns (S, ph, pw), whether each lies on the
    map, and the flat index each reads (the map's size, a zero cell, for those off it)."""

    y: np.ndarray
    x: np.ndarray
    inside: np.ndarray
    index: tf.Tensor


# A backward step reads several maps on the same windows (the relaxation's tensors, the multipliers,
# the signal bounds), and new coefficients keep their rows' positions: the layout is computed once.
# Entries hold their position arrays, so an id in a key cannot be reused while the entry lives.
_LAYOUTS: OrderedDict = OrderedDict()
_LAYOUTS_KEPT = 4  # a layout holds about 13 bytes per window cell


def _layout(top: np.ndarray, left: np.ndarray, window: tuple[int, int], map_shape: tuple[int, ...]) -> _Layout:
    key = (id(top), id(left), window, tuple(map_shape))
    hit = _LAYOUTS.get(key)
    if hit is not None and hit[0] is top and hit[1] is left:
        _LAYOUTS.move_to_end(key)
        return hit[2]
    (ph, pw), (h, w) = window, map_shape[:2]
    y = (top[:, None, None] + np.arange(ph)[None, :, None] + np.zeros(pw, int)[None, None, :]).astype(np.int32)
    x = (left[:, None, None] + np.arange(pw)[None, None, :] + np.zeros(ph, int)[None, :, None]).astype(np.int32)
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    layout = _Layout(y, x, inside, tf.constant(np.where(inside, y * w + x, h * w), tf.int32))
    _LAYOUTS[key] = (top, left, layout)
    if len(_LAYOUTS) > _LAYOUTS_KEPT:
        _LAYOUTS.popitem(last=False)
    return layout


@dataclass(frozen=True)
class Patches:
    """Coefficients a (B, S, ph, pw, C) of S rows, each on its own window of an (H, W, C) map."""

    a: tf.Tensor
    top: np.ndarray
    left: np.ndarray
    map_shape: tuple[int, int, int]

    @property
    def window(self) -> tuple[int, int]:
        return int(self.a.shape[2]), int(self.a.shape[3])

    def positions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Map row and column (S, ph, pw) of every window cell, and whether it lies on the map."""
        layout = _layout(self.top, self.left, self.window, self.map_shape)
        return layout.y, layout.x, layout.inside

    def covers_map(self) -> bool:
        ph, pw = self.window
        return ph >= self.map_shape[0] and pw >= self.map_shape[1]

    def moved(self, a: tf.Tensor, top: np.ndarray, left: np.ndarray, map_shape: tuple[int, ...]) -> Patches:
        """New coefficients on another map, with cells off that map zeroed."""
        out = Patches(a, top, left, tuple(map_shape))
        _, _, inside = out.positions()
        if inside.all():
            return out
        mask = tf.constant(inside[None, :, :, :, None], a.dtype)
        return Patches(a * mask, top, left, tuple(map_shape))

    def gather(self, maps: tf.Tensor) -> tf.Tensor:
        """Per-problem maps (B, H, W, X) (or (B, 1, H, W, X)) read on every row's window: (B, S, ph, pw, X).

        Cells off the map read zero.
        """
        if maps.shape.rank == 5:
            maps = maps[:, 0]
        h, w, _ = self.map_shape
        flat = tf.reshape(maps, (tf.shape(maps)[0], h * w, maps.shape[-1]))
        flat = tf.concat([flat, tf.zeros_like(flat[:, :1])], axis=1)
        return tf.gather(flat, _layout(self.top, self.left, self.window, self.map_shape).index, axis=1)

    def dense(self) -> tf.Tensor:
        """The same coefficients on the whole map: (B, S, H, W, C)."""
        h, w, c = self.map_shape
        s = len(self.top)
        y, x, inside = self.positions()
        rows = np.broadcast_to(np.arange(s)[:, None, None], inside.shape)
        index = np.stack([rows[inside], (y * w + x)[inside]], axis=1)
        cells = tf.boolean_mask(tf.transpose(self.a, (1, 2, 3, 0, 4)), inside)      # (n, B, C)
        batch = tf.shape(self.a)[0]
        placed = tf.scatter_nd(index, cells, tf.stack([s, h * w, batch, c]))
        return tf.transpose(tf.reshape(placed, tf.stack([s, h, w, batch, c])), (3, 0, 1, 2, 4))


def unit_patches(rows: np.ndarray, shape: tuple[int, int, int], dtype: tf.DType, batch: int) -> Patches:
    """The objectives e_r for flat neuron indices `rows` of an (H, W, C) map, as 1x1 windows."""
    h, w, c = shape
    eye = tf.one_hot(rows % c, c, dtype=dtype)[None, :, None, None, :]
    return Patches(tf.broadcast_to(eye, (batch, len(rows), 1, 1, c)), rows // (w * c), rows // c % w, tuple(shape))


def negate_and_stack(p: Patches) -> Patches:
    """Rows for +e_r and -e_r, as CROWN needs for lower and upper bounds."""
    return Patches(tf.concat([p.a, -p.a], axis=1), np.concatenate([p.top, p.top]),
                   np.concatenate([p.left, p.left]), p.map_shape)


def patch_sum(p: Patches, values: tf.Tensor) -> tf.Tensor:
    """sum over each row's window of a * values: (B, S)."""
    prod = p.a * values
    return tf.reduce_sum(tf.reshape(prod, tf.concat([tf.shape(prod)[:2], [-1]], 0)), axis=-1)
