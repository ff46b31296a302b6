"""CLEVER in one call, for notebooks: a Keras, ONNX or PyTorch model and an image in, scores and fits out.

    from cleverscore.api import clever_scores
    result = clever_scores(model, image, target=None, nsamps=1024, niters=100)
    print(result.scores)   # {'L1': .., 'L2': .., 'Li': ..}: untargeted (minimum over classes)

It runs the same sampler and fit as `collect_gradients.py` + `clever.py`; with the same seed
and `image_id` (the image's index in the CLI's data) it gives the same numbers. `certify=True`
adds the proofs `collect_gradients.py --certify` writes (the same code, running/bounds.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cleverscore.errors import UsageError
from cleverscore.norms import NORMS, grad_column
from cleverscore.sampling.estimator import EstimateLipschitz
from cleverscore.scoring.fit import SHAPE_REG, WeibullFit, clever_score, fit_many
from cleverscore.scoring.intervals import end_point_interval
from cleverscore.settings import SamplingSettings


@dataclass
class TargetScores:
    """Scores against one target class, with the fit behind each norm's Lipschitz estimate.

    `intervals[label]` is the score's 95% interval (score_lo, score_hi) from clever_interval.py.
    With `certify=True`: `certified_radius[label]`, no adversarial example within this distance in
    that norm (a proof, the larger of CROWN's and the Lipschitz bound's; `.mat` key
    `certified_radius_<label>`), and `lipschitz_certified[label]`,
    a proven upper bound of the Lipschitz constant behind that norm's score over the sampled ball
    (`G2_certified` for L2, `G1_certified` for Li, `Gi_certified` for L1); empty dicts otherwise.
    `lipschitz_exact[label]`: that bound where the split search (`certify_budget`) proved it attained
    in the ball, i.e. the exact constant (the sampling norm's label only; `.mat` key
    `lipschitz_certified_exact`); empty otherwise.
    """

    target: int
    g_x0: float
    scores: dict[str, float]
    fits: dict[str, WeibullFit]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    certified_radius: dict[str, float] = field(default_factory=dict)
    lipschitz_certified: dict[str, float] = field(default_factory=dict)
    lipschitz_exact: dict[str, float] = field(default_factory=dict)


@dataclass
class CleverResult:
    """The scores of one image: per target, and the minimum over targets (`scores`).

    `certified_radius` (with `certify=True`, else empty): per norm the minimum over the targets,
    the radius within which no target is reached (untargeted: no misclassification at all).
    """

    true_label: int
    predicted: int
    scores: dict[str, float]
    targets: list[TargetScores] = field(default_factory=list)
    certified_radius: dict[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v:.5g}" for k, v in self.scores.items())
        return f"CleverResult(true_label={self.true_label}, targets={[t.target for t in self.targets]}, {shown})"


def _as_callable(model, image_shape, input_mean, input_std, input_layout: str):
    """A model file, onnx.ModelProto or torch.nn.Module loaded; the normalisation wrapped around it."""
    from cleverscore.models.onnx_convert import is_onnx
    from cleverscore.models.torch_export import export_module, is_torch_module
    from cleverscore.models.user import load_user_model, normalized

    if is_torch_module(model):
        layout = "nhwc" if input_layout == "nhwc" else "nchw"  # PyTorch modules take NCHW unless told
        model = load_user_model(export_module(model, tuple(image_shape), layout), layout=layout,
                                image_shape=tuple(image_shape))
    elif isinstance(model, (str, os.PathLike)) or is_onnx(model):
        model = load_user_model(model, layout=input_layout, image_shape=tuple(image_shape))
    mean = None if input_mean is None else tuple(float(v) for v in input_mean)
    std = None if input_std is None else tuple(float(v) for v in input_std)
    return normalized(model, mean, std, int(image_shape[-1]))


def clever_scores(model, image: np.ndarray, target: int | list[int] | None = None, true_label: int | None = None,
                  nsamps: int = 1024, niters: int = 100, sample_norm: str = "l2", seed: int = 1215,
                  image_id: int = 0, batch_size: int = 0, radius: float | None = None,
                  input_range: tuple[float, float] = (-0.5, 0.5), method: str = "mle_reg",
                  shape_reg: float = SHAPE_REG, input_mean: Sequence[float] | None = None,
                  input_std: Sequence[float] | None = None, input_layout: str = "auto",
                  certify: bool = False, certify_budget: float = 0.0, certify_optimize: float = 0.0) -> CleverResult:
    """CLEVER scores of `image` for a model that returns logits.

    Args:
        model: a Keras model (or callable) mapping a batch in `input_range` to logits, a
            model file (`.keras`, `.h5`, a SavedModel folder, `.onnx`), a loaded onnx.ModelProto,
            or a torch.nn.Module (exported to ONNX in eval mode and converted; cached by content).
        image: one input (H, W, C) in `input_range`.
        target: a target class, a list of them, or None for every class but the true one
            (the untargeted score).
        true_label: the class g is measured from; default the model's prediction.
        nsamps, niters: samples per iteration and number of maxima (the paper: 1024, 500).
        sample_norm: 'l2', 'li' or 'l1' ball; radius: sample in a ball of exactly this radius.
        seed, image_id: the samples' seed, as `--seed` and the image index in the CLI.
        method, shape_reg: the fit (see clever_fit.fit_reverse_weibull).
        input_mean, input_std: per-channel normalisation the model expects, applied inside the
            model function ((x - mean) / std); `image`, `radius` and the scores stay in input units.
        input_layout: for ONNX models and torch modules, the model input's layout ('auto', 'nchw'
            or 'nhwc'; a module is taken as NCHW unless 'nhwc'); `image` is always (H, W, C).
        certify: also prove a radius per target and norm and bound the Lipschitz constants over
            the sampled ball, as `collect_gradients.py --certify` (Keras models only; seconds to
            minutes per target on a CNN).
        certify_budget, certify_optimize: seconds per image for the split search of the Lipschitz
            bound and for optimised ReLU slopes of the radii, as `--certify_budget` and
            `--certify_optimize` (with `certify` only).
    Returns:
        CleverResult with `scores` = the minimum over the targets of each norm's score, and with
        `certify`, `certified_radius` = the minimum over the targets of each norm's radius.
    """
    _check_certify_seconds(certify, certify_budget=certify_budget, certify_optimize=certify_optimize)
    x0 = np.asarray(image, np.float32)
    from cleverscore.data.user import looks_nchw

    if looks_nchw((1, *x0.shape)):  # a PyTorch user's image is (C, H, W)
        raise UsageError(f"`image` has shape {x0.shape}, which looks like (C, H, W); images here are (H, W, C) "
                         "whatever the model's layout: pass image.transpose(1, 2, 0)")
    model = _as_callable(model, x0.shape, input_mean, input_std, input_layout)
    est = EstimateLipschitz(seed=seed, log=None)
    est.load_model(model=model, batch_size=batch_size or min(nsamps, 1024), input_range=input_range)
    if certify:  # refuse a model the bounds cannot take before any sampling, not after it
        from cleverscore.running.bounds import certifiable_model

        certifiable_model(est.model)
    logits = est.predict(x0[None])[0]
    predicted = int(np.argmax(logits))
    c = predicted if true_label is None else int(true_label)
    if target is None:
        targets = [j for j in range(len(logits)) if j != c]
    else:
        targets = [int(t) for t in np.atleast_1d(target)]
    if not targets or any(t == c or not 0 <= t < len(logits) for t in targets):
        raise UsageError(f"targets {targets} must be classes other than {c} in 0..{len(logits) - 1}")
    sampling = est.sampling_settings(nsamps, niters, sample_norm, radius)
    results = est.collect_maxima(x0, c, targets, sampling, image_id=image_id)
    per_target = [_target_scores(res, method, shape_reg) for res in results]
    result = CleverResult(c, predicted, {n.label: min(t.scores[n.label] for t in per_target) for n in NORMS},
                          per_target)
    if certify:
        _add_certified(result, est, x0, sampling, certify_budget, certify_optimize)
    return result


def _check_certify_seconds(certify: bool, **seconds: float) -> None:
    for name, value in seconds.items():
        if not (np.isfinite(value) and value >= 0):
            raise UsageError(f"`{name}` must be a finite number of seconds >= 0, got {value}")
        if value and not certify:
            raise UsageError(f"`{name}` needs `certify=True`")


def _target_scores(res, method: str, shape_reg: float) -> TargetScores:
    """One target's fits, scores and intervals from its sampled maxima."""
    maxima = [res.grad_max[:, grad_column(n)] for n in NORMS]
    fits = fit_many(maxima, method, shape_reg)
    return TargetScores(
        res.target, res.g_x0,
        {n.label: clever_score(res.g_x0, f.estimate) for n, f in zip(NORMS, fits)},
        {n.label: f for n, f in zip(NORMS, fits)},
        {n.label: end_point_interval(m).score_interval(res.g_x0) for n, m in zip(NORMS, maxima)})


def _add_certified(result: CleverResult, est: EstimateLipschitz, x0: np.ndarray, sampling: SamplingSettings,
                   split_seconds: float, optimize_seconds: float) -> None:
    """The `--certify` keys of every target (running/bounds.py, the CLI's code), filled into `result`."""
    from cleverscore.running.bounds import certified_keys

    targets = [t.target for t in result.targets]
    keys = certified_keys(est.model, x0, result.true_label, targets, sampling, est.input_range, split_seconds,
                          optimize_seconds)
    for scores, row in zip(result.targets, keys):
        scores.certified_radius = {n.label: row[f"certified_radius_{n.label}"] for n in NORMS}
        scores.lipschitz_certified = {n.label: row[n.certified_key] for n in NORMS}
        if row["lipschitz_certified_exact"]:
            norm = sampling.sample_norm
            scores.lipschitz_exact = {norm.label: row[norm.certified_key]}
    result.certified_radius = {n.label: min(t.certified_radius[n.label] for t in result.targets) for n in NORMS}
