"""collect_gradients.py and clever.py as a user runs them, on real MNIST images and the shipped model."""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
import scipy.io as sio

from conftest import run_cli_in_process, run_script

ORDER1_KEYS = {"G1_max", "G2_max", "Gi_max", "L1_max", "L2_max", "Li_max", "g_x0", "pred", "id",
               "true_label", "target_label", "info", "args", "path"}
STATS_RE = re.compile(r"^\[STATS\]\[L0\] info = (\w+), \1_clever_L1 = (\S+), \1_clever_L2 = (\S+), \1_clever_Li = (\S+)$")


@pytest.fixture(scope="module")
def targeted_run(tmp_path_factory):
    save = tmp_path_factory.mktemp("lipschitz_mat")
    res = run_script("collect_gradients.py", "-n", "2", "-N", "128", "-i", "12", "-s", str(save), "--verbose")
    assert res.returncode == 0, res.stderr
    return save / "mnist_normal", res


def test_collect_writes_one_file_per_image_and_target_with_the_original_names(targeted_run):
    folder, res = targeted_run
    names = sorted(p.name for p in folder.glob("*.mat"))
    assert len(names) == 6
    pattern = re.compile(r"^128_12_(\d+)_(\d)_(\d)_(least|top2|random)_relu_order1\.mat$")
    assert all(pattern.match(n) for n in names), names
    assert {pattern.match(n).group(1) for n in names} == {"0", "1"}
    assert "[DATAGEN][L1] no = 1, true_id = 0, true_label = 7, predicted = 7, correct = True" in res.stdout
    assert res.stdout.count("[STATS][L2] loop = ") == 6 * 12


def test_mat_files_hold_the_original_keys_and_consistent_values(targeted_run):
    folder, _ = targeted_run
    for path in folder.glob("*.mat"):
        mat = sio.loadmat(path)
        assert ORDER1_KEYS <= set(mat)
        assert mat["G2_max"].size == 12
        assert np.all(mat["G2_max"] > 0) and np.all(mat["L2_max"] == 0)
        pred = mat["pred"].ravel()
        t, c = int(mat["target_label"].squeeze()), int(mat["true_label"].squeeze())
        assert float(mat["g_x0"].squeeze()) == pytest.approx(pred[c] - pred[t], rel=1e-5)
        # ||.||_inf <= ||.||_2 <= ||.||_1 holds for every gradient, hence for the maxima.
        assert np.all(mat["Gi_max"] <= mat["G2_max"]) and np.all(mat["G2_max"] <= mat["G1_max"])


def test_clever_prints_three_positive_summary_lines(targeted_run):
    folder, _ = targeted_run
    res = run_script("clever.py", str(folder), "--verbose")
    assert res.returncode == 0, res.stderr
    stats = [STATS_RE.match(line) for line in res.stdout.splitlines() if line.startswith("[STATS][L0]")]
    assert [m.group(1) for m in stats] == ["least", "random", "top2"]
    for m in stats:
        values = [float(v) for v in m.groups()[1:]]
        assert all(math.isfinite(v) and v > 0 for v in values)
        assert values[2] < values[1] < values[0]  # Linf < L2 < L1 distances on 784 pixels
    assert res.stdout.count("[DEBUG][L1] id = ") == 18


def test_rerun_skips_existing_files(targeted_run, tmp_path):
    folder, _ = targeted_run
    before = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.mat")}
    res = run_cli_in_process("collect_gradients.py", "-n", "2", "-N", "128", "-i", "12", "-s", str(folder.parent))
    assert res.returncode == 0, res.stderr
    assert "saved 0 (image, target) file(s)" in res.stdout and "(6 already there)" in res.stdout
    assert "already exists. Skipping" not in res.stdout  # the original's line per file comes with --verbose
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.mat")} == before


@pytest.mark.slow  # 13-19 s; CI time budget (8 minutes on 2 cores); untargeted scoring stays in test_honest_scores
def test_untargeted_collection_and_score(tmp_path):
    res = run_script("collect_gradients.py", "-n", "1", "-f", "3", "-N", "64", "-i", "8", "--target_type", "16",
                     "-s", str(tmp_path))
    assert res.returncode == 0, res.stderr
    files = list((tmp_path / "mnist_normal").glob("*.mat"))
    assert len(files) == 9 and all("_class" in f.name for f in files)
    out = run_script("clever.py", str(tmp_path / "mnist_normal"), "--untargeted", "--verbose").stdout
    image = [ln for ln in out.splitlines() if ln.startswith("[STATS][L1] image =")]
    assert len(image) == 1 and "n_classes =  10" in image[0]
    summary = [ln for ln in out.splitlines() if ln.startswith("[STATS][L0] info = untargeted")]
    assert len(summary) == 1
    # The untargeted score is the smallest targeted score of the image.
    per_file = [float(m) for m in re.findall(r"bnd_norm = 2, bnd = (\S+),", out)]
    assert float(re.search(r"untargeted_clever_L2 = ([^,]+)", summary[0]).group(1)) == pytest.approx(min(per_file), rel=1e-4)


def test_bad_flags_give_one_line_errors_and_no_output(tmp_path):
    for flags, message in ((["-N", "0"], "-N/--Nsamps must be positive"),
                           (["--transform", "os.system"], "unknown --transform"),
                           (["-f", "10000"], "past the end of the test set")):
        res = run_cli_in_process("collect_gradients.py", *flags, "-i", "2", "-s", str(tmp_path))
        assert res.returncode == 2
        assert res.stderr.strip().splitlines()[-1].startswith("error: ") and message in res.stderr
        assert "Traceback" not in res.stderr
    assert not any(tmp_path.rglob("*.mat"))


def test_plot_dir_gets_one_figure_per_file_and_norm(targeted_run, tmp_path):
    folder, _ = targeted_run
    res = run_script("clever.py", str(folder), "--plot_dir", str(tmp_path / "figs"), "--num_images", "2")
    assert res.returncode == 0, res.stderr
    figures = sorted(p.name for p in (tmp_path / "figs").glob("*.png"))
    assert len(figures) == 6 and {f.rsplit("_", 1)[1] for f in figures} == {"L1.png", "L2.png", "Li.png"}
    assert all((tmp_path / "figs" / f).stat().st_size > 5000 for f in figures)


def test_min_and_subsets_change_the_summary_as_documented(targeted_run):
    folder, _ = targeted_run
    mean = run_cli_in_process("clever.py", str(folder), "--nthreads", "1").stdout
    low = run_cli_in_process("clever.py", str(folder), "--min", "--nthreads", "1").stdout
    few = run_cli_in_process("clever.py", str(folder), "--num_samples", "5", "--method", "maxsamp", "--verbose").stdout
    l2 = lambda out, info: float(re.search(rf"{info}_clever_L2 = ([^,]+)", out).group(1))
    assert l2(low, "top2") <= l2(mean, "top2")
    per_file = [float(v) for v in re.findall(r"bnd_norm = 2, bnd = (\S+)$", few, re.M)]
    assert len(per_file) == 6 and "ks =" not in few


def test_a_bad_file_is_reported_and_the_rest_still_scored(targeted_run, tmp_path):
    folder, _ = targeted_run
    import shutil

    for p in folder.glob("*.mat"):
        shutil.copy(p, tmp_path)
    (tmp_path / "128_12_5_1_2_top2_relu_order1.mat").write_bytes(b"MATLAB 5.0 truncated")
    res = run_script("clever.py", str(tmp_path))
    assert res.returncode == 1  # a summary that left a file out says so in its exit status
    assert "skipping" in res.stderr and "skipped 1 of 7" in res.stderr
    assert res.stdout.count("[STATS][L0]") == 3


def test_command_lines_pool_tensorflows_cpu_memory_unless_the_user_chose(monkeypatch):
    from cleverscore.cli.common import pool_cpu_memory

    monkeypatch.delenv("TF_CPU_ALLOCATOR_USE_BFC", raising=False)
    pool_cpu_memory()
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "true"
    monkeypatch.setenv("TF_CPU_ALLOCATOR_USE_BFC", "false")
    pool_cpu_memory()
    assert os.environ["TF_CPU_ALLOCATOR_USE_BFC"] == "false"
