"""collect_gradients.py --attacks: the attacks' minimal distortions recorded beside the maxima.

On an affine model the distance to the boundary is known in closed form in every norm, so the
recorded best distortion must equal it; `clever.py --compare` must then carry attack evidence.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.io as sio

from conftest import affine_model, exact_l1, run_script

SMALL = (6, 6, 1)
NORMS = ("L1", "L2", "Li")
EVIDENCE = re.compile(r"\[COMPARE\] info = top2, norm = (\w+), attack B/A = ([\d.]+)")


def affine_case(weights: np.ndarray, x: np.ndarray):
    """A two-class affine model, its labels of `x` and the exact distances to its boundary per norm."""
    model = affine_model(weights, np.array([0.0, -1.0]), SMALL)
    logits = np.asarray(model(x), np.float64)
    labels = np.argmax(logits, axis=1)
    margin = np.abs(logits[:, 0] - logits[:, 1])
    normals = [(weights[:, 1] - weights[:, 0]) * (1 if c == 0 else -1) for c in labels]
    exact = {"L2": np.array([m / np.linalg.norm(n) for m, n in zip(margin, normals)]),
             "Li": np.array([m / np.abs(n).sum() for m, n in zip(margin, normals)]),
             "L1": np.array([exact_l1(xi, n, m) for xi, n, m in zip(x, normals, margin)])}
    return model, labels, exact


def two_affine_models():
    """Two affine models and 4 images, well inside the box, that both classify alike (compare pairs by label)."""
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(36, 2)) for _ in range(2)]
    x = rng.uniform(-0.3, 0.3, size=(40, *SMALL)).astype(np.float32)
    cases = [affine_case(w, x) for w in weights]
    inside = np.all([np.abs(x).max(axis=(1, 2, 3)) + c[2]["Li"] < 0.5 for c in cases], axis=0)
    keep = np.flatnonzero((cases[0][1] == cases[1][1]) & inside)[:4]
    assert len(keep) == 4
    x = x[keep]
    return [(model, x, labels[keep], {k: v[keep] for k, v in exact.items()}) for model, labels, exact in cases]


def collect(root, name: str, model, x, labels, *extra: str):
    if not (root / f"{name}.keras").exists():  # saved once: a re-saved file is another model_id
        model.save(root / f"{name}.keras")
    np.savez(root / "data.npz", x=x, y=labels)  # one data file: compare refuses folders of different images
    res = run_script("collect_gradients.py", "--model_path", str(root / f"{name}.keras"), "--data_path",
                     str(root / "data.npz"), "-n", "4", "-N", "16", "-i", "8", "--target_type", "1",
                     "-s", str(root / "out"), "--quiet", *extra)
    assert res.returncode == 0, res.stderr
    (folder,) = (root / "out").glob(f"data_{name}_*")
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("collect_attacks")
    a, b = two_affine_models()
    collect(root, "a", *a[:3])  # without --attacks first: the rerun with it must recompute these files
    folders = [collect(root, name, *case[:3], "--attacks") for name, case in (("a", a), ("b", b))]
    return {"root": root, "folders": folders, "exact": [a[3], b[3]]}


def mats(folder) -> list[dict]:
    return [sio.loadmat(p) for p in sorted(folder.glob("*.mat"), key=lambda p: int(p.name.split("_")[2]))]


@pytest.mark.slow
def test_recorded_distortion_is_the_exact_affine_distance_within_1_percent_per_norm(runs):
    for folder, exact in zip(runs["folders"], runs["exact"]):
        files = mats(folder)
        assert len(files) == 4
        for norm in NORMS:
            found = np.array([m[f"attack_distortion_{norm}"].item() for m in files])
            ratio = found / exact[norm]
            assert np.all(ratio >= 1 - 1e-5), (norm, ratio)  # nothing beats the exact distance
            assert np.all(ratio <= 1.01), (norm, ratio)


@pytest.mark.slow
def test_each_norm_names_the_attack_that_found_it_and_the_attacks_run(runs):
    default = ["pgd_li", "ddn_l2", "fab_l1"]  # --attacks alone
    for m in mats(runs["folders"][0]):
        assert str(m["attack_names"][0]).split(",") == default
        for norm in NORMS:
            assert str(m[f"attack_source_{norm}"][0]) in default
        assert m["attack_seconds"].item() > 0


@pytest.mark.slow
def test_a_folder_collected_without_attacks_is_recomputed_with_them(runs):
    # `a` was first collected without --attacks; the rerun with it replaced every file
    assert all("attack_distortion_L2" in m for m in mats(runs["folders"][0]))


@pytest.mark.slow
def test_compare_on_attacked_folders_carries_attack_evidence_of_the_recorded_distortions(runs):
    a, b = runs["folders"]
    res = run_script("clever.py", "--compare", str(a), str(b))
    assert res.returncode in (0, 3), res.stderr
    assert "rests on CLEVER alone" not in res.stdout
    lines = {norm: float(ratio) for norm, ratio in EVIDENCE.findall(res.stdout)}
    assert set(lines) == {"L1", "L2", "Li"}, res.stdout
    for norm, ratio in lines.items():
        mean = [np.mean([m[f"attack_distortion_{norm}"].item() for m in mats(f)]) for f in (a, b)]
        assert ratio == pytest.approx(mean[1] / mean[0], abs=0.006), (norm, res.stdout)


@pytest.mark.parametrize("flags, message", [
    (["--attacks", "pgd_x"], "--attacks: unknown attack(s) pgd_x"),
    (["--attacks", ","], "--attacks: unknown attack(s) (none given)"),
    (["--attacks", "--order", "2"], "--attacks works with --order 1"),
])
def test_bad_attack_flags_are_one_error_line(tmp_path, flags, message):
    res = run_script("collect_gradients.py", *flags, "-s", str(tmp_path / "out"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.stderr
    assert not (tmp_path / "out").exists()


def test_bpda_logits_are_the_model_at_the_transformed_point_with_its_gradient():
    import tensorflow as tf

    from cleverscore.attacks.bpda import bpda_logits
    from cleverscore.sampling.pool import apply_transform

    rng = np.random.default_rng(2)
    weights = rng.normal(size=(36, 2))
    model = affine_model(weights, np.zeros(2), SMALL)
    x = tf.constant(rng.uniform(-0.4, 0.4, size=(3, *SMALL)).astype(np.float32))
    logits = bpda_logits(model, "defend_reduce", (-0.5, 0.5))
    moved = apply_transform("defend_reduce", x.numpy(), (-0.5, 0.5))
    assert not np.allclose(moved, x.numpy())  # the transformation does move the points
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = logits(x)
        margin = tf.reduce_sum(out[:, 1] - out[:, 0])
    np.testing.assert_allclose(out.numpy(), np.asarray(model(moved)), rtol=1e-5, atol=1e-5)
    grad = tape.gradient(margin, x).numpy().reshape(3, -1)
    np.testing.assert_allclose(grad, np.tile(weights[:, 1] - weights[:, 0], (3, 1)), rtol=1e-5, atol=1e-5)


def test_with_exact_too_its_closer_attack_distortion_is_kept_and_named():
    from cleverscore.running.bounds import merged_attack_keys

    exact_row = {"attack_distortion_Li": 0.10, "attack_distortion_L1": 5.0}
    attacks = {"attack_distortion_Li": 0.12, "attack_source_Li": "pgd_li", "attack_distortion_L1": 4.0,
               "attack_source_L1": "fab_l1", "attack_distortion_L2": 1.0, "attack_source_L2": "ddn_l2"}
    merged = merged_attack_keys(exact_row, attacks)
    assert (merged["attack_distortion_Li"], merged["attack_source_Li"]) == (0.10, "exact")
    assert (merged["attack_distortion_L1"], merged["attack_source_L1"]) == (4.0, "fab_l1")
    assert (merged["attack_distortion_L2"], merged["attack_source_L2"]) == (1.0, "ddn_l2")
