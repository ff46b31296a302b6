"""The original's module name for the gradient-norm sampler: `from estimate_gradient_norm import EstimateLipschitz`.

The implementation lives in `cleverscore.sampling`.
"""

from cleverscore.sampling.estimator import EstimateLipschitz

__all__ = ["EstimateLipschitz"]
