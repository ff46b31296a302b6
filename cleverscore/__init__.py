"""CLEVER robustness scores (Weng, Zhang, Chen et al., ICLR 2018): the library behind the command lines.

The user-facing names are below; `import cleverscore` itself loads no TensorFlow (each name is
imported when first used).

    import cleverscore
    result = cleverscore.clever_scores(model, image, target=None, nsamps=1024, niters=100)

Stages, from the bottom up (imports go one way): `errors`, `norms`, `settings`, `log_lines`,
`mat_files`; `data`; `models`; `scoring`; `sampling`; `certify`; `attacks`; `running`; `api`;
`cli` (the command lines at the repository root are thin wrappers over `cli`).
"""

from __future__ import annotations

import importlib

# name -> the module that defines it
_EXPORTS = {
    "clever_scores": "cleverscore.api",
    "CleverResult": "cleverscore.api",
    "TargetScores": "cleverscore.api",
    "EstimateLipschitz": "cleverscore.sampling.estimator",
    "CollectSettings": "cleverscore.settings",
    "ModelSettings": "cleverscore.settings",
    "DataSettings": "cleverscore.settings",
    "SamplingSettings": "cleverscore.settings",
    "ScoreSettings": "cleverscore.settings",
    "L1": "cleverscore.norms",
    "L2": "cleverscore.norms",
    "LINF": "cleverscore.norms",
    "LpNorm": "cleverscore.norms",
    "CleverError": "cleverscore.errors",
    "UsageError": "cleverscore.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cleverscore' has no attribute {name!r}")
