"""`--search_steps`: the sampler's ascent, then, on small ReLU networks, a walk over activation regions.

The ascent (sampling/search.py, sampling/smoothed.py) follows gradients; on a ReLU network it
ends in one activation region, often a unit or a few away from the region where ||grad g|| is
largest. Where the network is one the MILP module reads (a Keras Sequential of Flatten, Dense
and ReLU layers, at most 512 ReLUs, no input normalisation) and the ball is Linf, the ascent's
end points start `region_search` (certify/milp/regions.py), which steps to better neighbouring
regions by LP. Every norm it reports is the true network's at a point of the ball (the model is
evaluated there, as for a sample), so it stays a certain lower bound of the ball's constant.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cleverscore.errors import UsageError
from cleverscore.norms import LINF
from cleverscore.sampling.ascent import GRAD_COLUMNS, project
from cleverscore.sampling.search import STARTS
from cleverscore.settings import SamplingSettings

WALKS = 4  # distinct activation patterns among the ascent's end points the walk starts from, per norm
LPS_PER_STEP = 4  # region LPs allowed per search step, per norm; and STARTS pattern scores per step


def searched_norms(estimator, x0: np.ndarray, c: int, targets: Sequence[int], sampling: SamplingSettings,
                   image_id: int) -> np.ndarray:
    """(targets, 3) largest gradient norms (G2, G1, Gi) the search found inside the sampled ball."""
    net = region_network(estimator) if sampling.sample_norm == LINF else None
    if net is None:
        return estimator.searched_maxima(x0, c, targets, sampling, image_id)
    found, ends = estimator.searched_maxima(x0, c, targets, sampling, image_id, with_points=True)
    return np.maximum(found, walked_norms(estimator, net, x0, c, targets, sampling, ends))


def region_network(estimator):
    """The model's (W, b) layers when the region walk can run on it, else None (cached per estimator)."""
    from cleverscore.certify.milp import relu_network_from_keras
    from cleverscore.running.bounds import certifiable_model

    def convert():
        try:
            inner, mean, std = certifiable_model(estimator.model)
            return None if mean is not None or std is not None else relu_network_from_keras(inner)
        except UsageError:  # no Keras ReLU chain the MILP module reads: the ascent alone searches
            return None

    return estimator.steps.cached(("region network",), convert)


def walked_norms(estimator, net, x0: np.ndarray, c: int, targets: Sequence[int], sampling: SamplingSettings,
                 ends: list[list[np.ndarray]]) -> np.ndarray:
    """(targets, 3) norms of the true model at the best points of the region walks, one walk per norm."""
    import tensorflow as tf

    from cleverscore.certify.milp.problem import region
    from cleverscore.certify.milp.regions import region_search

    steps, radius = sampling.search_steps, sampling.scale[1]
    x0_flat = np.asarray(x0, np.float32).reshape(1, -1)
    lower, upper = region(x0_flat[0].astype(np.float64), estimator.input_range, radius)
    found = np.zeros((len(targets), 3), np.float32)
    for k, j in enumerate(targets):
        points = [region_search(net, c, int(j), lower, upper, ends[k][col], GRAD_COLUMNS[col].p,
                                max_moves=steps, max_patterns=STARTS * steps, max_lps=LPS_PER_STEP * steps,
                                max_walks=WALKS).x
                  for col in range(3)]
        # In float32, as the sampler's points: the same projection on its ball and the input box.
        flat = project(x0_flat, np.asarray(points, np.float32), LINF, radius, estimator.input_range)
        batch = tf.reshape(flat, (len(points),) + np.shape(x0))
        norms, _ = estimator.adapter.grad_norms(batch, tf.constant(int(c)), tf.constant([int(j)]), 1)
        found[k] = np.max(norms.numpy()[:, 0, :], axis=0)  # each walk's point counts for every norm
    return found
