"""The package works installed: its data files travel in the wheel, its commands run outside the checkout,
offline, and the README's first command prints one screen."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import REPO

PACKAGE = REPO / "cleverscore"
FIRST_SCREEN = 60  # lines: what is computed, a progress bar, the result


def declared_package_data() -> set[Path]:
    """The files pyproject.toml's package-data globs select, relative to the package."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    return {path.relative_to(PACKAGE) for name, globs in data.items() for pattern in globs
            for path in (REPO / name.replace(".", "/")).glob(pattern) if path.is_file()}


def test_the_package_data_list_covers_every_non_python_file_under_the_package():
    tree = {p.relative_to(PACKAGE) for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert Path("scoring/rerun_table.json") in tree and Path("builtin/models/mnist.weights.h5") in tree
    assert declared_package_data() == tree


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtual environment outside the checkout with the wheel installed (dependencies from this one)."""
    root = tmp_path_factory.mktemp("installed")
    # A copy of what the wheel is built from, so that no build/ folder left in the checkout can add stale files.
    source = root / "source"
    shutil.copytree(PACKAGE, source / "cleverscore", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(root / "dist"), str(source)], capture_output=True, text=True, timeout=300,
                           cwd=root)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((root / "dist").glob("cleverscore-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", purelib], capture_output=True, text=True,
                               check=True).stdout.strip())
    # TensorFlow and the rest come from this environment (a .pth line appends it after the venv's own
    # site-packages), so that the test installs one wheel, not a gigabyte of dependencies.
    (site / "dependencies_of_the_test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                              "--no-deps", str(wheel)], capture_output=True, text=True, timeout=300, cwd=root)
    assert install.returncode == 0, install.stderr[-2000:]
    return venv


def run_installed(venv: Path, cwd: Path, *command: str) -> subprocess.CompletedProcess:
    """A console command of the installed package, in an empty folder, as a new user runs it: no project
    variables, and a proxy that refuses every connection, so that a download attempt fails."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CLEVER_") and k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", HTTP_PROXY="http://127.0.0.1:9",
               HTTPS_PROXY="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
    return subprocess.run(list(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_installed_package_collects_and_scores_the_builtin_default_in_an_empty_folder(installed, tmp_path):
    where = run_installed(installed, tmp_path, "python", "-c", "import cleverscore; print(cleverscore.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(installed), where.stdout + where.stderr
    help_ = run_installed(installed, tmp_path, "clever-collect", "--help")
    assert help_.returncode == 0 and help_.stdout.startswith("usage: clever-collect ")

    collect = run_installed(installed, tmp_path, "clever-collect", "-n", "2", "-N", "16", "-i", "10")
    assert collect.returncode == 0, collect.stderr[-2000:]
    assert len(list((tmp_path / "lipschitz_mat" / "mnist_normal").glob("*.mat"))) == 6
    assert "score them with: clever-score lipschitz_mat/mnist_normal" in collect.stdout
    score = run_installed(installed, tmp_path, "clever-score", "lipschitz_mat/mnist_normal", "--csv", "s.csv")
    assert score.returncode == 0, score.stderr[-2000:]
    rows = pd.read_csv(tmp_path / "s.csv")
    assert len(rows) == 18 and np.all(np.isfinite(rows["score"])) and (rows["score"] > 0).all()
    assert [ln.split(",")[0] for ln in score.stdout.splitlines() if ln.startswith("[STATS][L0]")] == \
        ["[STATS][L0] info = least", "[STATS][L0] info = random", "[STATS][L0] info = top2"]
    # The README's first command: collection and scores fit on one screen, the table last.
    printed = [ln for res in (collect, score) for ln in (res.stdout + res.stderr).splitlines()]
    assert len(printed) <= FIRST_SCREEN, "\n".join(printed)
    assert score.stdout.rstrip().splitlines()[-1].startswith("top2    Li")
    assert not (tmp_path / "data").exists() and not (tmp_path / "models").exists()  # nothing downloaded


def test_an_installed_copy_names_its_console_commands_in_help_and_messages(installed, tmp_path):
    help_ = run_installed(installed, tmp_path, "clever-train", "--help")
    assert help_.returncode == 0 and help_.stdout.startswith("usage: clever-train ")
    # The message a missing zoo model ends with (zoo.load_zoo_model), without loading TensorFlow to get there.
    hint = run_installed(installed, tmp_path, "python", "-c", "from cleverscore.models.zoo import parse_model_name; "
                         "print(parse_model_name('mnist', 'brelu').train_command)")
    assert hint.stdout.strip() == "clever-train --dataset mnist --model brelu", hint.stdout + hint.stderr
