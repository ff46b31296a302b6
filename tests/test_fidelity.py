"""Fidelity to the original's calls and robustness of the collection step (issues 15 and 16):
transform "" means none, the ball actually sampled is recorded, bad --save folders and batches
too large for memory are refused up front, the progress line redraws cleanly, and the shipped
data is found from any working directory."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio

from conftest import REPO, affine_model, run_script
from cleverscore.errors import CleverError, UsageError
from cleverscore.sampling.estimator import EstimateLipschitz

RNG = np.random.default_rng(0)
WEIGHTS = RNG.normal(size=(784, 10)) * 0.05
X0 = np.zeros((28, 28, 1), np.float32)


def affine_estimator(sampler: str = "graph", batch_size: int = 128) -> EstimateLipschitz:
    est = EstimateLipschitz(log=None, sampler=sampler, nthreads=1)
    est.load_model(model=affine_model(WEIGHTS, np.zeros(10)), batch_size=batch_size)
    return est


# ---------------------------------------------------------------------------------------------
# 1. transform="" is no transformation


def test_original_style_call_with_empty_transform_gives_exact_dual_norms_on_the_fast_path():
    est = affine_estimator()
    # The original's collect_gradients passes transform="" positionally.
    out = est.estimate(X0, 3, 7, 128, 5, "l2", "", 1)
    w = WEIGHTS[:, 3] - WEIGHTS[:, 7]
    # The gradient of an affine margin is w everywhere, clipped or not: the maxima are its norms.
    np.testing.assert_allclose(out[3], np.linalg.norm(w), rtol=1e-5)
    np.testing.assert_allclose(out[4], np.abs(w).sum(), rtol=1e-5)
    np.testing.assert_allclose(out[5], np.abs(w).max(), rtol=1e-5)
    assert est._pool is None  # "" took the in-graph sampler, not the worker pool a transform needs


# ---------------------------------------------------------------------------------------------
# 7. the ball actually sampled

# Why the lower bounds hold: in d = 784 dimensions a uniform-in-ball radius factor r has
# P(r < 0.99) = 0.99^784 < 4e-4 per sample; likewise max|u_i| < 0.99 for the Linf law and the
# largest of 784 sorted uniforms (the L1 norm of the simplex sample) < 0.99. With 384 samples
# the chance of missing the bound is far below 1e-100. The l1 factor is U[0, 30]: all 384 below
# 29 has probability (29/30)^384 < 3e-6.
BALLS = [("l2", 0.25, 0.99 * 0.25, 0.25), ("li", None, 0.099, 0.1), ("l1", None, 29 * 0.99, 30.0),
         ("l2", None, 2.9 * 0.99, 3.0)]


@pytest.mark.parametrize("sample_norm,radius,low,high", BALLS)
def test_recorded_radius_is_the_largest_sampled_distance(sample_norm, radius, low, high):
    est = affine_estimator()
    ball = est.estimate_targets(X0, 3, [7], 128, 3, sample_norm, radius=radius)[0].ball
    assert ball.sample_norm == sample_norm and ball.input_dim == 784
    assert low <= ball.radius <= high * (1 + 1e-5)


def test_radius_is_measured_before_clipping():
    # Every pixel at the upper end: clipping moves half of each Linf step back, the radius stays 0.1.
    est = affine_estimator()
    ball = est.estimate_targets(np.full((28, 28, 1), 0.5, np.float32), 3, [7], 64, 2, "li")[0].ball
    assert 0.099 <= ball.radius <= 0.1 * (1 + 1e-5)


@pytest.mark.parametrize("sample_norm,radius", [("l2", 0.25), ("li", None)])
def test_graph_and_pool_samplers_record_the_same_ball(sample_norm, radius):
    # The two samplers draw the same law from different random streams, so their radii agree to
    # the spread of the maximum (both within 1% of the ball's edge), not bit for bit.
    balls = []
    for sampler in ("graph", "pool"):
        est = affine_estimator(sampler)
        balls.append(est.estimate_targets(X0, 3, [7], 128, 3, sample_norm, radius=radius)[0].ball)
        est.close()
    assert balls[0].sample_norm == balls[1].sample_norm and balls[0].input_dim == balls[1].input_dim == 784
    assert balls[0].radius == pytest.approx(balls[1].radius, rel=0.01)


def test_a_target_stopped_by_rel_tol_records_the_ball_of_the_iterations_it_kept(monkeypatch):
    from cleverscore.scoring import intervals as clever_interval

    # Target 7 (margin 4) passes every check and stops after BURN_IN iterations; target 1
    # (margin 3) never does and runs all 80 on the same samples.
    monkeypatch.setattr(clever_interval, "score_rel_half_width", lambda maxima, g_x0: 0.0 if g_x0 == 4.0 else 1.0)
    bias = np.zeros(10)
    bias[[3, 7, 1]] = [5.0, 1.0, 2.0]
    est = EstimateLipschitz(log=None)
    est.load_model(model=affine_model(WEIGHTS, bias), batch_size=16)
    stopped, running = est.estimate_targets(X0, 3, [7, 1], 16, 80, "l1", rel_tol=0.1)
    used = clever_interval.BURN_IN
    assert (stopped.niters_used, stopped.stop_reason, running.niters_used) == (used, "rel_tol", 80)
    # The same seed draws the same samples, whatever the targets: runs of exactly 50 and 80
    # iterations saw what each target saw.
    assert stopped.ball == est.estimate_targets(X0, 3, [7], 16, used, "l1")[0].ball
    assert running.ball == est.estimate_targets(X0, 3, [7], 16, 80, "l1")[0].ball
    # With this seed the farthest sample comes after iteration 50, so the two radii differ.
    assert running.ball.radius > stopped.ball.radius


def test_order_2_records_its_ball_in_the_h2_file_contents():
    import keras

    from cleverscore.running.saving import hessian_contents

    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    est = EstimateLipschitz(log=None)
    est.load_model(model=model, batch_size=16)
    res = est.estimate_hessian(np.zeros((4, 4, 1), np.float32), 0, 1, 16, 2, "l2", radius=0.25)
    mat = hessian_contents(res, 0, 0, "top2", {}, "")
    assert mat["sample_norm"] == "l2" and mat["input_dim"] == 16
    # d = 16: P(r < 0.9) = 0.9^16 = 0.19 per sample, all 32 below it: 1e-23.
    assert 0.9 * 0.25 <= mat["sample_radius"] <= 0.25 * (1 + 1e-5)


# ---------------------------------------------------------------------------------------------
# 4. batches too large for memory


def test_live_tensor_peak_of_a_traced_graph():
    import tensorflow as tf

    from cleverscore.sampling.memory import graph_peak_bytes

    @tf.function(input_signature=[tf.TensorSpec([1000], tf.float32)])
    def chain(x):
        return tf.exp(tf.sin(x))  # sin's output dies once exp has read it: 2 tensors at once

    @tf.function(input_signature=[tf.TensorSpec([1000], tf.float32)])
    def fork(x):
        return tf.exp(x) + tf.sin(x)  # both branches live until the sum: 3 tensors at once

    assert graph_peak_bytes(chain.get_concrete_function().graph, 1) == 2 * 4000
    assert graph_peak_bytes(fork.get_concrete_function().graph, 1) == 3 * 4000


def test_a_batch_over_the_memory_limit_is_refused_with_a_batch_size_that_fits(monkeypatch):
    from cleverscore.sampling import memory as memory_budget

    limit = 4_000_000  # bytes: a faked small machine; a batch of 1024 MNIST points needs more
    monkeypatch.setattr(memory_budget, "available_bytes", lambda device="CPU": limit)
    est = affine_estimator(batch_size=1024)
    with pytest.raises(UsageError) as err:
        est.estimate_targets(X0, 3, [7], 1024, 2, "l2")
    message = str(err.value)
    assert "a batch of 1024 points needs about" in message and "4 MB are available on CPU" in message
    fits = int(re.search(r"use `batch_size` (\d+) or less", message).group(1))
    assert 1 <= fits < 1024
    est = affine_estimator(batch_size=fits)  # the suggested size passes the same check and runs
    res = est.estimate_targets(X0, 3, [7], 1024, 2, "l2")[0]
    assert res.grad_max.shape == (2, 3)


def test_cli_refuses_a_batch_of_three_million_before_running_it(tmp_path):
    from cleverscore.cli import collect as collect_gradients

    with pytest.raises(UsageError, match=r"a batch of 3000000 points needs about .* use -b/--batch_size \d+ or less"):
        collect_gradients.main(["-N", "3000000", "-b", "3000000", "-i", "1", "--target_type", "1", "-s",
                                str(tmp_path), "--quiet"])
    assert not list(tmp_path.rglob("*.mat")) and not list(tmp_path.rglob("*.tmp"))


def test_a_tensorflow_out_of_memory_error_becomes_one_line(monkeypatch):
    import tensorflow as tf

    def exhausted(*_args):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape[1024,784]\n"
                                               "Hint: a long multi-line report follows")

    est = affine_estimator()
    monkeypatch.setattr(est.steps, "sampled_iteration", lambda *a: exhausted)
    with pytest.raises(CleverError) as err:
        est.estimate_targets(X0, 3, [7], 128, 2, "l2")
    # the library names its parameter; the command line writes it as the flag (test_cli_refuses_...)
    assert str(err.value) == ("out of memory in a batch of 128 points (OOM when allocating tensor with "
                              "shape[1024,784]); lower `batch_size`")


# ---------------------------------------------------------------------------------------------
# 3. bad --save folders


def unwritable_folder() -> Path:
    # Tests may run as root, whom permission bits do not stop; sysfs refuses new entries to all.
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys to stand for an unwritable folder")
    return Path("/sys/clever_results")


@pytest.mark.parametrize("case", ["save is a file", "save under a file", "save not writable"])
def test_bad_save_folder_is_refused_before_anything_loads(tmp_path, case):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    save, message = {
        "save is a file": (blocker, f"-s/--save: {blocker} is a file, not a folder"),
        "save under a file": (blocker / "deeper", f"-s/--save: {blocker} is a file, not a folder"),
        "save not writable": (unwritable_folder(), "cannot create or write the results folder"),
    }[case]
    before = sorted(tmp_path.rglob("*"))
    res = run_script("collect_gradients.py", "-s", str(save), "--quiet", timeout=60)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in res.stderr and res.stdout == ""  # refused before the settings are printed
    assert sorted(tmp_path.rglob("*")) == before and blocker.read_text() == "not a folder"
    assert not os.path.lexists(save) or save == blocker


# ---------------------------------------------------------------------------------------------
# 5. progress line


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def rendered(stream_text: str) -> str:
    """What a terminal shows on the last line after carriage returns and ESC[K."""
    line: list[str] = []
    col = 0
    i = 0
    while i < len(stream_text):
        if stream_text.startswith("\x1b[K", i):
            del line[col:]
            i += 3
            continue
        ch = stream_text[i]
        if ch == "\r":
            col = 0
        elif ch == "\n":
            line, col = [], 0
        else:
            line[col : col + 1] = [ch]
            col += 1
        i += 1
    return "".join(line)


def test_progress_line_clears_what_a_longer_previous_line_left(monkeypatch):
    from cleverscore import log_lines

    clock = iter([0.0, 14.0, 15.0])  # start; 15 of 30 done after 14 s (ETA 14s); 25 after 15 s (ETA 3s)
    monkeypatch.setattr(log_lines.time, "perf_counter", lambda: next(clock))
    term = FakeTerminal()
    bar = log_lines.ProgressBar("image 0", 30, 100, stream=term)
    bar(15)
    bar(25)  # one character shorter than the line it overwrites
    shown = rendered(term.getvalue())
    assert "ETA 14s" in term.getvalue() and shown.endswith("25/30 167 samples/s ETA 3s")
    assert term.getvalue().count("\x1b[K") == 2


# ---------------------------------------------------------------------------------------------
# 6 and 7 end to end: run from another folder, with the ball recorded in the .mat


@pytest.mark.slow  # 9 s; CI time budget (8 minutes on 2 cores)
def test_run_from_another_folder_finds_shipped_data_and_models_and_records_the_ball(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CLEVER_DATA_DIR", "CLEVER_MODELS_DIR")}
    import subprocess
    import sys

    res = subprocess.run([sys.executable, str(REPO / "collect_gradients.py"), "-N", "32", "-i", "3",
                          "--target_type", "1", "--radius", "0.25", "-s", "out", "--quiet"],
                         cwd=tmp_path, env=dict(env, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    files = list((tmp_path / "out" / "mnist_normal").glob("*.mat"))
    assert len(files) == 1 and not (tmp_path / "data").exists()  # nothing downloaded into the cwd
    mat = sio.loadmat(files[0])
    for key in ("G1_max", "G2_max", "Gi_max", "L1_max", "L2_max", "Li_max", "g_x0", "pred", "id", "true_label",
                "target_label", "info", "args", "path"):
        assert key in mat
    assert str(mat["sample_norm"][0]) == "l2" and int(mat["input_dim"][0, 0]) == 784
    assert 0.99 * 0.25 <= float(mat["sample_radius"][0, 0]) <= 0.25 * (1 + 1e-5)
