"""bench/defenses.py: one code path for MNIST and CIFAR, `--only` then a resuming run, the report per dataset.

The project's command lines are replaced by a fake `subprocess.run` that makes the folders and `--compare`
JSON they would make, so this checks what the study runs and reports, not the numbers.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_defenses", REPO / "bench" / "defenses.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while it is made
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


class FakeCommands:
    """Stands in for the project's command lines; records each one (the arguments after the interpreter)."""

    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, argv, **kwargs):
        args = list(argv[1:])
        self.calls.append(args)
        if args[0] == "collect_gradients.py":
            folder = f"{args[args.index('-d') + 1]}_{args[args.index('-m') + 1]}"
            results = Path(args[args.index("-s") + 1]) / folder
            made = results.exists()
            results.mkdir(parents=True, exist_ok=True)
            return subprocess.CompletedProcess(argv, 0, "", "saved 0 (image, target) file(s)" if made else "saved 4")
        assert args[0] == "clever.py" and args[1] == "--compare"
        b = args[3]
        summary = [{"info": "top2", "norm": norm, "pairs": 4, "ratio": 1.5, "ratio_lo": 1.2, "ratio_hi": 1.9,
                    "final_verdict": "B is more robust; attack agrees", "attack_ratio": 1.3, "attack_lo": 1.21,
                    "attack_hi": 1.4, "certified_ratio": 1.25 if "certified" in b else None,
                    "certified_lo": 1.2, "certified_hi": 1.3} for norm in ("L2", "Li", "L1")]
        path = args[args.index("--json") + 1]
        with open(path, "w") as f:
            json.dump({"summary": summary}, f)
        return subprocess.CompletedProcess(argv, 0, "", "")


@pytest.fixture
def fake(bench, monkeypatch):
    commands = FakeCommands()
    monkeypatch.setattr(bench.subprocess, "run", commands)
    return commands


def models_collected(calls, kind: str) -> list[str]:
    """The B names of the collect_gradients.py steps of one kind (`main` or `certified`), in order."""
    return [c[c.index("-s") + 1].rsplit("/", 1)[1] for c in calls
            if c[0] == "collect_gradients.py" and f"/{kind}/" in c[c.index("-s") + 1]]


def test_cifar_runs_without_adv_first_then_resumes_with_it(bench, fake, tmp_path):
    out, md = tmp_path / "work", tmp_path / "defenses_cifar.md"
    common = ["--dataset", "cifar", "--data_dir", str(tmp_path), "--out", str(out), "--markdown", str(md)]
    bench.main(common + ["--only", "distilled,brelu,defend_reduce,defend_jpeg,defend_png"])
    collects = [c for c in fake.calls if c[0] == "collect_gradients.py"]
    assert all(c[c.index("-d") + 1] == "cifar" for c in collects)
    assert models_collected(fake.calls, "main") == ["normal", "distilled", "brelu", "defend_reduce", "defend_jpeg",
                                                    "defend_png"]
    assert models_collected(fake.calls, "certified") == ["normal"]  # adv_0.008 is the other one, not run yet
    first = md.read_text()
    assert first.startswith("# Is defense X worth it? The CIFAR-10 CNN against its defenses")
    assert "Not in this run (`--only`): adv_0.008" in first
    assert "| adv_0.008 |" not in first and "| distilled | L2 | 4 | 1.50 [1.20, 1.90] | 1.30 [1.21, 1.40] |" in first
    assert "python3 bench/defenses.py --dataset cifar" in first and "--only" in first
    md.write_text(first + "\n- a kept note\n")  # below the notes line: kept by the next run

    fake.calls.clear()
    bench.main(common)
    assert models_collected(fake.calls, "main")[:2] == ["normal", "adv_0.008"]
    assert models_collected(fake.calls, "certified") == ["normal", "adv_0.008"]
    times = json.loads((out / "times.json").read_text())
    assert {"main/distilled", "main/adv_0.008", "certified/adv_0.008", "compare/adv_0.008_certified"} <= set(times)
    second = md.read_text()
    assert "Not in this run" not in second and "--only" not in second
    assert "| adv_0.008 | Li | 4 | 1.50 [1.20, 1.90] | 1.30 [1.21, 1.40] | 1.25 [1.20, 1.30] (4 img) |" in second
    assert "| defend_png | L1 |" in second  # the first run's defenses are reported too
    assert "- adv_0.008 Li: --compare at 4 images says more robust: yes" in second
    assert "adv_0.1" not in second and "MNIST" not in second
    assert second.endswith("- a kept note\n")


def test_mnist_runs_its_own_zoo_with_the_same_code(bench, fake, tmp_path):
    md = tmp_path / "defenses.md"
    bench.main(["--data_dir", str(tmp_path), "--out", str(tmp_path / "work"), "--markdown", str(md)])
    assert models_collected(fake.calls, "main") == ["normal", "adv_0.1", "adv_0.3", "distilled", "brelu",
                                                    "defend_reduce", "defend_jpeg", "defend_png"]
    assert models_collected(fake.calls, "certified") == ["normal", "adv_0.1", "adv_0.3"]
    first = next(c for c in fake.calls if c[0] == "collect_gradients.py")
    assert first[:first.index("-s")] == ["collect_gradients.py", "-d", "mnist", "-m", "normal", "-n", "20",
                                         "--target_type", "1", "--data_dir", str(tmp_path)]
    text = md.read_text()
    assert text.startswith("# Is defense X worth it? The MNIST CNN against its defenses")
    goals = text.split("## Goals")[1].split("## Times")[0]
    assert "- adv_0.1 L2:" in goals and "- adv_0.3 Li:" in goals and "adv_0.008" not in text


def test_only_names_a_defense_of_the_dataset(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--data_dir", "x", "--only", "adv_0.008"])
    assert "no defense adv_0.008 for mnist" in capsys.readouterr().err
    args = bench.parse_args(["--dataset", "cifar", "--data_dir", "x"])
    assert args.out.endswith("bench/results/defenses_cifar") and args.certified_for == "normal,adv_0.008"
