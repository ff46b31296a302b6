"""Shared fixtures: paths to the real datasets, a small affine Keras model, subprocess runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
BUILTIN_MNIST = REPO / "cleverscore" / "builtin" / "data" / "mnist"  # the MNIST test files, shipped in the package
# The real datasets: ../shared/data beside the checkout, or the folder CLEVER_DATA_DIR names (one
# holding mnist/, cifar10/ and imagenet/). A test that needs files not shipped in data/ skips
# without them, naming the files; where CLEVER_REQUIRE_DATA=1 (CI, which has them) it fails instead.
SHARED_DATA = Path(os.environ.get("CLEVER_DATA_DIR") or REPO.parent / "shared" / "data")
# MNIST's test files ship with the package (BUILTIN_MNIST): a test asks the shared folder for its training files.
NEEDED_FILES = {
    "mnist": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "cifar10": tuple(f"data_batch_{i}.bin.gz" for i in range(1, 6)) + ("test_batch.bin.gz",),
    "imagenet": ("val_images", "val.txt"),
}


def shared_dataset(name: str) -> Path:
    """The folder of a real dataset's files; skip (or, under CLEVER_REQUIRE_DATA=1, fail) without them."""
    path = SHARED_DATA / name
    needed = NEEDED_FILES.get(name, (name,))
    missing = [f for f in needed if not (path / f).exists()]
    if missing:
        reason = (f"needs the {name} file(s) {', '.join(missing)} in {path}; set CLEVER_DATA_DIR to a folder "
                  f"holding {name}/")
        if os.environ.get("CLEVER_REQUIRE_DATA") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def affine_model(weights: np.ndarray, bias: np.ndarray, image_shape=(28, 28, 1)):
    """f(x) = W^T flatten(x) + b as a Keras model: the gradient of every margin is constant."""
    import keras

    model = keras.Sequential([keras.Input(image_shape), keras.layers.Flatten(), keras.layers.Dense(weights.shape[1])])
    model.layers[-1].set_weights([weights.astype(np.float32), bias.astype(np.float32)])
    return model


def exact_l1(x: np.ndarray, w: np.ndarray, need: float, box=(-0.5, 0.5)) -> float:
    """The smallest L1 step that raises w.x by `need` inside the box: coordinates of largest |w| first."""
    flat = x.reshape(-1).astype(np.float64)
    room = np.where(w > 0, box[1] - flat, flat - box[0])
    cost = gained = 0.0
    for i in np.argsort(-np.abs(w)):
        gain = abs(w[i]) * room[i]
        if gained + gain >= need:
            return cost + (need - gained) / abs(w[i])
        gained, cost = gained + gain, cost + room[i]
    return np.inf


def run_script(*args: str, env: dict | None = None, timeout: int = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run one of the project's scripts with the current interpreter."""
    # Without TF_CPP_MIN_LOG_LEVEL, as a user runs them: the scripts keep TensorFlow's start-up lines quiet.
    full_env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


CLI_MODULES = {"collect_gradients.py": "cleverscore.cli.collect", "clever.py": "cleverscore.cli.score",
               "attacks.py": "cleverscore.cli.attack", "cleverscore.cli.tables": "cleverscore.cli.tables"}


def run_cli_in_process(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """A script's command line run in this process, as run_script returns it.

    For the bad-input cases: a new process spends about 5 s importing TensorFlow before it gets
    to the error, and there are dozens of cases.
    """
    import importlib

    return run_main_in_process(importlib.import_module(CLI_MODULES[script]).main, list(args), env)


def run_main_in_process(main, argv: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """`run_cli(main, argv)` in this process, its output captured, exit code and all.

    The command still goes through run_cli (the one-line error, the exit code, no traceback); an
    exception that escapes it is printed as a traceback into the captured stderr, as a real run
    would show it. The environment, working folder and signal handlers are restored afterwards.
    """
    import contextlib
    import io
    import signal
    import traceback

    from cleverscore.cli.common import run_cli

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
    os.environ.update(env or {})
    os.chdir(REPO)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_cli(main, argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except Exception:  # noqa: BLE001 - what a user would see as a traceback
                traceback.print_exc()
                code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        os.chdir(saved_cwd)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def interrupt(proc: subprocess.Popen, sig: int) -> str:
    """Send `sig` to a running script a second after it got going; wait for its exit and return its stderr."""
    import time

    time.sleep(1.0)
    proc.send_signal(sig)
    return proc.communicate(timeout=60)[1]


def our_segments(pid: int | None = None) -> list[str]:
    """Shared-memory segments created by this project (optionally by one pid)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return []
    prefix = "clever_" if pid is None else f"clever_{pid}_"
    return [p.name for p in shm.iterdir() if p.name.startswith(prefix)]


def reverse_weibull(shape: float, n: int, seed: int, end: float = 10.0, scale: float = 2.0) -> np.ndarray:
    """`n` maxima from a reverse Weibull law whose end point (the true Lipschitz constant) is `end`."""
    from scipy.stats import weibull_min

    return -weibull_min.rvs(shape, loc=-end, scale=scale, size=n, random_state=seed)


def write_mat(path, g2, g1=None, gi=None, g_x0=3.0, true_label=7, target=2, info="top2", ball=None, classes=10,
              **extra):
    """A `.mat` as collect_gradients.py writes it, with the given G2 maxima (G1, Gi scaled from them)."""
    import scipy.io as sio

    g1 = g2 * 20 if g1 is None else g1
    gi = g2 / 5 if gi is None else gi
    contents = {"G1_max": g1, "G2_max": g2, "Gi_max": gi, "L1_max": np.zeros_like(g2), "L2_max": np.zeros_like(g2),
                "Li_max": np.zeros_like(g2), "g_x0": g_x0, "pred": np.zeros(classes), "id": 0,
                "true_label": true_label, "target_label": target, "info": info, "args": {}, "path": ""}
    if ball:
        contents.update(sample_norm=ball[0], sample_radius=ball[1], input_dim=ball[2])
    sio.savemat(path, {**contents, **extra})

