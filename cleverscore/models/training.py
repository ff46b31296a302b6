"""Training the zoo: one routine for every built-in MNIST/CIFAR model, resumable, with atomic weights files.

One training routine serves every model; models differ by architecture (model_zoo.py),
temperature and optimiser settings only. Weights are written atomically as Keras
`.weights.h5` files under `models/`, with the name `collect_gradients.py` looks for.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from cleverscore.errors import UsageError
from cleverscore.models.adversarial import PGDSettings

EPOCHS = 50  # the original's schedule; fewer still reach the accuracy targets on MNIST
BATCH_SIZE = 128
CNN_LR = 0.01  # SGD with Nesterov momentum 0.9, as the original
TWO_LAYER_LR = {"mnist": 0.1, "cifar": 0.2}  # the original 2-layer rates, with decay
TWO_LAYER_DECAY = 1e-6  # lr / (1 + decay * step), Keras 2's `decay` argument
ROBUST_VALIDATION_IMAGES = 500  # adversarial runs print PGD accuracy on these after each epoch (about 1% of its cost)


@dataclass
class TrainConfig:
    """Settings of one training run.

    Attributes:
        epochs: passes over the 55000/45000 training images.
        lr: initial SGD learning rate.
        decay: inverse-time decay per step (0 = constant rate).
        temperature: logits are divided by this before the softmax in the loss.
        batch_size: minibatch size.
        optimizer: 'sgd' (Nesterov momentum 0.9) or 'adam'.
        weight_decay: L2 penalty on weights (0 = none).
        adversary: train on these PGD examples instead of the images (None = normal training).
        warmup_epochs: epochs over which the adversary's radius grows from 0 to its eps.
        init_weights: weights file to start from (fine-tuning), or None for a fresh initialisation.
    """

    epochs: int = EPOCHS
    lr: float = CNN_LR
    decay: float = 0.0
    temperature: float = 1.0
    batch_size: int = BATCH_SIZE
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    adversary: PGDSettings | None = None
    warmup_epochs: int = 0
    init_weights: str | None = None


def make_optimizer(config: TrainConfig):
    import keras

    rate = config.lr
    if config.decay:
        rate = keras.optimizers.schedules.InverseTimeDecay(config.lr, decay_steps=1, decay_rate=config.decay)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(rate, weight_decay=config.weight_decay or None)
    return keras.optimizers.SGD(rate, momentum=0.9, nesterov=True, weight_decay=config.weight_decay or None)


def train(model, x_train, y_train, config: TrainConfig, validation=None, verbose: int = 2,
          backup_dir: Path | None = None, callbacks: tuple = ()):
    """Fit `model` (which returns logits) to soft or hard labels with cross-entropy on logits/T.

    With `backup_dir`, the state is saved after every epoch and a rerun of the same command
    resumes from the last finished epoch (long CIFAR runs survive being stopped). With
    `config.adversary`, each batch is replaced by its PGD examples (Madry et al.).
    """
    import keras

    temperature = float(config.temperature)

    def loss(y_true, logits):
        return keras.losses.categorical_crossentropy(y_true, logits / temperature, from_logits=True)

    fitted = model
    if config.adversary is not None:
        from cleverscore.models.adversarial import make_adversarial_trainer

        warmup_steps = config.warmup_epochs * -(-len(x_train) // config.batch_size)
        fitted = make_adversarial_trainer(model, config.adversary, warmup_steps)
    fitted.compile(optimizer=make_optimizer(config), loss=loss, metrics=["accuracy"])
    backup = [keras.callbacks.BackupAndRestore(str(backup_dir))] if backup_dir else []
    fitted.fit(
        x_train, y_train, batch_size=config.batch_size, epochs=config.epochs,
        validation_data=validation, shuffle=True, verbose=verbose, callbacks=[*backup, *callbacks],
    )
    return model


def check_backup_settings(backup_dir: Path, config: TrainConfig) -> None:
    """Refuse to resume a run's backups made with other settings; record the settings of a new run.

    The backups hold the optimizer's state and a distillation's finished teacher, so resuming them
    under another optimizer or rate would silently mix two runs. The epoch count may change:
    resuming with more epochs is intended.
    """
    settings = {k: v for k, v in asdict(config).items() if k != "epochs"}
    record = backup_dir / "settings.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        if changed:
            listed = ", ".join(f"{k} {saved.get(k)} -> {settings[k]}" for k in changed)
            raise UsageError(f"{backup_dir} holds an unfinished run with other settings ({listed}); "
                             "rerun it with its flags, or delete that folder to start afresh")
        return
    backup_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings))


def soft_labels(model, x, temperature: float, batch_size: int = 1024):
    """The teacher's softmax at temperature T: the distilled student's training targets."""
    import keras

    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return keras.ops.convert_to_numpy(keras.ops.softmax(logits / temperature, axis=-1))


def accuracy(model, x, y, batch_size: int = 1024) -> float:
    """Top-1 accuracy of a logits model on one-hot labels."""
    import numpy as np

    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, 1) == np.argmax(y, 1)))


def save_weights_atomically(model, path: Path, store_dtype: str = "float32") -> None:
    """Write the layer weights (no optimizer state), gzip-compressed, under a temporary name, then rename.

    Keras stores a compiled model's optimizer slots beside its weights, doubling the file; the
    shipped files only need the weights, and they live in git, so every megabyte counts.
    `store_dtype="float16"` halves the file again; Keras casts the values back to the model's
    float32 variables when it loads them.
    """
    from cleverscore.mat_files import write_atomically

    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_name(f".{os.getpid()}.raw.{path.name}")  # Keras insists on the .weights.h5 suffix
    try:
        model.save_weights(str(raw))
        write_atomically(path, lambda tmp: compress_h5(raw, tmp, skip=("optimizer",), dtype=store_dtype))
    finally:
        raw.unlink(missing_ok=True)


def compress_h5(source: Path, target: Path, skip: tuple[str, ...] = (), dtype: str = "float32") -> None:
    """Copy an HDF5 file with every dataset gzip-compressed, leaving out the top-level groups in `skip`.

    Floating-point arrays are stored as `dtype`.
    """
    import h5py
    import numpy as np

    def copy(src, dst, skipped: tuple[str, ...] = ()) -> None:
        dst.attrs.update(src.attrs)
        for name, item in src.items():
            if name in skipped:
                continue
            if isinstance(item, h5py.Group):
                copy(item, dst.create_group(name))
            elif item.shape:
                data = item[()]
                if np.issubdtype(data.dtype, np.floating):
                    data = data.astype(dtype)
                out = dst.create_dataset(name, data=data, compression="gzip", compression_opts=9, shuffle=True)
                out.attrs.update(item.attrs)
            else:
                dst.create_dataset(name, data=item[()]).attrs.update(item.attrs)

    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        copy(src, dst, skip)


def default_config(dataset: str, model_name: str, epochs: int | None) -> TrainConfig:
    if model_name == "2-layer":
        config = TrainConfig(lr=TWO_LAYER_LR[dataset], decay=TWO_LAYER_DECAY)
    else:
        config = TrainConfig()
    if model_name == "distilled":
        from cleverscore.models.zoo import DISTILLATION_T

        config.temperature = DISTILLATION_T
    if epochs is not None:
        config.epochs = epochs
    return config


def train_named_model(dataset: str, model_name: str, config: TrainConfig, data, output: Path,
                      store_dtype: str = "float32") -> float:
    """Train a zoo model (distillation trains a teacher first) and save it; return test accuracy."""
    from cleverscore.models.zoo import build_model, parse_model_name

    spec = parse_model_name(dataset, model_name)
    validation = (data.validation_data, data.validation_labels)
    labels = data.train_labels
    if model_name == "distilled":
        teacher = train_teacher(build_model(spec), data, config, training_backup_folder(output))
        print(f"teacher test accuracy (T=1 logits): {accuracy(teacher, data.test_data, data.test_labels):.4f}")
        labels = soft_labels(teacher, data.train_data, config.temperature)
    model = build_model(spec)
    if config.init_weights:
        load_initial_weights(model, config.init_weights)  # a resumed run's backup overrides these
    callbacks = ()
    if config.adversary is not None:
        from cleverscore.models.adversarial import robust_validation_callback

        watched = slice(0, ROBUST_VALIDATION_IMAGES)
        callbacks = (robust_validation_callback(model, data.validation_data[watched], data.validation_labels[watched],
                                                config.adversary),)
    train_and_save(model, data.train_data, labels, config, validation, output, store_dtype, callbacks)
    return accuracy(stored_model(spec, output), data.test_data, data.test_labels)


def load_initial_weights(model, path: str) -> None:
    """Start from a trained file (fine-tuning); a one-line error if it is not this architecture's."""
    try:
        model.load_weights(path)
    except (ValueError, OSError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"`init_weights` {path} does not fit the {model.name} architecture: {first}") from err


def stored_model(spec, output: Path):
    """The model as written to `output`, after any float16 rounding: what the recorded accuracies are of."""
    from cleverscore.models.zoo import build_model

    model = build_model(spec)
    model.load_weights(str(output))
    return model


def train_and_save(model, x, y, config: TrainConfig, validation, output: Path, store_dtype: str = "float32",
                   callbacks: tuple = ()):
    """Train with per-epoch backups beside `output`, save the weights, then drop the backups."""
    backups = training_backup_folder(output)
    check_backup_settings(backups, config)
    train(model, x, y, config, validation, backup_dir=backups / "model", callbacks=callbacks)
    save_weights_atomically(model, output, store_dtype)
    shutil.rmtree(backups, ignore_errors=True)  # a distillation teacher's backups go with it
    return model


def training_backup_folder(output: Path) -> Path:
    """Where an unfinished run keeps its per-epoch state (removed once the weights are saved)."""
    return output.parent / ".training" / output.name.removesuffix(".weights.h5")


def train_teacher(teacher, data, config: TrainConfig, backups: Path):
    """Train the distillation teacher, or reload it when a resumed run had already finished it."""
    check_backup_settings(backups, config)
    done = backups / "teacher.weights.h5"
    if done.exists():
        teacher.load_weights(str(done))
        return teacher
    validation = (data.validation_data, data.validation_labels)
    train(teacher, data.train_data, data.train_labels, config, validation, backup_dir=backups / "teacher")
    save_weights_atomically(teacher, done)
    return teacher
