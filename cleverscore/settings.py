"""Typed, frozen settings: what a command line's flags mean, made into objects once, at the edge.

The command lines build these from their parsed flags (cli/collect.py); the library, the Ray
workers included, reads only these objects, never an `argparse.Namespace`. `None` means "not
given" (no radius, no transformation, no stopping rule), norms are `LpNorm` objects and files are
`Path`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cleverscore.norms import L2, LpNorm

DEFAULT_SEED = 1215
BUILTIN_RANGE = (-0.5, 0.5)  # the range of every built-in dataset and model (spec section 2)


@dataclass(frozen=True)
class ModelSettings:
    """Which classifier, and how its input is prepared.

    Attributes:
        dataset, model_name, activation: a built-in model (used when `model_path` is None).
        model_path: a user's Keras, SavedModel or ONNX model.
        input_range: the range the model takes; samples are clipped to it.
        input_mean, input_std: per-channel normalisation applied inside the model function.
        input_layout: an ONNX input's layout ('auto', 'nchw' or 'nhwc').
        output: 'logits', or 'probs' for a model ending in a softmax.
        unsafe_load: allow Keras files with custom Lambda code.
        weights: ImageNet weights: 'imagenet', 'random' or a file.
    """

    dataset: str = "mnist"
    model_name: str = "normal"
    activation: str = "relu"
    model_path: Path | None = None
    input_range: tuple[float, float] = BUILTIN_RANGE
    input_mean: tuple[float, ...] | None = None
    input_std: tuple[float, ...] | None = None
    input_layout: str = "auto"
    output: str = "logits"
    unsafe_load: bool = False
    weights: str = "imagenet"


@dataclass(frozen=True)
class DataSettings:
    """Which images, and which targets of each.

    Attributes:
        data_path: a user's `.npz` or image folder (else the dataset of ModelSettings).
        data_dir: where the standard dataset files are.
        labels: ImageNet: a '<file name> <class index>' file.
        numimg, firstimg: how many test images, from which one (or which row of `ids`).
        ids: a tab-separated file of image ids (and targets).
        target_type: the target bit mask (running/targets.py).
    """

    data_path: Path | None = None
    data_dir: Path | None = None
    labels: Path | None = None
    numimg: int = 1
    firstimg: int = 0
    ids: Path | None = None
    target_type: int = 15


@dataclass(frozen=True)
class SamplingSettings:
    """How the maxima of one (image, target) are collected.

    Attributes:
        nsamps, niters: points per iteration and iterations (maxima).
        sample_norm: the norm of the sampling ball.
        radius: sample uniformly in the ball of exactly this radius (None: the original's
            random radius factor, `sample_norm.default_scale`).
        batch_size: points per model call (None: the dataset's default).
        compute_slope: also record slopes between pairs of samples.
        order: 1 (gradient norms) or 2 (the second-order bound).
        transform: an input transformation evaluated with BPDA (None: none).
        rel_tol: stop a target once its L2 score's interval is this narrow (None: never).
        search_steps: steps of gradient ascent after sampling (0: no search).
        sampler: 'graph' (samples drawn in the compiled step) or 'pool' (NumPy workers).
        nthreads: the pool's worker processes (0: half the cores).
        devices: devices to split each batch across (0: all visible GPUs).
        seed: seeds targets and samples.
    """

    nsamps: int = 1024
    niters: int = 500
    sample_norm: LpNorm = L2
    radius: float | None = None
    batch_size: int | None = None
    compute_slope: bool = False
    order: int = 1
    transform: str | None = None
    rel_tol: float | None = None
    search_steps: int = 0
    sampler: str = "graph"
    nthreads: int = 0
    devices: int = 0
    seed: int = DEFAULT_SEED

    @property
    def scale(self) -> tuple[float, float]:
        """(low, high) of the factor that scales a unit-ball sample: the radius, or the original's law."""
        return (self.radius, self.radius) if self.radius else self.sample_norm.default_scale


@dataclass(frozen=True)
class BoundSettings:
    """What is computed beside the sampled maxima (running/bounds.py).

    Attributes:
        certify: certified radii and certified Lipschitz upper bounds (linear bound propagation).
        exact: exact minimal distortions and the exact local Lipschitz constant (MILP; small ReLU MLPs).
        exact_time_limit: seconds per MILP problem; past it the solver's proven bounds are kept.
        certify_budget: seconds per image that `certify` may spend splitting the ranges of the
            derivatives to tighten the Lipschitz bound (0: one pass of bound propagation).
        certify_optimize: seconds per image that `certify` may spend on optimised ReLU lower slopes,
            shared by the three CROWN radii (pushed further) and the forward bounds of the Lipschitz
            bound (tightened); 0: CROWN's own slopes.
        attacks: names of minimal-distortion attacks (`attacks.ATTACKS`) run on each (image, target)
            through the sampled model (with its `transform`, by BPDA); () runs none.
    """

    certify: bool = False
    exact: bool = False
    exact_time_limit: float = 60.0
    certify_budget: float = 0.0
    certify_optimize: float = 0.0
    attacks: tuple[str, ...] = ()

    @property
    def any(self) -> bool:
        """Whether anything is computed beside the maxima."""
        return self.certify or self.exact or bool(self.attacks)


@dataclass(frozen=True)
class CollectSettings:
    """Everything one collection run needs (collect_gradients.py).

    Attributes:
        save: the results folder; files go to `<save>/<data>_<model>/`.
        overwrite: recompute pairs whose file exists.
        quiet: no progress bars.
        verbose: the original's per-image, per-iteration and per-file lines ([DATAGEN], [STATS][L2],
            [STATS][L1]) and one progress bar per image; otherwise a header, one bar and a closing line.
        ray, ray_workers: run on Ray at this address ('local', 'auto', 'host:port') with this
            many workers (0: one per GPU, else one per machine); None: in this process.
        ray_timeout: seconds to wait for a `host:port` cluster's head to answer.
        flags: the raw flag values, recorded in each `.mat` as its `args` key.
    """

    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    bounds: BoundSettings = field(default_factory=BoundSettings)
    save: Path = Path("./lipschitz_mat")
    overwrite: bool = False
    quiet: bool = False
    verbose: bool = False
    ray: str | None = None
    ray_workers: int = 0
    ray_timeout: float = 30.0
    flags: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreSettings:
    """How the maxima of a `.mat` file become scores (clever.py).

    Attributes:
        method: 'mle', 'mle_reg' or 'maxsamp'.
        shape_reg, reg_param: the regulariser's weight and the parameter it penalises
            ('scale', what the original code did, or 'shape').
        fit_select: which start's fit is kept ('ks', 'likelihood' or 'original').
        use_slope: fit the slope maxima instead of the gradient-norm maxima.
        num_samples: use the first K maxima of each file (None: all).
        user_type: the info that replaces 'user' (None: keep it).
        plot_dir: save a histogram and the fitted pdf per file and norm here (None: no plots).
        nthreads: fitting processes (0: one per initial shape and one more).
    """

    method: str = "mle_reg"
    shape_reg: float = 0.01
    reg_param: str = "scale"
    fit_select: str = "ks"
    use_slope: bool = False
    num_samples: int | None = None
    user_type: str | None = None
    plot_dir: Path | None = None
    nthreads: int = 0
