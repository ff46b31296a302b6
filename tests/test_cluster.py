"""collect_gradients.py --ray: the same files as a local run, a killed worker, an interrupted driver.

One local Ray instance (loopback only, 2 CPUs, no dashboard) is shared by the module's tests;
every Ray process a test starts is stopped by it.
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read when ray is imported: Ray binds to 127.0.0.1

import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio

from conftest import REPO, affine_model, interrupt, run_script

ray = pytest.importorskip("ray")

RAY_DAEMONS = "raylet|gcs_server"


def ray_processes(pattern: str) -> set[int]:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return {int(p) for p in found} - {os.getpid()}


def descendants(root: int) -> set[int]:
    """Processes below `root` (by parent links in /proc)."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def ray_instance():
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths have a length limit
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20, _temp_dir=temp,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        assert ray.nodes()[0]["NodeManagerAddress"] == "127.0.0.1"
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def affine_files(tmp_path_factory):
    """An affine model (exact gradient norms) saved as a file, and 3 images it classifies as labelled."""
    root = tmp_path_factory.mktemp("affine")
    rng = np.random.default_rng(5)
    w, b = rng.normal(size=(64, 10)), rng.normal(size=10)
    affine_model(w, b, (8, 8, 1)).save(root / "affine.keras")
    x = rng.uniform(-0.5, 0.5, (3, 8, 8, 1)).astype(np.float32)
    np.savez(root / "affine.npz", x=x, y=np.argmax(x.reshape(3, -1) @ w + b, axis=1))
    return root, w


def save_tanh_model(root: Path) -> None:
    """A small tanh network (twice differentiable, for --order 2) and 3 images it classifies as labelled."""
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(16, "tanh"),
                              keras.layers.Dense(10)])
    model.save(root / "tanh.keras")
    x = np.random.default_rng(6).uniform(-0.5, 0.5, (3, 8, 8, 1)).astype(np.float32)
    np.savez(root / "tanh.npz", x=x, y=np.argmax(model.predict(x, verbose=0), axis=1))


def collect_args(root: Path, save: Path, *extra: str, model: str = "affine") -> list[str]:
    return ["--model_path", str(root / f"{model}.keras"), "--data_path", str(root / f"{model}.npz"), "-n", "3",
            "--target_type", "5", "-N", "64", "-i", "5", "-s", str(save), "--quiet", "--verbose", *extra]


def mat_files(save: Path) -> dict[str, dict]:
    files = sorted(save.rglob("*.mat"))
    return {f.name: {k: v for k, v in sio.loadmat(f).items() if not k.startswith("__") and k not in ("args", "path")}
            for f in files}


def assert_same_files(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want) and len(want) == 6  # 3 images x (top-2, least likely)
    for name in want:
        for key in want[name]:
            assert np.array_equal(got[name][key], want[name][key]), (name, key)


@pytest.fixture(scope="module")
def local_run(affine_files, tmp_path_factory):
    from cleverscore.cli.collect import main

    root, _ = affine_files
    save = tmp_path_factory.mktemp("local")
    assert main(collect_args(root, save)) == 0
    return mat_files(save)


def test_ray_run_writes_the_files_of_a_local_run(ray_instance, affine_files, local_run, tmp_path, capsys):
    from cleverscore.cli.collect import main

    root, w = affine_files
    assert main(collect_args(root, tmp_path, "--ray", "auto", "--ray_workers", "2")) == 0
    out = capsys.readouterr().out
    assert "[RAY] 2 worker(s) ready on 1 node(s)" in out and out.count("saved to") == 6
    got = mat_files(tmp_path)
    assert_same_files(got, local_run)
    for contents in got.values():  # affine: every sampled gradient of g = f_c - f_j is w_c - w_j
        c, j = int(contents["true_label"][0, 0]), int(contents["target_label"][0, 0])
        np.testing.assert_allclose(contents["G2_max"].ravel(), np.linalg.norm(w[:, c] - w[:, j]), rtol=1e-5)
    assert main(collect_args(root, tmp_path, "--ray", "auto", "--ray_workers", "2")) == 0  # resume: all skipped
    out = capsys.readouterr().out
    assert out.count("already exists. Skipping") == 6 and "saved to" not in out and "[RAY]" not in out


@pytest.mark.slow  # ~35 s on the loaded 2-core machine: two workers start, one is killed and restarts
def test_a_worker_killed_mid_item_is_restarted_and_its_item_rerun(ray_instance, affine_files, tmp_path, capsys):
    from cleverscore.cli.collect import main

    root, _ = affine_files
    longer = ["-i", "400"]  # items long enough to be caught running
    reference = tmp_path / "reference"
    assert main(collect_args(root, reference, *longer)) == 0
    capsys.readouterr()
    killed = []

    def kill_a_running_worker():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for pid in descendants(os.getpid()):
                if cmdline(pid).startswith("ray::GradientWorker.run"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_running_worker)
    killer.start()
    try:
        assert main(collect_args(root, tmp_path / "ray", *longer, "--ray", "auto", "--ray_workers", "2")) == 0
    finally:
        killed.append(None)  # stops the killer if the run ended first
        killer.join(timeout=10)
    assert killed[0] is not None, "no worker was caught running an item"
    assert capsys.readouterr().out.count("saved to") == 6  # nothing lost, nothing saved twice
    assert_same_files(mat_files(tmp_path / "ray"), mat_files(reference))


@pytest.mark.slow  # 15-26 s (a Ray instance starts and is killed); CI time budget (8 minutes on 2 cores)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_driver_leaves_no_file_and_no_ray_process(affine_files, tmp_path, sig):
    root, _ = affine_files
    before = ray_processes(RAY_DAEMONS)
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's session logs, removed below; short for its sockets
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_TMPDIR=ray_tmp)
    proc = subprocess.Popen([sys.executable, "collect_gradients.py", *collect_args(root, tmp_path, "-i", "1000000"),
                             "--ray", "local", "--ray_workers", "1"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        for line in proc.stdout:  # wait until the worker is computing
            if line.startswith("[RAY]") or time.monotonic() > deadline:
                break
        started = ray_processes(RAY_DAEMONS) - before
        assert started, "the run started no Ray instance"
        err = interrupt(proc, sig)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 128 + sig
    assert err.strip().splitlines()[-1] == f"error: interrupted by {sig.name}"
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []
    deadline = time.monotonic() + 15
    while ray_processes(RAY_DAEMONS) & started and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not ray_processes(RAY_DAEMONS) & started


@pytest.mark.slow  # ~25 s each on the loaded 2-core machine
@pytest.mark.parametrize("flags", [["--compute_slope", "--transform", "defend_reduce"], ["--order", "2"],
                                   ["--target_type", "16"], ["--rel_tol", "0.2", "-i", "80"]])
def test_other_flags_give_the_files_of_a_local_run_too(ray_instance, affine_files, tmp_path, flags, capsys):
    from cleverscore.cli.collect import main

    root, _ = affine_files
    model = "tanh" if "--order" in flags else "affine"  # an affine model has no Hessian to iterate on
    if model == "tanh":
        save_tanh_model(root)
    runs = {}
    for name, extra in (("local", []), ("ray", ["--ray", "auto", "--ray_workers", "2"])):
        assert main(collect_args(root, tmp_path / name, *flags, *extra, model=model)) == 0
        runs[name] = mat_files(tmp_path / name)
    assert sorted(runs["ray"]) == sorted(runs["local"]) and runs["local"]
    for name, contents in runs["local"].items():
        for key, value in contents.items():
            assert np.array_equal(runs["ray"][name][key], value), (name, key)
    capsys.readouterr()


def test_a_worker_error_comes_back_as_the_one_line_error_of_a_local_run(ray_instance):
    from cleverscore.running.cluster import get_results
    from cleverscore.errors import CleverError, UsageError

    @ray.remote
    def bad_input():
        raise UsageError("the model expects 3 channels")

    @ray.remote
    def crash():
        raise ValueError("boom\nsecond line")

    with pytest.raises(UsageError, match="^the model expects 3 channels$"):
        get_results(ray, bad_input.remote(), "image 4")
    with pytest.raises(CleverError, match="^image 4: boom$"):
        get_results(ray, crash.remote(), "image 4")


def test_without_ray_the_flag_says_how_to_install_it(tmp_path):
    code = ("import runpy, sys; sys.modules['ray'] = None; sys.argv = ['collect_gradients.py'] + sys.argv[1:]; "
            "runpy.run_path('collect_gradients.py', run_name='__main__')")
    res = run_script("-c", code, "--ray", "local", "-s", str(tmp_path))
    assert res.returncode == 2
    assert res.stderr.strip() == "error: --ray needs the optional package ray: pip install -r requirements-cluster.txt"


def test_shipped_model_files_and_folders_round_trip(tmp_path):
    from cleverscore.running.cluster import pack_path, unpack_path

    folder = tmp_path / "saved_model"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(b"graph")
    (folder / "variables" / "v.data").write_bytes(b"weights")
    (tmp_path / "m.keras").write_bytes(b"keras zip")
    out = tmp_path / "out"
    out.mkdir()
    got = Path(unpack_path(pack_path(str(folder)), str(out)))
    assert got == out / "saved_model" and (got / "variables" / "v.data").read_bytes() == b"weights"
    assert Path(unpack_path(pack_path(str(tmp_path / "m.keras")), str(out))).read_bytes() == b"keras zip"


def test_an_onnx_model_travels_with_its_external_data(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx_graphs import affine_nchw

    from cleverscore.models.onnx_source import read_onnx
    from cleverscore.running.cluster import pack_path, unpack_path

    (tmp_path / "exp").mkdir()
    model = affine_nchw(np.ones((60, 4)), np.zeros(4), (3, 4, 5))
    onnx.save_model(model, tmp_path / "exp" / "model.onnx", save_as_external_data=True, location="model.onnx.data",
                    size_threshold=0)
    (tmp_path / "out").mkdir()
    got = Path(unpack_path(pack_path(str(tmp_path / "exp" / "model.onnx")), str(tmp_path / "out")))
    assert got == tmp_path / "out" / "model.onnx" and (got.parent / "model.onnx.data").is_file()
    assert read_onnx(got).key == read_onnx(tmp_path / "exp" / "model.onnx").key  # the same model, weights and all


def test_run_sh_passes_the_ray_address_on(tmp_path):
    fake = tmp_path / "python"  # records the scripts' arguments instead of running them
    fake.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/calls"\n')
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), CLEVER_RAY="10.0.0.1:6379", CLEVER_LOG_DIR=str(tmp_path / "logs"))
    res = subprocess.run(["bash", str(REPO / "run.sh"), "mnist", "normal", "16", "3", "relu", "1", "top2"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "calls").read_text().split("--quiet")[1].split() == ["--verbose", "--ray", "10.0.0.1:6379"]
