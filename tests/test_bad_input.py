"""Bad input and faults on the newer surfaces: one `error:` line, the right exit code, nothing written.

Output paths of clever.py, attacks.py and the Table 2 command are checked before any work; every float flag
of every command refuses NaN, infinities and values out of its domain; an unreachable Ray address
fails within its time limit; a full disk ends in one line with what was saved; unclear messages
name what is wrong; TensorFlow's start-up lines stay out of the terminal.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli_in_process, run_main_in_process, run_script, write_mat


def snapshot(folder: Path) -> dict:
    """Every path below `folder` with its modification time: equal snapshots, nothing written or changed."""
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


def run_in_process(main, argv: list[str]) -> tuple[int, str, str]:
    """A command line's `run_cli(main)` in this process: (exit code, stdout, stderr)."""
    res = run_main_in_process(main, argv)
    return res.returncode, res.stdout, res.stderr


def assert_one_error_line(err: str, message: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: ") and message in lines[-1], err[-1500:]
    assert "Traceback" not in err


@pytest.fixture
def scored_folder(tmp_path):
    """A folder with one first-order file to score."""
    folder = tmp_path / "mats"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_mat(folder / "64_20_0_7_2_top2_relu_order1.mat", 10 - rng.gamma(2.0, 0.3, 20))
    return folder


# -- 1. output paths are checked before anything is fitted ---------------------------------------

OUTPUT_CASES = [
    # (name, arguments after the folder, message)
    ("csv is a folder", lambda t: ["--csv", str(t)], "--csv: "),
    ("json is a folder", lambda t: ["--json", str(t)], "--json: "),
    ("csv under a file", lambda t: ["--csv", str(t / "a_file" / "out.csv")], "--csv: "),
    ("plot_dir is a file", lambda t: ["--plot_dir", str(t / "a_file")], "--plot_dir: "),
    ("plot without compare", lambda t: ["--plot", str(t / "p.png")], "--plot draws a --compare"),
]


@pytest.mark.parametrize("name,extra,message", OUTPUT_CASES, ids=[c[0] for c in OUTPUT_CASES])
def test_clever_refuses_an_output_it_cannot_write_before_fitting(scored_folder, tmp_path, capsys, name, extra,
                                                                   message):
    from cleverscore.cli.score import main

    (tmp_path / "a_file").write_text("not a folder")
    before = snapshot(tmp_path)
    code, out, err = run_in_process(main, [str(scored_folder), "--nthreads", "1", *extra(tmp_path)])
    assert code == 2
    assert_one_error_line(err, message)
    assert "[DEBUG]" not in out  # nothing was fitted
    assert snapshot(tmp_path) == before


def test_compare_refuses_an_unwritable_plot_and_summary_before_fitting(scored_folder, tmp_path):
    from cleverscore.cli.score import main

    (tmp_path / "cmp_summary.csv").mkdir()  # where --csv cmp.csv puts its summary table
    before = snapshot(tmp_path)
    for extra, message in ((["--plot", str(tmp_path)], "--plot: "),
                           (["--csv", str(tmp_path / "cmp.csv")], "--csv (its summary file): ")):
        code, out, err = run_in_process(main, ["--compare", str(scored_folder), str(scored_folder), *extra])
        assert code == 2 and "[DEBUG]" not in out
        assert_one_error_line(err, message)
    assert snapshot(tmp_path) == before


def test_attacks_and_table2_refuse_unwritable_outputs_before_the_work(tmp_path):
    (tmp_path / "a_file").write_text("x")
    before = snapshot(tmp_path)
    res = run_cli_in_process("attacks.py", "-n", "1", "--csv", str(tmp_path))
    assert res.returncode == 2
    assert_one_error_line(res.stderr, f"--csv: {tmp_path} is a folder, not a file")
    res = run_cli_in_process("cleverscore.cli.tables", "--network", "X", "a.csv", "c.csv", "--markdown",
                             str(tmp_path / "a_file" / "t.md"))
    assert res.returncode == 2
    assert_one_error_line(res.stderr, "--markdown: ")
    assert snapshot(tmp_path) == before


# -- 2. every float flag refuses NaN, infinities and out-of-domain values ------------------------

def float_flags() -> list[tuple[str, str]]:
    """(command, flag) for every float-typed flag of every command line."""
    from cleverscore.cli import attack, collect, score, tables, train, train_nlayer

    found = []
    for name, module in (("collect", collect), ("score", score), ("attack", attack), ("tables", tables),
                         ("train", train), ("train_nlayer", train_nlayer)):
        parser = module.build_parser() if hasattr(module, "build_parser") else None
        if parser is None:
            continue
        for action in parser._actions:
            if getattr(action.type, "__name__", "") == "number" or action.type is float:
                found.append((name, action.option_strings[-1]))
    return found


def test_float_flags_are_all_checked_numbers():
    flags = float_flags()
    assert {("collect", "--radius"), ("collect", "--rel_tol"), ("collect", "--ray_timeout"),
            ("score", "--shape_reg")} <= set(flags)
    from cleverscore.cli import collect

    unchecked = [a.option_strings for a in collect.build_parser()._actions if a.type is float]
    assert unchecked == []  # a bare float would take "nan"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_every_float_flag_refuses_nan_and_infinities(value):
    from cleverscore.cli import collect, score

    for command, flag in float_flags():
        module = {"collect": collect, "score": score}.get(command)
        if module is None:
            continue
        code, out, err = run_in_process(module.main, [f"{flag}={value}"])
        assert code == 2, (flag, err)
        assert_one_error_line(err, f"argument {flag}: must be a finite number, got '{value}'")


def test_training_rates_refuse_nan_and_out_of_domain_values(capsys):
    from cleverscore.cli import train, train_nlayer

    cases = [(train.main, ["--lr", "nan"], "argument --lr: must be a finite number"),
             (train.main, ["--lr", "0"], "argument --lr: must be > 0"),
             (train_nlayer.main, ["--lr", "inf", "8"], "argument --lr: must be a finite number"),
             (train_nlayer.main, ["--wd", "-1", "8"], "argument --wd: must be >= 0")]
    for main, argv, message in cases:
        code, _, err = run_in_process(main, argv)
        assert code == 2
        assert_one_error_line(err, message)


@pytest.mark.parametrize("argv,message", [
    (["--radius", "-0.1"], "argument --radius: must be >= 0"),
    (["--rel_tol", "1"], "argument --rel_tol: must be < 1"),
    (["--certify", "--certify_optimize", "-1"], "argument --certify_optimize: must be >= 0"),
    (["--certify_optimize", "5"], "--certify_optimize needs --certify"),
    (["--ray_timeout", "0", "--ray", "local"], "argument --ray_timeout: must be > 0"),
    (["--input_range", "nan,1", "--data_path", "x.npz"], "--input_range must be two finite numbers"),
    (["--input_range=-inf,inf", "--data_path", "x.npz"], "--input_range must be two finite numbers"),
    (["--input_mean", "nan", "--model_path", "m.keras"], "--input_mean values must be finite"),
    (["--input_std", "0", "--model_path", "m.keras"], "--input_std values must be finite and positive"),
])
def test_collect_refuses_out_of_domain_numbers_and_writes_nothing(tmp_path, capsys, argv, message):
    from cleverscore.cli.collect import main

    code, _, err = run_in_process(main, [*argv, "-s", str(tmp_path / "out")])
    assert code == 2
    assert_one_error_line(err, message)
    assert not (tmp_path / "out").exists()


# -- 3. an unreachable cluster address fails within its time limit -------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_ray_address_fails_in_one_line_within_the_timeout(tmp_path):
    pytest.importorskip("ray")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    res = run_script("collect_gradients.py", "--ray", address, "--ray_timeout", "2", "-n", "1", "-N", "8", "-i", "1",
                     "-s", str(tmp_path / "out"), "--quiet", timeout=120)
    assert res.returncode == 1
    assert_one_error_line(res.stderr, f"no Ray cluster answers at {address} within 2 s")
    assert "--ray_timeout" in res.stderr
    assert not (tmp_path / "out").exists()
    left = subprocess.run(["pgrep", "-f", "raylet|gcs_server"], capture_output=True, text=True)
    assert left.stdout.strip() == ""


def test_a_malformed_ray_address_is_refused_before_anything_loads(tmp_path):
    from cleverscore.cli.collect import main

    code, out, err = run_in_process(main, ["--ray", "head:port", "-s", str(tmp_path / "out")])
    assert code == 2
    assert_one_error_line(err, "--ray address 'head:port' is not local, auto or HOST:PORT")
    assert out == "" and not (tmp_path / "out").exists()


# -- 4. a full disk ends in one line saying what was saved ---------------------------------------

def disk_full_after(saves: int):
    """A stand-in for scipy's savemat that fills the disk after `saves` files."""
    import scipy.io as sio

    real, calls = sio.savemat, [0]

    def savemat(f, contents, *args, **kwargs):
        calls[0] += 1
        if calls[0] > saves:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(f, contents, *args, **kwargs)

    return savemat


def test_a_full_disk_mid_run_says_how_many_pairs_were_saved_and_a_rerun_resumes(tmp_path, capsys, monkeypatch):
    from cleverscore import mat_files
    from cleverscore.cli.collect import main

    argv = ["-n", "1", "-N", "16", "-i", "3", "--target_type", "5", "-s", str(tmp_path), "--quiet"]
    monkeypatch.setattr(mat_files.sio, "savemat", disk_full_after(1))
    code, _, err = run_in_process(main, argv)
    folder = tmp_path / "mnist_normal"
    assert code == 1
    assert_one_error_line(err, f"cannot write to {folder} (No space left on device): 1 (image, target) pair(s) "
                               "were saved")
    assert len(list(folder.glob("*.mat"))) == 1 and not list(folder.glob(".*.tmp"))
    monkeypatch.undo()
    code, out, _ = run_in_process(main, argv)
    assert code == 0 and "(1 already there)" in out and len(list(folder.glob("*.mat"))) == 2


def test_a_full_disk_while_writing_clever_tables_is_one_line_and_leaves_no_partial_file(scored_folder, tmp_path,
                                                                                           capsys, monkeypatch):
    import pandas as pd

    from cleverscore.cli.score import main

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_csv", no_space)
    csv = tmp_path / "out" / "scores.csv"
    code, out, err = run_in_process(main, [str(scored_folder), "--nthreads", "1", "--csv", str(csv)])
    assert code == 1 and "[STATS][L0]" in out
    assert_one_error_line(err, f"cannot write {csv}: No space left on device")
    assert not csv.exists() and not list(csv.parent.glob(".*.tmp"))


@pytest.mark.slow  # 16 s; the monkeypatched full disk above is the fast representative
def test_a_full_tmpfs_ends_the_run_in_one_line(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        res = run_script("collect_gradients.py", "-m", "2-layer", "-n", "1", "-N", "8", "-i", "1500",
                         "--target_type", "5", "-s", str(mount), "--quiet", timeout=300)
        assert res.returncode == 1
        assert_one_error_line(res.stderr, "(No space left on device): ")
        assert not list(mount.rglob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# -- 5. messages that say what is wrong ------------------------------------------------------------

def test_images_of_the_wrong_shape_name_both_shapes(tmp_path):
    x = np.zeros((2, 32, 32, 3), np.float32)
    np.savez(tmp_path / "cifar_like.npz", x=x, y=np.array([0, 1]))
    # In this process: the start-up lines are test_tensorflow_start_up_lines_do_not_reach_the_user's
    res = run_cli_in_process("collect_gradients.py", "--data_path", str(tmp_path / "cifar_like.npz"), "-n", "1",
                             "-N", "8", "-i", "1", "-s", str(tmp_path / "out"), "--quiet")
    assert res.returncode == 2
    assert_one_error_line(res.stderr, "images are 32x32x3, the model expects 28x28x1")
    assert res.stderr.strip().count("\n") == 0  # the error line alone
    assert not list((tmp_path / "out").rglob("*.mat"))


def test_a_keras_file_that_is_no_archive_says_so(tmp_path):
    from cleverscore.cli.collect import main

    (tmp_path / "model.keras").write_text("not a zip")
    code, _, err = run_in_process(main, ["--model_path", str(tmp_path / "model.keras"), "-s", str(tmp_path / "o")],
                                  )
    assert code == 2
    assert_one_error_line(err, f"{tmp_path / 'model.keras'} is not a Keras archive")
    assert not list((tmp_path / "o").rglob("*.mat"))


def test_compare_with_a_second_order_folder_names_it_before_fitting(scored_folder, tmp_path):
    from cleverscore.cli.score import main

    second = tmp_path / "order2"
    second.mkdir()
    write_mat(second / "64_20_0_7_2_top2_tanh_order2.mat", np.ones(20), H2_max=np.ones(20), g_x0_grad_2_norm=1.0)
    code, out, err = run_in_process(main, ["--compare", str(scored_folder), str(second)])
    assert code == 2 and "[DEBUG]" not in out
    assert_one_error_line(err, f"{second} holds second-order files (collected with --order 2)")


# -- 6. TensorFlow's start-up lines stay out of the terminal ---------------------------------------

CHATTER = ("oneDNN custom operations", "cudart_stub", "absl::InitializeLog", "I0000 ", "E0000 ", "cuInit")


def test_tensorflow_start_up_lines_do_not_reach_the_user_unless_debug_asks(tmp_path):
    args = ["-n", "1", "-N", "8", "-i", "1", "--target_type", "1", "-s", str(tmp_path), "--quiet"]
    res = run_script("collect_gradients.py", *args)
    assert res.returncode == 0, res.stderr[-1500:]
    assert not [c for c in CHATTER if c in res.stderr], res.stderr
    # --debug shows them: a run that loads TensorFlow and then stops at a bad --firstimg is enough
    debug = run_script("collect_gradients.py", "--debug", "-f", "10000", "-s", str(tmp_path / "d"))
    # which lines TensorFlow prints depends on the CPU (oneDNN's on AVX-512 machines, the CPU-feature guard's elsewhere)
    assert debug.returncode == 2 and [c for c in CHATTER if c in debug.stderr], debug.stderr


# -- 7. tests that need data outside the repository skip, naming it (and fail where CI needs them) -

def test_missing_shared_data_skips_with_the_files_and_clever_data_dir(tmp_path, monkeypatch):
    import conftest

    monkeypatch.setattr(conftest, "SHARED_DATA", tmp_path)
    monkeypatch.delenv("CLEVER_REQUIRE_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        conftest.shared_dataset("cifar10")
    assert "data_batch_1.bin.gz" in str(skipped.value) and "CLEVER_DATA_DIR" in str(skipped.value)
    monkeypatch.setenv("CLEVER_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception):
        conftest.shared_dataset("cifar10")


def test_ci_requires_the_shared_data():
    ci = (REPO / ".ci" / "run").read_text()
    assert "CLEVER_REQUIRE_DATA=1" in ci and ci.index("CLEVER_REQUIRE_DATA=1") < ci.index("python -m pytest -q")

