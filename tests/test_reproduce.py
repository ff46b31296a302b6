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


STUB = """#!/usr/bin/env bash
# stands in for python: the weights look-up prints an existing file; every script call is logged
if [ "$1" = -c ]; then echo "$0"; exit 0; fi
echo "$*" >> "$STUB_LOG"
"""


@pytest.mark.parametrize("flag, certified", [("", []), ("-c", ["mnist"]), ("-C", ["cifar", "mnist"])])
def test_certify_flags_pass_certify_to_the_chosen_datasets_only(tmp_path, flag, certified):
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    env = dict(os.environ, PYTHON=str(stub), STUB_LOG=str(tmp_path / "calls"))
    args = ["-o", str(tmp_path / "out"), *([flag] if flag else []), "mnist:normal", "cifar:normal"]
    res = subprocess.run(["bash", "reproduce.sh", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    collects = {c.split(" -d ")[1].split()[0]: c for c in calls if c.startswith("collect_gradients.py")}
    assert sorted(d for d, c in collects.items() if "--certify" in c) == certified
    for dataset, call in collects.items():  # certified files live apart, so no uncertified one is reused
        folder = "lipschitz_mat_certified" if dataset in certified else "lipschitz_mat"
        assert f"-s {tmp_path}/out/{folder} " in call
    assert sum(c.startswith(f"clever.py {tmp_path}/out/lipschitz_mat_certified/") for c in calls) == len(certified)
