"""Every activation pattern of a few unstable ReLUs, with the L1 norm of the input gradient under it.

With m unstable units the gradient of g = f_true - f_target takes at most 2^m values, one per 0/1
assignment of their binaries. Listing them lets the Lipschitz MILP choose a pattern directly
(`lipschitz.py`'s pattern formulation) instead of reconstructing the gradient's signs with one
binary per input coordinate. Stable units keep the state their bounds prove.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cleverscore.certify.milp.bounds import Bound
from cleverscore.certify.milp.network import Layers

# 2^16 patterns of a 784-64-64-10 MLP list in about 2 s on a busy core; each extra unit doubles
# the time (2^18: about 7 s), and the pattern MILP's columns with it.
PATTERN_MAX_UNSTABLE = 18
# Floats per block of gradients held at once (16 MiB).
_BLOCK = 1 << 21


def pattern_norms(layers: Layers, bounds: list[Bound], true_label: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """(bits, norms): one row per assignment of the unstable units' binaries, first hidden layer's
    units first, and ||grad g||_1 under it."""
    w_last = layers[-1][0]
    y = (w_last[true_label] - w_last[target])[None, :]
    bits = np.zeros((1, 0), dtype=np.uint8)
    for k in range(len(layers) - 2, 0, -1):
        blocks = list(_expand(y, bits, layers[k][0], bounds[k]))
        y = np.concatenate([b[0] for b in blocks])
        bits = np.concatenate([b[1] for b in blocks])
    all_bits, norms = [], []
    for grad, block_bits in _expand(y, bits, layers[0][0], bounds[0]):
        norms.append(np.abs(grad).sum(axis=1))
        all_bits.append(block_bits)
    return np.concatenate(all_bits), np.concatenate(norms)


def pattern_bits(bounds: list[Bound], pattern: list[np.ndarray]) -> np.ndarray:
    """The row of `pattern_norms`' bits that an activation pattern's unstable units select."""
    return np.concatenate([p[(lo < 0.0) & (hi > 0.0)] for p, (lo, hi) in zip(pattern, bounds)]).astype(np.uint8)


def patterns_from_bits(bounds: list[Bound], bits: np.ndarray) -> list[np.ndarray]:
    """Each hidden layer's 0/1 pattern for one row of bits (stable units from their bounds)."""
    pattern, offset = [], 0
    for lo, hi in bounds:
        on = lo >= 0.0
        unstable = np.flatnonzero((lo < 0.0) & (hi > 0.0))
        on[unstable] = bits[offset:offset + unstable.size] > 0
        offset += unstable.size
        pattern.append(on)
    return pattern


def _expand(y: np.ndarray, bits: np.ndarray, w: np.ndarray, bound: Bound) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Back through one hidden layer: every row of y times every assignment of the layer's unstable units.

    W^T (on * y) splits into the stable units' part, shared by all assignments, plus one
    rank-one term per unstable unit that is switched on; blocks keep memory bounded.
    """
    lo, hi = bound
    on = (lo >= 0.0).astype(np.float64)
    unstable = np.flatnonzero((lo < 0.0) & (hi > 0.0))
    combos = ((np.arange(2**unstable.size)[:, None] >> np.arange(unstable.size)) & 1).astype(np.uint8)
    n_in = w.shape[1]
    combo_block = max(1, min(combos.shape[0], _BLOCK // n_in))
    row_block = max(1, _BLOCK // (combo_block * n_in))
    for r0 in range(0, y.shape[0], row_block):
        rows = y[r0:r0 + row_block]
        shared = (rows * on) @ w
        switched = rows[:, unstable, None] * w[unstable][None, :, :]
        for c0 in range(0, combos.shape[0], combo_block):
            chosen = combos[c0:c0 + combo_block]
            grad = shared[:, None, :] + np.matmul(chosen.astype(np.float64)[None, :, :], switched)
            block_bits = np.hstack([np.tile(chosen, (rows.shape[0], 1)),
                                    np.repeat(bits[r0:r0 + row_block], chosen.shape[0], axis=0)])
            yield grad.reshape(-1, n_in), block_bits
