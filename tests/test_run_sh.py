"""run.sh: the original argument order, a usage message on bad arguments, logs and .mat files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO


def run_sh(*args: str, tmp_path, numimg: str = "2") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, NUMIMG=numimg, CLEVER_LOG_DIR=str(tmp_path / "logs"),
               CLEVER_ARGS=f"-s {tmp_path / 'mat'}", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(["bash", str(REPO / "run.sh"), *args], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [(), ("mnist", "normal", "16", "3", "relu", "1"),
                                  ("svhn", "normal", "16", "3", "relu", "1", "top2"),
                                  ("mnist", "normal", "16", "3", "relu", "3", "top2"),
                                  ("mnist", "normal", "x", "3", "relu", "1", "top2"),
                                  ("mnist", "normal", "16", "3", "relu", "1", "sideways")])
def test_wrong_arguments_print_usage_and_fail(tmp_path, args):
    res = run_sh(*args, tmp_path=tmp_path)
    assert res.returncode == 2
    assert "usage: " in res.stderr and "model modeltype nsamp niters activation order target" in res.stderr
    assert not (tmp_path / "mat").exists()


def test_small_sweep_writes_a_log_and_mat_files(tmp_path):
    res = run_sh("mnist", "normal", "16", "3", "relu", "1", "top2", tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    logs = list((tmp_path / "logs" / "mnist" / "normal").glob("top2_16_3_relu_order1_*.log"))
    assert len(logs) == 1 and "[STATS][L1] total = 2" in logs[0].read_text()
    assert len(list((tmp_path / "mat" / "mnist_normal").glob("16_3_*_top2_relu_order1.mat"))) == 2
