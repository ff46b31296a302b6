"""Linear operators: Dense, Conv2D, per-channel affine maps, reshapes and Add.

A linear map y = W x + b is bounded exactly by both methods: interval propagation in
centre-radius form (W mid + b, |W| rad), and backward propagation by A -> A W with the constant
A b. Gradient intervals go backward the same way (mid through W^T, radius through |W|^T).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import tensorflow as tf

from ..patches import Patches, patch_sum
from .base import Interval, Operator, fold_spec, sum_spec, unfold_spec


class LinearOperator(Operator):
    """y = W x + b for a single input; subclasses give W, |W| and their transposes as TF ops."""

    def forward(self, x: tf.Tensor) -> tf.Tensor:
        return self.apply(x) + self.offset()

    def apply(self, x: tf.Tensor) -> tf.Tensor:
        """W x without the constant."""
        raise NotImplementedError

    def apply_abs(self, x: tf.Tensor) -> tf.Tensor:
        """|W| x; the same as W x for maps with non-negative weights."""
        return self.apply(x)

    def transpose(self, a: tf.Tensor) -> tf.Tensor:
        """A W for A of shape (B, S, *out_shape)."""
        raise NotImplementedError

    def abs_transpose(self, a: tf.Tensor) -> tf.Tensor:
        return self.transpose(a)

    def offset(self) -> tf.Tensor | float:
        """The constant b, broadcastable to the output (0 when there is none)."""
        return 0.0

    def bias_term(self, a: tf.Tensor) -> tf.Tensor:
        """A . b as a (B, S) tensor."""
        b = self.offset()
        if isinstance(b, float):
            return tf.zeros(tf.shape(a)[:2], a.dtype)
        return sum_spec(a * b)

    def unit_rows(self, rows: np.ndarray, out_shape: tuple[int, ...], dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
        """For the output neurons `rows` (flat indices): their rows of W (R, *in_shape) and of b (R,).

        The generic version pushes one-hot rows through `transpose`; subclasses build them directly,
        which avoids a tensor of R times the output size.
        """
        eye = tf.reshape(tf.one_hot(rows, int(np.prod(out_shape)), dtype=dtype), (len(rows), 1, *out_shape))
        return self.transpose(eye)[:, 0], self.row_offsets(rows, out_shape, dtype)

    def row_offsets(self, rows: np.ndarray, out_shape: tuple[int, ...], dtype: tf.DType) -> tf.Tensor:
        b = self.offset()
        if isinstance(b, float):
            return tf.zeros((len(rows),), dtype)
        return tf.gather(tf.reshape(tf.broadcast_to(b, out_shape), (-1,)), rows)

    def interval(self, bounds: Interval) -> Interval:
        mid = (bounds.hi + bounds.lo) / 2
        rad = (bounds.hi - bounds.lo) / 2
        centre = self.forward(mid)
        spread = self.apply_abs(rad)
        return Interval(centre - spread, centre + spread)

    def backward(self, a: tf.Tensor, relaxation: None) -> tuple[list[tf.Tensor], tf.Tensor]:
        return [self.transpose(a)], self.bias_term(a)

    def spread_gradient(self, a: tf.Tensor) -> tf.Tensor:
        # The gradient pass sends delta to W^T delta, so a . (W^T delta) = (W a) . delta: W applied to a.
        flat, lead = fold_spec(a, len(a.shape) - 2)
        return unfold_spec(self.apply(flat), lead)

    def gradient_backward(self, g: Interval, bounds: Interval) -> list[Interval]:
        mid = self.transpose((g.hi + g.lo) / 2)
        rad = self.abs_transpose((g.hi - g.lo) / 2)
        return [Interval(mid - rad, mid + rad)]


class Dense(LinearOperator):
    """y = x W + b along the last axis (Keras Dense)."""

    def __init__(self, name: str, kernel: np.ndarray, bias: np.ndarray | None, dtype: tf.DType):
        super().__init__(name)
        self.kernel = tf.constant(kernel, dtype)
        self.abs_kernel = tf.abs(self.kernel)
        self.bias = None if bias is None else tf.constant(bias, dtype)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (*shape[:-1], int(self.kernel.shape[1]))

    def unit_rows(self, rows: np.ndarray, out_shape: tuple[int, ...], dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
        if len(out_shape) != 1:
            return super().unit_rows(rows, out_shape, dtype)
        return tf.gather(tf.transpose(self.kernel), rows), self.row_offsets(rows, out_shape, dtype)

    def apply(self, x: tf.Tensor) -> tf.Tensor:
        return tf.einsum("...i,io->...o", x, self.kernel)

    def apply_abs(self, x: tf.Tensor) -> tf.Tensor:
        return tf.einsum("...i,io->...o", x, self.abs_kernel)

    def transpose(self, a: tf.Tensor) -> tf.Tensor:
        return tf.einsum("...o,io->...i", a, self.kernel)

    def abs_transpose(self, a: tf.Tensor) -> tf.Tensor:
        return tf.einsum("...o,io->...i", a, self.abs_kernel)

    def offset(self) -> tf.Tensor | float:
        return 0.0 if self.bias is None else self.bias


class Conv2D(LinearOperator):
    """A 2-D convolution over NHWC inputs; backward through its transpose, never a dense matrix."""

    def __init__(self, name: str, kernel: np.ndarray, bias: np.ndarray | None, strides: tuple[int, int],
                 padding: str, input_shape: tuple[int, ...], dtype: tf.DType):
        super().__init__(name)
        self.kernel = tf.constant(kernel, dtype)
        self.abs_kernel = tf.abs(self.kernel)
        self.bias = None if bias is None else tf.constant(bias, dtype)
        self.strides = (1, *strides, 1)
        self.padding = padding.upper()
        self.in_shape = tuple(input_shape)
        (ho, wo, _), (h, w, _) = self.output_shape(self.in_shape), self.in_shape
        kh, kw = int(self.kernel.shape[0]), int(self.kernel.shape[1])
        same = self.padding == "SAME"
        # TF's 'same' padding: the odd row/column goes to the bottom/right.
        self.top = max((ho - 1) * strides[0] + kh - h, 0) // 2 if same else 0
        self.left = max((wo - 1) * strides[1] + kw - w, 0) // 2 if same else 0

    def patch_window(self, ph: int, pw: int) -> tuple[int, int]:
        (sh, sw), kh, kw = self.strides[1:3], int(self.kernel.shape[0]), int(self.kernel.shape[1])
        return (ph - 1) * sh + kh, (pw - 1) * sw + kw

    def patch_backward(self, p: Patches, relaxation: None) -> tuple[list[Patches], tf.Tensor]:
        constant = tf.zeros(tf.shape(p.a)[:2], p.a.dtype) if self.bias is None else patch_sum(p, self.bias)
        flat, lead = fold_spec(p.a, 3)
        nh, nw = self.patch_window(*p.window)
        out_shape = tf.stack([tf.shape(flat)[0], nh, nw, self.in_shape[-1]])
        back = unfold_spec(tf.nn.conv2d_transpose(flat, self.kernel, out_shape, self.strides, "VALID"), lead)
        sh, sw = self.strides[1:3]
        return [p.moved(back, p.top * sh - self.top, p.left * sw - self.left, self.in_shape)], constant

    def patch_spread_gradient(self, p: Patches) -> Patches | None:
        """W a for coefficients on windows (stride 1): a window of (ph, pw) on the input reaches the output
        cells whose receptive fields meet it, a (ph + kh - 1, pw + kw - 1) window."""
        if self.strides != (1, 1, 1, 1):
            return None
        kh, kw = int(self.kernel.shape[0]), int(self.kernel.shape[1])
        flat, lead = fold_spec(p.a, 3)
        padded = tf.pad(flat, [[0, 0], [kh - 1, kh - 1], [kw - 1, kw - 1], [0, 0]])
        out = unfold_spec(tf.nn.conv2d(padded, self.kernel, 1, "VALID"), lead)
        return p.moved(out, p.top + self.top - (kh - 1), p.left + self.left - (kw - 1),
                       self.output_shape(self.in_shape))

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        h, w, _ = shape
        kh, kw = int(self.kernel.shape[0]), int(self.kernel.shape[1])
        sh, sw = self.strides[1:3]
        if self.padding == "SAME":
            return (-(-h // sh), -(-w // sw), int(self.kernel.shape[3]))
        return ((h - kh) // sh + 1, (w - kw) // sw + 1, int(self.kernel.shape[3]))

    def unit_rows(self, rows: np.ndarray, out_shape: tuple[int, ...], dtype: tf.DType) -> tuple[tf.Tensor, tf.Tensor]:
        """Each output neuron's row of the convolution matrix: its filter placed over its receptive field."""
        (_, wo, co), (h, w, ci) = out_shape, self.in_shape
        kh, kw = int(self.kernel.shape[0]), int(self.kernel.shape[1])
        sh, sw = self.strides[1:3]
        top, left = self.top, self.left
        r, i, j = np.meshgrid(np.arange(len(rows)), np.arange(kh), np.arange(kw), indexing="ij")
        y = (rows[r] // (wo * co)) * sh - top + i
        x = (rows[r] // co % wo) * sw - left + j
        inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        filters = tf.gather(tf.transpose(self.kernel, (3, 0, 1, 2)), rows % co)      # (R, kh, kw, ci)
        updates = tf.boolean_mask(filters, inside)
        index = np.stack([r[inside], y[inside], x[inside]], axis=1)
        placed = tf.scatter_nd(index, updates, (len(rows), h, w, ci))
        return placed, self.row_offsets(rows, out_shape, dtype)

    def apply(self, x: tf.Tensor) -> tf.Tensor:
        return tf.nn.conv2d(x, self.kernel, self.strides, self.padding)

    def apply_abs(self, x: tf.Tensor) -> tf.Tensor:
        return tf.nn.conv2d(x, self.abs_kernel, self.strides, self.padding)

    def _transpose_with(self, a: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
        flat, lead = fold_spec(a, 3)
        out_shape = tf.concat([tf.shape(flat)[:1], self.in_shape], 0)
        back = tf.nn.conv2d_transpose(flat, kernel, out_shape, self.strides, self.padding)
        return unfold_spec(back, lead)

    def transpose(self, a: tf.Tensor) -> tf.Tensor:
        return self._transpose_with(a, self.kernel)

    def abs_transpose(self, a: tf.Tensor) -> tf.Tensor:
        return self._transpose_with(a, self.abs_kernel)

    def offset(self) -> tf.Tensor | float:
        return 0.0 if self.bias is None else self.bias


class ChannelAffine(LinearOperator):
    """y = scale * x + shift per channel (last axis): folded BatchNormalization, input normalisation."""

    def __init__(self, name: str, scale: np.ndarray, shift: np.ndarray, dtype: tf.DType):
        super().__init__(name)
        self.scale = tf.constant(scale, dtype)
        self.abs_scale = tf.abs(self.scale)
        self.shift = tf.constant(shift, dtype)

    def patch_window(self, ph: int, pw: int) -> tuple[int, int]:
        return ph, pw

    def patch_backward(self, p: Patches, relaxation: None) -> tuple[list[Patches], tf.Tensor]:
        return [replace(p, a=p.a * self.scale)], patch_sum(p, self.shift)

    def patch_spread_gradient(self, p: Patches) -> Patches:
        return replace(p, a=p.a * self.scale)

    def apply(self, x: tf.Tensor) -> tf.Tensor:
        return x * self.scale

    def apply_abs(self, x: tf.Tensor) -> tf.Tensor:
        return x * self.abs_scale

    def transpose(self, a: tf.Tensor) -> tf.Tensor:
        return a * self.scale

    def abs_transpose(self, a: tf.Tensor) -> tf.Tensor:
        return a * self.abs_scale

    def offset(self) -> tf.Tensor | float:
        return self.shift


class Reshape(LinearOperator):
    """Flatten and Reshape: a permutation-free change of shape, in row-major (NHWC) order."""

    def __init__(self, name: str, input_shape: tuple[int, ...], target_shape: tuple[int, ...]):
        super().__init__(name)
        self.in_shape = tuple(input_shape)
        self.target = tuple(target_shape)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.target

    def apply(self, x: tf.Tensor) -> tf.Tensor:
        return tf.reshape(x, (-1, *self.target))

    def transpose(self, a: tf.Tensor) -> tf.Tensor:
        return tf.reshape(a, tf.concat([tf.shape(a)[:2], self.in_shape], 0))


class Add(Operator):
    """The sum of several inputs of one shape (a residual merge)."""

    def __init__(self, name: str, arity: int):
        super().__init__(name)
        self.arity = arity

    def forward(self, *xs: tf.Tensor) -> tf.Tensor:
        return tf.add_n(list(xs))

    def interval(self, *bounds: Interval) -> Interval:
        return Interval(tf.add_n([b.lo for b in bounds]), tf.add_n([b.hi for b in bounds]))

    def backward(self, a: tf.Tensor, relaxation: None) -> tuple[list[tf.Tensor], tf.Tensor]:
        return [a] * self.arity, tf.zeros(tf.shape(a)[:2], a.dtype)

    def patch_window(self, ph: int, pw: int) -> tuple[int, int]:
        return ph, pw

    def patch_backward(self, p: Patches, relaxation: None) -> tuple[list[Patches], tf.Tensor]:
        return [p] * self.arity, tf.zeros(tf.shape(p.a)[:2], p.a.dtype)

    def gradient_backward(self, g: Interval, *bounds: Interval) -> list[Interval]:
        return [g] * len(bounds)

    def spread_gradient(self, a: tf.Tensor) -> tf.Tensor:
        return a  # every input receives the output's gradient itself

    def patch_spread_gradient(self, p: Patches) -> Patches:
        return p
