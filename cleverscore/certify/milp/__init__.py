"""Exact robustness answers for small ReLU networks by mixed-integer programming (HiGHS via scipy).

Two problems, both over a feed-forward network of dense layers with ReLUs (`network.py`):

* `minimal_distortion`: the smallest Linf or L1 perturbation that makes the target logit reach
  the true one (MIPVerify's formulation, Tjeng et al., ICLR 2019; `distortion.py`);
* `local_lipschitz`: the largest L1 norm of the gradient of g = f_true - f_target over an Linf ball
  (LipMIP's formulation, Jordan & Dimakis, NeurIPS 2020, or an equivalent one over listed
  activation patterns; `lipschitz.py`), the exact constant that CLEVER's Linf score estimates
  by sampling.

Each unstable ReLU (its pre-activation bounds straddle 0) costs one binary; stable units are
linear. Bounds come from interval arithmetic, tightened by LP relaxation layer by layer
(`bounds.py`). Both problems stop at a time limit and then report the solver's proven bounds.
"""

from cleverscore.certify.milp.bounds import TIGHTENINGS
from cleverscore.certify.milp.distortion import DistortionResult, minimal_distortion
from cleverscore.certify.milp.lipschitz import FORMULATIONS, LipschitzResult, local_lipschitz
from cleverscore.certify.milp.network import MAX_HIDDEN_RELUS, relu_network_from_keras
from cleverscore.certify.milp.patterns import PATTERN_MAX_UNSTABLE
from cleverscore.certify.milp.problem import DEFAULT_BOX, DEFAULT_TIME_LIMIT

__all__ = [
    "DEFAULT_BOX",
    "DEFAULT_TIME_LIMIT",
    "FORMULATIONS",
    "MAX_HIDDEN_RELUS",
    "PATTERN_MAX_UNSTABLE",
    "TIGHTENINGS",
    "DistortionResult",
    "LipschitzResult",
    "local_lipschitz",
    "minimal_distortion",
    "relu_network_from_keras",
]
