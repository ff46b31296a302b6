"""The Table 2 reproduction driver."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO, shared_dataset


def run_driver(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, CLEVER_DATA_DIR=str(shared_dataset("mnist")), TF_CPP_MIN_LOG_LEVEL="2",
               ATTACK_ARGS="--cw_binary_steps 5 --ifgsm_steps 20")
    return subprocess.run(["bash", "reproduce.sh", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["-k", "0"], "positive integers"),
    (["mnist:resnet"], "unknown model"),
    (["svhn:normal"], "unknown dataset"),
])
def test_driver_rejects_bad_arguments_with_usage(args, message):
    res = run_driver(*args)
    assert res.returncode == 2
    assert message in res.stderr and "usage:" in res.stderr


@pytest.mark.slow
def test_driver_builds_the_table_for_one_network(tmp_path):
    res = run_driver("-k", "2", "-N", "64", "-i", "10", "-o", str(tmp_path), "mnist:normal")
    assert res.returncode == 0, res.stderr
    table = pd.read_csv(tmp_path / "table2.csv")
    assert set(table.network) == {"MNIST-CNN"} and set(table.target) <= {"least", "random", "top2"}
    assert (table.n >= 1).all() and (table.cw_l2 > 0).all() and (table.clever_l2 > 0).all()
    assert "| MNIST-CNN |" in (tmp_path / "table2.md").read_text()
    assert (tmp_path / "table2.png").stat().st_size > 0
