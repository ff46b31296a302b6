"""Shipped weights load into their architectures and reach their recorded accuracy."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import BUILTIN_MNIST, REPO, shared_dataset

ROW = re.compile(r"^\| `(?P<file>[^`]+)` \| (?P<dataset>\w+) \| (?P<model>[\w.,-]+) \| (?P<activation>\w+) "
                 r"\| (?P<epochs>\d+) \| (?P<accuracy>[\d.]+)% \|")


def data_folder(dataset: str):
    """The shipped MNIST test files, or the shared CIFAR-10 files."""
    return BUILTIN_MNIST if dataset == "mnist" else shared_dataset("cifar10")


def shipped_models() -> list[dict]:
    rows = [m.groupdict() for m in map(ROW.match, (REPO / "models" / "README.md").read_text().splitlines()) if m]
    assert rows, "models/README.md lists no models"
    return rows


def test_every_weights_file_is_listed_and_every_listed_file_exists():
    listed = {r["file"] for r in shipped_models()}
    builtin = REPO / "cleverscore" / "builtin" / "models"  # the default model travels in the package
    assert listed == {p.name for folder in (REPO / "models", builtin) for p in folder.glob("*.weights.h5")}


@pytest.mark.parametrize("row", shipped_models(), ids=lambda r: r["file"])
def test_shipped_model_reaches_its_recorded_accuracy_on_the_first_1000_test_images(row):
    from cleverscore.data import load_dataset
    from cleverscore.models.zoo import load_zoo_model, parse_model_name

    assert parse_model_name(row["dataset"], row["model"], row["activation"]).weights_file == row["file"]
    model = load_zoo_model(row["dataset"], row["model"], row["activation"])
    data = load_dataset(row["dataset"], data_folder(row["dataset"]))
    logits = model.predict(data.test_data[:1000], batch_size=500, verbose=0)
    accuracy = 100 * np.mean(logits.argmax(1) == data.test_labels[:1000].argmax(1))
    assert accuracy >= float(row["accuracy"]) - 0.5, (row["file"], accuracy)


@pytest.mark.parametrize("row", [r for r in shipped_models() if r["model"] == "brelu"], ids=lambda r: r["file"])
def test_brelu_hidden_activations_never_exceed_1(row):
    import keras

    from cleverscore.data import load_dataset
    from cleverscore.models.zoo import load_zoo_model

    model = load_zoo_model(row["dataset"], "brelu")
    hidden = [layer.output for layer in model.layers[:-1] if hasattr(layer, "activation")]
    probe = keras.Model(model.inputs, hidden)
    data = load_dataset(row["dataset"], data_folder(row["dataset"]))
    outputs = probe.predict(data.test_data[:200], verbose=0)
    assert max(float(np.max(o)) for o in outputs) <= 1.0
    assert min(float(np.min(o)) for o in outputs) >= 0.0
    assert any(np.mean(o == 1.0) > 0.001 for o in outputs)  # the cap is reached, so it matters


def test_train_nlayer_writes_a_loadable_mlp_at_the_documented_path(tmp_path):
    from conftest import run_script

    res = run_script("train_nlayer.py", "--model", "mnist", "--modeltype", "mlp", "--activation", "tanh", "64", "64",
                     "--epochs", "1", "--lr", "0.1", "--train_subset", "2000", "--modelpath", str(tmp_path),
                     "--data_dir", str(shared_dataset("mnist")))
    assert res.returncode == 0, res.stderr
    path = tmp_path / "mnist_3layer_tanh_64_trained.weights.h5"
    assert path.is_file() and f"saved = {path}" in res.stdout
    assert not (tmp_path / ".training").exists() or not any((tmp_path / ".training").iterdir())

    from cleverscore.data import load_dataset
    from cleverscore.models.zoo import load_zoo_model

    model = load_zoo_model("mnist", "3,64,trained", "tanh", models_dir=str(tmp_path))
    data = load_dataset("mnist", shared_dataset("mnist"))
    acc = np.mean(np.argmax(np.asarray(model(data.test_data[:1000])), 1) == np.argmax(data.test_labels[:1000], 1))
    assert acc > 0.6  # one epoch on 2000 images: far above chance (0.1)


def _tiny_mlp(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(32, "relu"),
                             keras.layers.Dense(10)])


def test_distilled_student_at_t1_is_sharper_than_the_teacher_at_t100():
    from cleverscore.data import load_dataset
    from cleverscore.models.training import TrainConfig, soft_labels, train

    data = load_dataset("mnist", shared_dataset("mnist"))
    x, y = data.train_data[:3000], data.train_labels[:3000]
    config = TrainConfig(epochs=3, lr=0.01, optimizer="adam", temperature=100.0)
    teacher = train(_tiny_mlp(0), x, y, config, verbose=0)
    student = train(_tiny_mlp(1), x, soft_labels(teacher, x, 100.0), config, verbose=0)
    test = data.test_data[:500]
    teacher_t100 = soft_labels(teacher, test, 100.0)
    student_t1 = soft_labels(student, test, 1.0)
    assert np.all(student_t1.max(1) > teacher_t100.max(1))
    assert np.median(student_t1.max(1)) > 0.9


def test_an_interrupted_training_resumes_from_its_last_finished_epoch(tmp_path):
    import keras

    from cleverscore.data import load_dataset
    from cleverscore.models.training import TrainConfig, train

    class StopAfterSecondEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    data = load_dataset("mnist", shared_dataset("mnist"))
    x, y = data.train_data[:1000], data.train_labels[:1000]
    config = TrainConfig(epochs=4, lr=0.05)
    with pytest.raises(KeyboardInterrupt):
        train(_tiny_mlp(0), x, y, config, verbose=0, backup_dir=tmp_path / "b", callbacks=(StopAfterSecondEpoch(),))
    assert any((tmp_path / "b").iterdir())
    epochs_run = []
    counter = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: epochs_run.append(epoch))
    train(_tiny_mlp(0), x, y, config, verbose=0, backup_dir=tmp_path / "b", callbacks=(counter,))
    assert epochs_run == [2, 3]


def test_resuming_with_other_settings_is_refused_in_one_line(tmp_path):
    import keras

    from cleverscore.data import load_dataset
    from cleverscore.errors import UsageError
    from cleverscore.models.training import TrainConfig, train_and_save, train_teacher, training_backup_folder

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    data = load_dataset("mnist", shared_dataset("mnist"))
    x, y = data.train_data[:500], data.train_labels[:500]
    output = tmp_path / "m.weights.h5"
    backups = training_backup_folder(output)
    with pytest.raises(KeyboardInterrupt):
        train_and_save(_tiny_mlp(0), x, y, TrainConfig(epochs=3, lr=0.05), None, output,
                       callbacks=(StopAfterFirstEpoch(),))
    with pytest.raises(UsageError, match=r"other settings \(lr 0.05 -> 0.01, optimizer sgd -> adam\)"):
        train_and_save(_tiny_mlp(0), x, y, TrainConfig(epochs=3, lr=0.01, optimizer="adam"), None, output)
    # a distillation's finished teacher lives in the same folder, and is not reused under other settings
    with pytest.raises(UsageError, match=r"other settings \(lr 0.05 -> 0.01, optimizer sgd -> adam\)"):
        train_teacher(_tiny_mlp(0), data, TrainConfig(epochs=3, lr=0.01, optimizer="adam"), backups)
    train_and_save(_tiny_mlp(0), x, y, TrainConfig(epochs=4, lr=0.05), None, output)  # more epochs: fine
    assert not backups.exists()  # a finished run removes its backup, settings included


@pytest.mark.parametrize("store_dtype", ["float32", "float16"])
def test_saved_weights_drop_optimizer_slots_and_load_back(tmp_path, store_dtype):
    import h5py
    import keras

    from cleverscore.models.zoo import build_model, parse_model_name
    from cleverscore.models.training import save_weights_atomically

    spec = parse_model_name("mnist", "2-layer")  # a Lambda-style activation, which clone_model cannot copy
    model = build_model(spec)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse")
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (8, 28, 28, 1)).astype(np.float32)
    model.fit(x, np.zeros((8, 10), np.float32), epochs=1, verbose=0)
    path = tmp_path / "m.weights.h5"
    save_weights_atomically(model, path, store_dtype)
    with h5py.File(path) as f:
        assert "optimizer" not in f and f["layers/dense/vars/0"].compression == "gzip"
        assert f["layers/dense/vars/0"].dtype == np.dtype(store_dtype)
    fresh = build_model(spec)
    fresh.load_weights(str(path))
    assert fresh.weights[0].dtype == "float32"
    tolerance = 0 if store_dtype == "float32" else 2e-3  # float16 keeps about 3 significant digits
    np.testing.assert_allclose(fresh.predict(x, verbose=0), model.predict(x, verbose=0), rtol=tolerance, atol=tolerance)
    assert [p.name for p in tmp_path.iterdir()] == ["m.weights.h5"]
