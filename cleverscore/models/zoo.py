"""The one builder for every MNIST/CIFAR architecture, and the map from model names to weights.

Architectures (spec section 5): the 7-layer CNN (`normal`, `distilled`, `brelu`, `adv_EPS`
adversarially trained at Linf radius EPS, and `normal` with another `--activation`), the 2-layer
MLP with softplus(10x)/10, and N-layer MLPs named `N,M,tag`. MNIST and CIFAR differ only by input shape and layer widths.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cleverscore.errors import CleverError, UsageError
from cleverscore.locations import BUILTIN_MODELS, MODELS, command

CNN_WIDTHS = {"mnist": (32, 64, 200), "cifar": (64, 128, 256)}
IMAGE_SHAPES = {"mnist": (28, 28, 1), "cifar": (32, 32, 3)}
NUM_CLASSES = 10
ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "softplus", "hard_sigmoid", "arctan")
BUILTIN_NAMES = ("normal", "distilled", "brelu", "2-layer")
ADVERSARIAL_PREFIX = "adv_"  # adv_EPS: the CNN adversarially trained (PGD, Linf) at radius EPS
DISTILLATION_T = 100
TWO_LAYER_HIDDEN = 1024


@dataclass(frozen=True)
class ModelSpec:
    """A named model: its architecture and where its weights live.

    Attributes:
        dataset: 'mnist' or 'cifar'.
        kind: 'cnn' (7-layer CNN) or 'mlp'.
        activation: hidden activation name (one of ACTIVATIONS, or 'brelu', 'softplus10').
        hidden: MLP hidden layer sizes (empty for the CNN).
        weights_file: path of the Keras `.weights.h5` file relative to the models folder.
        train_command: the command that produces the weights file.
    """

    dataset: str
    kind: str
    activation: str
    hidden: tuple[int, ...]
    weights_file: str
    train_command: str


def parse_model_name(dataset: str, model_name: str, activation: str = "relu") -> ModelSpec:
    """Resolve `-m/--model_name` and `--activation` into a ModelSpec (spec section 5)."""
    if dataset not in CNN_WIDTHS:
        raise UsageError(f"unknown dataset {dataset!r} for the built-in models; choose mnist or cifar")
    if activation not in ACTIVATIONS:
        raise UsageError(f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
    train = f"{command('train_models.py')} --dataset {dataset} --model {model_name}"
    if model_name == "normal":
        if activation == "relu":
            return ModelSpec(dataset, "cnn", "relu", (), f"{dataset}.weights.h5", train)
        return ModelSpec(
            dataset, "cnn", activation, (), f"{dataset}_cnn_{activation}.weights.h5",
            f"{command('train_nlayer.py')} --model {dataset} --modeltype cnn --activation {activation}",
        )
    if activation != "relu" and model_name in BUILTIN_NAMES:
        raise UsageError(f"`activation` {activation} is only available with `model_name` normal or an N,M,tag MLP")
    if model_name == "distilled":
        return ModelSpec(dataset, "cnn", "relu", (), f"{dataset}-distilled-{DISTILLATION_T}.weights.h5", train)
    if model_name == "brelu":
        return ModelSpec(dataset, "cnn", "brelu", (), f"{dataset}_brelu.weights.h5", train)
    if model_name == "2-layer":
        return ModelSpec(dataset, "mlp", "softplus10", (TWO_LAYER_HIDDEN,), f"{dataset}_2layer.weights.h5", train)
    if model_name.startswith(ADVERSARIAL_PREFIX):
        return _parse_adversarial(dataset, model_name, activation)
    return _parse_nlayer(dataset, model_name, activation)


def adversarial_model_name(eps: float) -> str:
    """The zoo name of the CNN adversarially trained at Linf radius `eps` (input units): `adv_0.1`."""
    return f"{ADVERSARIAL_PREFIX}{eps:g}"


def _parse_adversarial(dataset: str, model_name: str, activation: str) -> ModelSpec:
    try:
        eps = float(model_name.removeprefix(ADVERSARIAL_PREFIX))
    except ValueError:
        eps = float("nan")
    if not 0 < eps <= 1:  # also refuses nan
        raise UsageError(f"unknown model {model_name!r}; an adversarially trained CNN is named adv_EPS "
                         "with its Linf radius in input units, 0 < EPS <= 1 (adv_0.1)")
    if activation != "relu":
        raise UsageError(f"`activation` {activation} is only available with `model_name` normal or an N,M,tag MLP")
    name = adversarial_model_name(eps)
    command = f"python3 train_models.py --dataset {dataset} --model normal --adv_eps {eps:g}"
    return ModelSpec(dataset, "cnn", "relu", (), f"{dataset}_{name}.weights.h5", command)


def _parse_nlayer(dataset: str, model_name: str, activation: str) -> ModelSpec:
    parts = model_name.split(",")
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit() or int(parts[0]) < 2:
        raise UsageError(
            f"unknown model {model_name!r}; choose {', '.join(BUILTIN_NAMES)}, adv_EPS or N,M,tag "
            "(an N-layer MLP with M hidden units, N >= 2)"
        )
    layers, width, tag = int(parts[0]), int(parts[1]), parts[2]
    hidden = (width,) * (layers - 1)
    name = f"{dataset}_{layers}layer_{activation}_{width}_{tag}.weights.h5"
    train = (
        f"{command('train_nlayer.py')} --model {dataset} --modeltype mlp --activation {activation} "
        f"--modelfile {name} {' '.join(map(str, hidden))}"
    )
    return ModelSpec(dataset, "mlp", activation, hidden, name, train)


def softplus10(x):
    """The original 2-layer model's activation: a sharp softplus that approaches ReLU yet stays smooth."""
    from keras import ops

    return ops.softplus(10.0 * x) / 10.0


def brelu(x):
    """ReLU capped at 1 (the BReLU defence)."""
    from keras import ops

    return ops.clip(x, 0.0, 1.0)


def activation_fn(name: str):
    """The Keras-callable activation for a name used in this zoo.

    The zoo's own activations are named module functions, not lambdas, so that the certifier
    can tell them apart by name.
    """
    import keras
    from keras import ops

    if name == "arctan":
        return ops.arctan
    if name == "softplus10":
        return softplus10
    if name == "brelu":
        return brelu
    return keras.activations.get(name)


def build_cnn(dataset: str, activation: str = "relu", dropout: float = 0.5):
    """The 7-layer CNN of spec section 5 for `dataset`, returning logits."""
    import keras
    from keras import layers

    a, b, d = CNN_WIDTHS[dataset]
    act = activation_fn(activation)
    return keras.Sequential(
        [
            keras.Input(IMAGE_SHAPES[dataset]),
            layers.Conv2D(a, 3, activation=act),
            layers.Conv2D(a, 3, activation=act),
            layers.MaxPooling2D(2),
            layers.Conv2D(b, 3, activation=act),
            layers.Conv2D(b, 3, activation=act),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(d, activation=act),
            layers.Dropout(dropout),
            layers.Dense(d, activation=act),
            layers.Dense(NUM_CLASSES),
        ],
        name=f"{dataset}_cnn_{activation}",
    )


def build_mlp(dataset: str, hidden: tuple[int, ...], activation: str = "relu"):
    """An MLP with the given hidden sizes for `dataset`, returning logits."""
    import keras
    from keras import layers

    act = activation_fn(activation)
    stack = [keras.Input(IMAGE_SHAPES[dataset]), layers.Flatten()]
    stack += [layers.Dense(h, activation=act) for h in hidden]
    stack.append(layers.Dense(NUM_CLASSES))
    return keras.Sequential(stack, name=f"{dataset}_mlp_{activation}_{'x'.join(map(str, hidden))}")


def build_model(spec: ModelSpec):
    """The untrained Keras model for a spec."""
    if spec.kind == "cnn":
        return build_cnn(spec.dataset, spec.activation)
    return build_mlp(spec.dataset, spec.hidden, spec.activation)


def models_folder(models_dir: str | os.PathLike | None = None) -> Path:
    """The weights folder: the argument, else CLEVER_MODELS_DIR, else `models/` (the checkout's, or ./models installed)."""
    if models_dir:
        return Path(models_dir)
    env = os.environ.get("CLEVER_MODELS_DIR")
    return Path(env) if env else MODELS


def weights_path(spec: ModelSpec, models_dir: str | os.PathLike | None = None) -> Path:
    """Where a model's weights are read: the models folder, else the package's built-in copy (the default model).

    Weights a user trained into the models folder take precedence over the built-in ones.
    """
    path = models_folder(models_dir) / spec.weights_file
    builtin = BUILTIN_MODELS / spec.weights_file
    return builtin if not path.is_file() and builtin.is_file() else path


def load_zoo_model(dataset: str, model_name: str, activation: str = "relu", models_dir: str | None = None):
    """Build a named model and load its trained weights; a one-line error if they are missing."""
    spec = parse_model_name(dataset, model_name, activation)
    path = weights_path(spec, models_dir)
    if not path.is_file():
        raise CleverError(f"no weights for {dataset} model {model_name!r} at {path}; train them with: {spec.train_command}")
    model = build_model(spec)
    try:
        model.load_weights(str(path))
    except (ValueError, OSError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CleverError(f"weights file {path} does not match the {dataset} {model_name} architecture: {first}") from err
    return model
