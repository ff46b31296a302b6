"""Adversarial training (train_models.py --adv_eps): its PGD, its gain over normal training, its flags and zoo names."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import affine_model, run_main_in_process, shared_dataset


def two_class_affine(seed: int = 0):
    """logits = (w0.x, w1.x) on MNIST-shaped inputs: the Linf distance to the boundary is |margin| / ||w0 - w1||_1."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(0, 0.01, (784, 2))
    return affine_model(weights, np.zeros(2)), weights


def test_pgd_finds_the_affine_boundary_just_beyond_its_distance_and_nothing_inside_it():
    from cleverscore.models.adversarial import PGDSettings, survivors

    model, w = two_class_affine()
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.05, 0.05, (64, 28, 28, 1)).astype(np.float32)  # far from the box's faces at +-0.5
    margins = x.reshape(64, -1) @ (w[:, 0] - w[:, 1])
    labels = np.eye(2, dtype=np.float32)[(margins < 0).astype(int)]
    distance = np.abs(margins) / np.abs(w[:, 0] - w[:, 1]).sum()
    eps = float(np.median(distance))
    attack = PGDSettings(eps, steps=3)
    inside, beyond = distance < 0.98 * eps, distance > 1.02 * eps
    survives = survivors(model, x, labels, attack, restarts=1)
    assert beyond.sum() > 20 and inside.sum() > 20
    assert survives[beyond].all()  # nothing to find: no false example
    assert not survives[inside].any()  # the corner sign(w1 - w0) is found


def test_pgd_examples_stay_in_the_ball_and_the_image_range():
    import tensorflow as tf

    from cleverscore.models.adversarial import pgd

    model, _ = two_class_affine(2)
    x = np.random.default_rng(3).uniform(-0.5, 0.5, (16, 28, 28, 1)).astype(np.float32)
    labels = np.eye(2, dtype=np.float32)[np.arange(16) % 2]
    adv = pgd(model, tf.constant(x), tf.constant(labels), 0.2, 5, 0.1).numpy()
    assert np.max(np.abs(adv - x)) <= 0.2 + 1e-6 and adv.min() >= -0.5 and adv.max() <= 0.5
    assert np.mean(np.abs(adv - x) > 0.19) > 0.5  # signed steps go to the ball's faces


def tiny_mlp(seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10)])


def test_adversarial_training_raises_pgd_accuracy_over_normal_training_for_the_same_steps():
    """Paired over test images: the adversarially trained MLP survives PGD where the normal one falls far more often.

    The same tiny MLP from the same seed, 2000 images for 4 epochs (64 optimizer steps) each way,
    the radius warmed up over the first two (from scratch, PGD at 0.1 at once leaves it at chance);
    an exact sign test on the images where exactly one of the two survives, and a margin on the
    accuracies (measured with seeds 0 and 1: 0.46 against 0.17, 0.45 against 0.22).
    """
    from scipy.stats import binomtest

    from cleverscore.data import load_dataset
    from cleverscore.models.adversarial import PGDSettings, survivors
    from cleverscore.models.training import TrainConfig, train

    data = load_dataset("mnist", shared_dataset("mnist"))
    x, y = data.train_data[:2000], data.train_labels[:2000]
    normal = TrainConfig(epochs=4, optimizer="adam", lr=0.003)
    adversarial = TrainConfig(epochs=4, optimizer="adam", lr=0.003, adversary=PGDSettings(0.1, steps=5),
                              warmup_epochs=2)
    models = [train(tiny_mlp(0), x, y, config, verbose=0) for config in (normal, adversarial)]
    test, truth = data.test_data[:1000], data.test_labels[:1000]
    s_normal, s_robust = (survivors(m, test, truth, PGDSettings(0.1, steps=10), restarts=1) for m in models)
    only_robust, only_normal = int(np.sum(s_robust & ~s_normal)), int(np.sum(s_normal & ~s_robust))
    assert binomtest(only_robust, only_robust + only_normal, 0.5, alternative="greater").pvalue < 1e-6
    assert s_robust.mean() > s_normal.mean() + 0.15, (s_robust.mean(), s_normal.mean())


def test_an_interrupted_adversarial_training_resumes_with_its_warmup_where_it_stopped(tmp_path):
    import keras

    from cleverscore.data import load_dataset
    from cleverscore.models.adversarial import PGDSettings
    from cleverscore.models.training import TrainConfig, train

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt

    data = load_dataset("mnist", shared_dataset("mnist"))
    x, y = data.train_data[:512], data.train_labels[:512]
    config = TrainConfig(epochs=3, lr=0.05, adversary=PGDSettings(0.1, steps=2), warmup_epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_mlp(0), x, y, config, verbose=0, backup_dir=tmp_path / "b", callbacks=(StopAfterFirstEpoch(),))
    class Steps(keras.callbacks.Callback):
        """(epoch, the optimizer's step counter) at each epoch's start: the counter the warm-up's ramp reads."""

        seen: list = []

        def on_epoch_begin(self, epoch, logs=None):
            self.seen.append((epoch, int(self.model.optimizer.iterations)))

    steps = Steps()
    train(tiny_mlp(0), x, y, config, verbose=0, backup_dir=tmp_path / "b", callbacks=(steps,))
    assert steps.seen == [(1, 4), (2, 8)]  # 512 images in batches of 128: the ramp goes on from step 4, not 0


# ---- zoo names ----

def test_adv_names_select_the_cnn_and_their_weights_file():
    from cleverscore.models.zoo import parse_model_name

    spec = parse_model_name("mnist", "adv_0.1")
    assert (spec.kind, spec.activation, spec.weights_file) == ("cnn", "relu", "mnist_adv_0.1.weights.h5")
    assert parse_model_name("mnist", "adv_0.10") == spec  # one file per radius, however it is written
    assert parse_model_name("cifar", "adv_0.008").weights_file == "cifar_adv_0.008.weights.h5"
    assert spec.train_command.endswith("--model normal --adv_eps 0.1")


@pytest.mark.parametrize("name", ["adv_", "adv_x", "adv_0", "adv_-0.1", "adv_1.5", "adv_nan"])
def test_bad_adv_names_are_refused_in_one_line(name):
    from cleverscore.errors import UsageError
    from cleverscore.models.zoo import parse_model_name

    with pytest.raises(UsageError, match=r"adversarially trained CNN is named adv_EPS"):
        parse_model_name("mnist", name)


def test_a_missing_adv_model_names_the_command_that_trains_it(tmp_path):
    from cleverscore.errors import CleverError
    from cleverscore.models.zoo import load_zoo_model

    with pytest.raises(CleverError, match=r"train_models.py --dataset mnist --model normal --adv_eps 0.2$"):
        load_zoo_model("mnist", "adv_0.2", models_dir=str(tmp_path))


# ---- train_models.py flags ----

@pytest.mark.parametrize("argv,message", [
    (["--adv_eps", "0"], "argument --adv_eps: must be > 0"),
    (["--adv_eps", "1.5"], "argument --adv_eps: must be <= 1"),
    (["--adv_eps", "nan"], "argument --adv_eps: must be a finite number"),
    (["--adv_eps", "0.1", "--adv_steps", "0"], "argument --adv_steps: must be >= 1"),
    (["--adv_eps", "0.1", "--adv_steps", "2.5"], "argument --adv_steps: must be an integer"),
    (["--adv_eps", "0.1", "--adv_step_size", "-0.01"], "argument --adv_step_size: must be > 0"),
    (["--adv_steps", "7"], "--adv_steps needs --adv_eps"),
    (["--adv_warmup", "2"], "--adv_warmup needs --adv_eps"),
    (["--adv_eps", "0.1", "--model", "2-layer"], "--adv_eps trains the 7-layer CNN (--model normal)"),
    (["--adv_eps", "0.1", "--epochs", "3", "--adv_warmup", "3"], "--adv_warmup must be >= 0 and below --epochs (3)"),
    (["--adv_eps", "0.1", "--init_weights", "no/such.weights.h5"], "--init_weights: no file no/such.weights.h5"),
    (["--adv_eps", "0.1", "--robust_images", "-1"], "--robust_images must be >= 0"),
])
def test_bad_adversarial_training_flags_get_one_line_errors(argv, message):
    from cleverscore.cli.train import main

    res = run_main_in_process(main, argv)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


def test_init_weights_of_another_architecture_are_refused_in_one_line():
    from conftest import REPO

    from cleverscore.errors import UsageError
    from cleverscore.models.training import load_initial_weights
    from cleverscore.models.zoo import build_model, parse_model_name

    model = build_model(parse_model_name("mnist", "adv_0.1"))
    with pytest.raises(UsageError, match=r"^`init_weights` \S+mnist_2layer.weights.h5 does not fit the mnist_cnn_relu "
                                         r"architecture: [^\n]+$"):
        load_initial_weights(model, str(REPO / "models" / "mnist_2layer.weights.h5"))


# ---- the shipped adversarially trained models ----

ADV_ROW = re.compile(r"^\| `(?P<file>[^`]+)` \| (?P<dataset>\w+) \| (?P<model>adv_[\d.]+) \| relu \| \d+ \| [\d.]+% "
                     r"\| (?P<robust>[\d.]+)% \|")


def shipped_adversarial_models() -> list[dict]:
    from conftest import REPO

    lines = (REPO / "models" / "README.md").read_text().splitlines()
    return [m.groupdict() for m in map(ADV_ROW.match, lines) if m]


@pytest.mark.slow  # about 25 s per model on a free core: CI's time budget
@pytest.mark.parametrize("row", shipped_adversarial_models(), ids=lambda r: r["model"])
def test_shipped_adversarial_model_survives_pgd_at_its_radius_where_the_normal_cnn_does_not(row):
    """On the first 200 test images, PGD at the model's radius (20 steps, one random start): about its recorded
    robust accuracy (a weaker attack on fewer images: within 5 points below), far above the normal CNN's."""
    from conftest import REPO

    from cleverscore.data import load_dataset
    from cleverscore.models.adversarial import PGDSettings, robust_accuracy
    from cleverscore.models.zoo import load_zoo_model

    data_dir = REPO / "data" / "mnist" if row["dataset"] == "mnist" else shared_dataset("cifar10")
    data = load_dataset(row["dataset"], data_dir)
    x, y = data.test_data[:200], data.test_labels[:200]
    attack = PGDSettings(float(row["model"].removeprefix("adv_")), steps=20)
    robust = robust_accuracy(load_zoo_model(row["dataset"], row["model"]), x, y, attack, restarts=1)
    normal = robust_accuracy(load_zoo_model(row["dataset"], "normal"), x, y, attack, restarts=1)
    assert robust >= float(row["robust"]) / 100 - 0.05, robust
    assert robust > normal + 0.1, (robust, normal)
