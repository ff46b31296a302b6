"""Certified bounds (linear bound propagation, CROWN) and exact answers (MILP, `certify.milp`) for classifiers.

    graph = from_keras(model)                          # or from_keras(model, input_mean=..., input_std=...)
    margin_lower_bounds(graph, x0, c, targets, r, L2)  # lower bounds of f_c - f_j over the ball
    certified_radius(graph, x0, c, targets, LINF)      # largest certified radius per target
    lipschitz_upper_bounds(graph, x0, c, targets, r, L2)   # certified local Lipschitz constants
    lipschitz_upper_bounds(graph, x0, c, targets, r, LINF, split_seconds=10)  # tightened by a split search

Exact answers for small ReLU MLPs live in `cleverscore.certify.milp` (minimal distortion,
local Lipschitz constant). Balls are intersected with the input box (default (-0.5, 0.5)); norms are the objects of
`cleverscore.norms`.
"""

from .bounds import DEFAULT_MEMORY_BUDGET
from .crown import certified_radius, interval_margin_lower_bounds, margin_lower_bounds
from .graph import SUPPORTED_ACTIVATIONS, SUPPORTED_LAYERS, Graph, Node, from_keras
from .lipschitz import lipschitz_upper_bounds
from .results import PERTURBATION_NORMS, CertifiedRadii, LayerReport, LipschitzBounds, MarginBounds

__all__ = [
    "DEFAULT_MEMORY_BUDGET", "PERTURBATION_NORMS", "SUPPORTED_ACTIVATIONS", "SUPPORTED_LAYERS",
    "CertifiedRadii", "Graph", "LayerReport", "LipschitzBounds", "MarginBounds", "Node",
    "certified_radius", "from_keras", "interval_margin_lower_bounds", "lipschitz_upper_bounds",
    "margin_lower_bounds",
]
