"""ImageNet: the model registry, the image loader, and CLEVER end to end (spec section 9)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import shared_dataset, run_script
from cleverscore.errors import UsageError
from cleverscore.models.imagenet import NO_KERAS_EQUIVALENT, REGISTRY, build_imagenet_model, registry_entry
from cleverscore.data.imagenet import class_names, list_labelled_images, load_imagenet, resize_and_crop

FAST = ("mobilenet_v1_025", "resnet_v2_50")


@pytest.mark.parametrize("name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in REGISTRY])
def test_every_registry_entry_builds_and_returns_1000_logits(name):
    model = build_imagenet_model(name, "random")
    size = REGISTRY[name].size
    assert model.input_shape == (None, size, size, 3)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, size, size, 3)).astype(np.float32)
    logits = np.asarray(model(x, training=False))
    assert logits.shape == (2, 1000) and np.all(np.isfinite(logits))
    assert not np.allclose(logits.sum(1), 1.0)  # logits, not softmax probabilities


@pytest.mark.parametrize("name", NO_KERAS_EQUIVALENT)
def test_names_without_a_keras_equivalent_are_refused(name):
    with pytest.raises(UsageError, match="no keras.applications equivalent"):
        registry_entry(name)


def test_resize_keeps_aspect_and_crops_the_centre():
    wide = np.zeros((100, 300, 3), np.uint8)
    wide[:, 100:200] = 255  # a white band in the middle third
    out = resize_and_crop(Image.fromarray(wide), 50)
    assert out.shape == (50, 50, 3)
    assert out[:, 5:45].min() > 200  # the centre 50x50 of the 50x150 resize is the white band
    gray = resize_and_crop(Image.fromarray(np.full((60, 40), 77, np.uint8)), 32)
    assert gray.shape == (32, 32, 3) and np.all(gray == 77)


def write_images(folder, names, size=(40, 64), gray=False):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        shape = size if gray else (*size, 3)
        Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8)).save(folder / name)


def test_labels_come_from_1_based_names_or_a_label_file(tmp_path):
    write_images(tmp_path / "named", ["1.a.jpg", "1000.b.png", "65.c.jpg"])
    pairs = {p.name: label for p, label in list_labelled_images(tmp_path / "named", None)}
    assert pairs == {"1.a.jpg": 0, "1000.b.png": 999, "65.c.jpg": 64}
    write_images(tmp_path / "plain", ["x.JPEG", "y.JPEG"], gray=True)
    (tmp_path / "val.txt").write_text("x.JPEG 5\ny.JPEG 0\n")
    x, y, names = load_imagenet(tmp_path / "plain", 32, 2, labels_file=str(tmp_path / "val.txt"))
    assert x.shape == (2, 32, 32, 3) and x.dtype == np.float32 and -0.5 <= x.min() and x.max() <= 0.5
    assert dict(zip(names, y.tolist())) == {"x.JPEG": 5, "y.JPEG": 0}
    with pytest.raises(UsageError, match="not named <label 1..1000>"):
        list_labelled_images(tmp_path / "plain", None)


def test_selection_is_a_seeded_shuffle(tmp_path):
    write_images(tmp_path / "many", [f"{i + 1}.img.jpg" for i in range(8)])
    first = load_imagenet(tmp_path / "many", 16, 3, firstimg=2, seed=7)[2]
    assert first == load_imagenet(tmp_path / "many", 16, 3, firstimg=2, seed=7)[2]
    assert first != load_imagenet(tmp_path / "many", 16, 3, firstimg=2, seed=8)[2]


@pytest.mark.slow  # 12 s; the suite must stay under 8 minutes on 2 cores
def test_mobilenet_end_to_end_prints_stats(tmp_path):
    model = build_imagenet_model("mobilenet_v1_025", "random", seed=1215)
    write_images(tmp_path / "raw", ["a.png", "b.png"], size=(224, 224))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, name in enumerate(["a.png", "b.png"]):  # name each image by the model's own prediction
        img = Image.open(tmp_path / "raw" / name)
        x = resize_and_crop(img, 224).astype(np.float32)[None] / 255.0 - 0.5
        img.save(folder / f"{int(np.argmax(model(x))) + 1}.{i}.png")
    res = run_script("collect_gradients.py", "-d", "imagenet", "-m", "mobilenet_v1_025", "--weights", "random",
                     "--data_dir", str(folder), "-n", "2", "-N", "16", "-i", "4", "--target_type", "5",
                     "-s", str(tmp_path / "out"), "--quiet")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("correct = True") == 2 and "true_name = '" in res.stdout
    files = list((tmp_path / "out" / "imagenet_mobilenet_v1_025").glob("16_4_*.mat"))
    assert len(files) == 4
    out = run_script("clever.py", str(tmp_path / "out" / "imagenet_mobilenet_v1_025")).stdout
    assert [ln.split(",")[0] for ln in out.splitlines() if ln.startswith("[STATS][L0]")] == [
        "[STATS][L0] info = least", "[STATS][L0] info = top2"]


def test_offline_without_weights_is_a_one_line_error(tmp_path):
    write_images(tmp_path / "imgs", ["1.a.jpg"])
    res = run_script("collect_gradients.py", "-d", "imagenet", "-m", "mobilenet_v1_025", "--data_dir",
                     str(tmp_path / "imgs"), "-s", str(tmp_path / "out"), "-N", "8", "-i", "2",
                     env={"KERAS_HOME": str(tmp_path / "keras_home")})
    if res.returncode == 0:
        pytest.skip("a network was available: the weights were downloaded")
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2
    assert last.startswith("error: cannot get ImageNet weights") and "mobilenet_2_5_224_tf.h5" in last
    assert str(tmp_path / "keras_home" / "models") in last
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*"))


def test_unknown_imagenet_model_is_refused_before_anything_loads(tmp_path):
    res = run_script("collect_gradients.py", "-d", "imagenet", "-m", "alexnet", "-s", str(tmp_path))
    assert res.returncode == 2 and "has no keras.applications equivalent" in res.stderr


def test_shipped_class_names_cover_1000_classes():
    names = class_names()
    assert names is not None and len(names) == 1000 and names[0] == "tench"


def test_real_images_load_with_their_val_labels():
    root = shared_dataset("imagenet")
    x, y, names = load_imagenet(root / "val_images", 224, 20, labels_file=str(root / "val.txt"))
    labels = dict(zip(names, y.tolist()))
    assert labels["ILSVRC2012_val_00000001.JPEG"] == 65 and labels["ILSVRC2012_val_00000006.JPEG"] == 57
    assert x.shape == (20, 224, 224, 3)
    # No real Keras ImageNet weights are available here (see ../shared/data/README.md), so the
    # top-1 check against these labels runs only where a weights file is in the Keras cache.
