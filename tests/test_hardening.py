"""Every bad input ends with a one-line error and the right exit code, and nothing is written."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio

from conftest import BUILTIN_MNIST, REPO, run_cli_in_process, run_script


def snapshot(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Files the bad cases point at, made once."""
    import keras

    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    truncated = root / "truncated"
    truncated.mkdir()
    with gzip.open(BUILTIN_MNIST / "t10k-images-idx3-ubyte.gz") as f:
        (truncated / "t10k-images-idx3-ubyte").write_bytes(f.read()[:10000])
    shutil.copy(BUILTIN_MNIST / "t10k-labels-idx1-ubyte.gz", truncated)
    wrong = root / "wrong_models"
    wrong.mkdir()
    keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)]).save_weights(
        wrong / "mnist.weights.h5")
    (root / "no_models").mkdir()
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 6, 6, 1)).astype(np.float32)
    np.savez(root / "x.npz", x=x, y=np.array([0, 1]))
    inp = keras.Input((6, 6, 1))
    keras.Model(inp, keras.layers.Reshape((2, 3))(keras.layers.Dense(6)(keras.layers.Flatten()(inp)))).save(
        root / "bad_output.keras")
    lam = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Lambda(lambda t: t * 2.0), keras.layers.Flatten(),
                            keras.layers.Dense(3)])
    lam.save(root / "lambda.keras")
    (root / "ids_same.tsv").write_text("id\ttarget\n0\t7\n")  # test image 0 is a 7
    (root / "ids_range.tsv").write_text("id\ttarget\n0\t12\n")
    (root / "ids_bad.tsv").write_text("no tabs here\n1\n")
    return root


COLLECT_CASES = [
    # (name, args builder, env builder, exit code, message)
    ("N not positive", lambda r: ["-N", "0"], None, 2, "-N/--Nsamps must be positive"),
    ("Niters not positive", lambda r: ["-i", "-1"], None, 2, "-i/--Niters must be positive"),
    ("batch size negative", lambda r: ["-b", "-5"], None, 2, "--batch_size must be positive"),
    ("numimg not positive", lambda r: ["-n", "0"], None, 2, "-n/--numimg must be positive"),
    ("firstimg past the end", lambda r: ["-f", "10000"], None, 2, "past the end of the test set (10000 images)"),
    ("missing data files", lambda r: ["--data_dir", str(r / "empty")], None, 1,
     "mnist files not found and could not be downloaded: put t10k-images-idx3-ubyte"),
    ("truncated data file", lambda r: ["--data_dir", str(r / "truncated")], None, 1, "is truncated"),
    ("weights of another architecture", lambda r: [], lambda r: {"CLEVER_MODELS_DIR": str(r / "wrong_models")}, 1,
     "does not match the mnist normal architecture"),
    ("missing weights", lambda r: ["-m", "brelu"], lambda r: {"CLEVER_MODELS_DIR": str(r / "no_models")}, 1,
     "train them with: python3 train_models.py --dataset mnist --model brelu"),
    ("output not (N, classes)", lambda r: ["--model_path", str(r / "bad_output.keras"), "--data_path",
                                           str(r / "x.npz")], None, 1,
     "the model's output has shape (1, 2, 3), expected (N, classes)"),
    ("Lambda without --unsafe_load", lambda r: ["--model_path", str(r / "lambda.keras"), "--data_path",
                                                str(r / "x.npz")], None, 2, "with --unsafe_load"),
    ("ids target is the true class", lambda r: ["--ids", str(r / "ids_same.tsv"), "--target_type", "8"], None, 2,
     "--ids target 7 of image 0 equals its true class"),
    ("ids target out of range", lambda r: ["--ids", str(r / "ids_range.tsv"), "--target_type", "8"], None, 2,
     "target 12 is outside 0..9"),
    ("malformed ids file", lambda r: ["--ids", str(r / "ids_bad.tsv")], None, 2, "malformed --ids file"),
    ("unknown transform", lambda r: ["--transform", "eval"], None, 2, "unknown --transform 'eval'"),
    ("unknown model name", lambda r: ["-m", "5-layer"], None, 2, "unknown model '5-layer'"),
    ("bad input range", lambda r: ["--input_range", "1,0"], None, 2, "--input_range needs LO < HI"),
]


# In this process (conftest.run_cli_in_process): a new process per case would spend ~5 s importing
# TensorFlow; test_debug_flag_shows_the_traceback runs the script as a user does.
@pytest.mark.parametrize("name,args,env,code,message", COLLECT_CASES, ids=[c[0] for c in COLLECT_CASES])
def test_collect_bad_input(inputs, tmp_path, name, args, env, code, message):
    save = tmp_path / "save"
    res = run_cli_in_process("collect_gradients.py", *args(inputs), "-s", str(save), "--quiet",
                             env=env(inputs) if env else None)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == code, (name, res.stderr[-1500:])
    assert lines[-1].startswith("error: ") and message in lines[-1], (name, lines[-1])
    assert "Traceback" not in res.stderr
    assert not list(save.rglob("*.mat")) and not list(save.rglob("*.tmp"))


def test_debug_flag_shows_the_traceback(tmp_path):
    res = run_cli_in_process("collect_gradients.py", "-f", "10000", "--debug", "-s", str(tmp_path))
    assert res.returncode == 2 and "Traceback" in res.stderr


def good_mat(path: Path, **overrides) -> None:
    rng = np.random.default_rng(0)
    contents = {"G1_max": rng.uniform(50, 60, 20), "G2_max": rng.uniform(4, 5, 20), "Gi_max": rng.uniform(1, 2, 20),
                "L1_max": np.zeros(20), "L2_max": np.zeros(20), "Li_max": np.zeros(20), "g_x0": 3.0,
                "pred": np.zeros(10), "id": 0, "true_label": 7, "target_label": 2, "info": "top2", "args": {}, "path": ""}
    contents.update(overrides)
    for key in [k for k, v in overrides.items() if v is None]:
        del contents[key]
    sio.savemat(path, contents)


CLEVER_CASES = [
    ("corrupt file", lambda d: (d / "8_20_1_7_2_top2_relu_order1.mat").write_bytes(b"MATLAB 5.0 MAT-file garbage"),
     "cannot read .mat"),
    ("missing keys", lambda d: good_mat(d / "8_20_1_7_2_top2_relu_order1.mat", G2_max=None), "missing keys ['G2_max']"),
    ("name does not parse", lambda d: good_mat(d / "results.mat"), "does not follow <Nsamps>_<Niters>"),
    ("fewer than 3 maxima",
     lambda d: good_mat(d / "8_20_1_7_2_top2_relu_order1.mat", G1_max=np.array([1.0, 2.0])),
     "only 2 maxima; a fit needs at least 3"),
    ("NaN maxima",
     lambda d: good_mat(d / "8_20_1_7_2_top2_relu_order1.mat", Gi_max=np.array([1.0, np.nan, 2.0, 3.0])),
     "maxima contain NaN or Inf"),
    ("negative maxima",
     lambda d: good_mat(d / "8_20_1_7_2_top2_relu_order1.mat", G2_max=np.linspace(-1.0, 4.0, 20)),
     "G2_max holds negative gradient-norm maxima"),
    ("g_x0 not positive", lambda d: good_mat(d / "8_20_1_7_2_top2_relu_order1.mat", g_x0=-0.5),
     "g_x0 = -0.5 is not positive"),
    ("g_x0 zero", lambda d: good_mat(d / "8_20_1_7_2_top2_relu_order1.mat", g_x0=0.0), "g_x0 = 0 is not positive"),
]


@pytest.mark.parametrize("name,make,message", CLEVER_CASES, ids=[c[0] for c in CLEVER_CASES])
def test_clever_reports_a_bad_file_and_scores_the_rest(tmp_path, name, make, message):
    good_mat(tmp_path / "8_20_0_7_2_top2_relu_order1.mat")
    make(tmp_path)
    before = snapshot(tmp_path)
    res = run_cli_in_process("clever.py", str(tmp_path), "--nthreads", "1")
    assert res.returncode == 1, res.stderr  # the summary is printed, and the skip shows in the exit status
    assert message in res.stderr and "skipped 1 of 2 file(s)" in res.stderr
    assert res.stdout.count("[STATS][L0] info = top2") == 1
    assert snapshot(tmp_path) == before


def test_use_slope_on_files_without_slopes_is_refused(tmp_path):
    good_mat(tmp_path / "8_20_0_7_2_top2_relu_order1.mat")
    res = run_cli_in_process("clever.py", str(tmp_path), "--use_slope", "--nthreads", "1")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --use_slope") and "--compute_slope" in last
    assert "[STATS][L0]" not in res.stdout


def test_clever_on_only_bad_files_fails_with_runtime_code(tmp_path):
    (tmp_path / "8_20_0_7_2_top2_relu_order1.mat").write_bytes(b"garbage")
    res = run_cli_in_process("clever.py", str(tmp_path), "--nthreads", "1")
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1] == "error: no usable .mat files"


@pytest.mark.parametrize("args,message", [([], "no .mat files found below"), (["missing"], "does not exist")])
def test_clever_on_an_empty_or_missing_folder(tmp_path, args, message):
    res = run_cli_in_process("clever.py", str(tmp_path / args[0]) if args else str(tmp_path), "--nthreads", "1")
    assert res.returncode == 2 and message in res.stderr.strip().splitlines()[-1]


def test_clever_all_equal_maxima_use_the_documented_fallback(tmp_path):
    good_mat(tmp_path / "8_20_0_7_2_top2_relu_order1.mat", G2_max=np.full(20, 4.0))
    res = run_script("clever.py", str(tmp_path), "--verbose")
    assert res.returncode == 0
    assert ("nsamps = 8, niters = 20, bnd_norm = 2, bnd = 0.75, ks = -1, pVal = -1, shape = -1, loc = -1, scale = -1"
            in res.stdout)
    assert "ill-conditioned samples" in res.stderr and "1 fit(s) fell back to the largest maximum: top2/L2 = 1" in res.stderr


def test_nan_gradients_stop_only_the_affected_targets(tmp_path, capsys, monkeypatch):
    import keras

    from cleverscore.cli import collect as collect_gradients
    from cleverscore.models import user as user_models

    # Logit 0 gets 0 * log(0.5 - x[0,0]): NaN where pixel (0, 0) reaches the upper bound 0.5.
    # Image 0 starts there (NaN logits); image 1 (pixel 0.2) reaches it within the Linf ball of
    # radius 0.4 (NaN gradients, and 0 * inf poisons every target's gradient); image 2 (pixel -0.5)
    # never does and must still be scored. The model lives in memory (its Lambdas do not reload).
    inp = keras.Input((6, 6, 1))
    flat = keras.layers.Flatten()(inp)
    dense = keras.layers.Dense(3, kernel_initializer="ones", bias_initializer=keras.initializers.Constant([0, 0, 0.7]))
    dense = dense(flat)
    trap = keras.layers.Lambda(lambda t: 0.0 * keras.ops.log(0.5 - t[:, :1]), output_shape=(1,))(flat)
    logits = keras.layers.Lambda(lambda ts: ts[0] + keras.ops.pad(ts[1], [[0, 0], [0, 2]]),
                                 output_shape=(3,))([dense, trap])
    model = keras.Model(inp, logits)
    monkeypatch.setattr(user_models, "load_user_model", lambda path, *rest, **kwargs: model)
    x = np.zeros((3, 6, 6, 1), np.float32)
    x[:, 0, 0, 0] = [0.5, 0.2, -0.5]
    np.savez(tmp_path / "x.npz", x=x, y=np.array([2, 2, 2]))
    (tmp_path / "m.keras").write_bytes(b"")
    code = collect_gradients.main(["--model_path", str(tmp_path / "m.keras"), "--data_path", str(tmp_path / "x.npz"),
                                   "-n", "3", "-N", "64", "-i", "3", "--target_type", "16", "-s", str(tmp_path / "out"),
                                   "--sample_norm", "li", "--radius", "0.4", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "logits of image 0 are NaN or Inf" in err
    assert "gradients are NaN or Inf for image 1, target 0" in err and "skipping image 1" in err
    assert "3 (image, target) pair(s) stopped on NaN/Inf logits or gradients: (0, all), (1, 0), (1, 1)" in err
    written = sorted(p.name for p in (tmp_path / "out").rglob("*.mat"))
    assert [w.split("_")[2] for w in written] == ["2", "2"]


@pytest.mark.slow  # 29 s; CI time budget (8 minutes on 2 cores)
def test_two_concurrent_runs_into_one_folder_give_the_union(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "collect_gradients.py", "-N", "64", "-i", "4", "--target_type", "5", "-s", str(tmp_path),
           "--quiet"]
    procs = [subprocess.Popen(cmd + ["-f", f, "-n", "2"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for f in ("0", "1")]
    for p in procs:
        p.communicate(timeout=300)
        assert p.returncode == 0
    files = sorted((tmp_path / "mnist_normal").glob("*.mat"))
    assert {f.name.split("_")[2] for f in files} == {"0", "1", "2"} and len(files) == 6
    for f in files:
        assert "G2_max" in sio.loadmat(f)
    assert not list(tmp_path.rglob(".*.tmp"))


_SIGNAL_INSIDE_LIBRARY_CODE = """
import os, signal, sys
sys.path.insert(0, {repo!r})
from cleverscore.cli.common import run_cli

def main(_args):
    try:  # a library that catches the interrupt and re-raises something else (as TF's tracer does)
        os.kill(os.getpid(), signal.{sig})
        signal.pause()
    except BaseException as err:
        raise SystemError("bad argument to internal function") from err

run_cli(main, [])
"""


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_wrapped_by_library_code_still_exits_with_one_line(sig, code):
    script = _SIGNAL_INSIDE_LIBRARY_CODE.format(repo=str(REPO), sig=sig)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == code
    assert res.stderr.strip() == f"error: interrupted by {sig}"


def test_result_files_get_the_usual_permissions(tmp_path):
    from cleverscore.mat_files import save_mat_atomically

    old = os.umask(0o022)
    try:
        save_mat_atomically(tmp_path / "r.mat", {"g_x0": 1.0})
    finally:
        os.umask(old)
    assert (tmp_path / "r.mat").stat().st_mode & 0o777 == 0o644
