"""bench/attacks.py's eps*: the attacks' own problem (the target wins), a pairwise eps* only a lower bound."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
from conftest import REPO

from cleverscore.norms import LINF


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_attacks", REPO / "bench" / "attacks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cached(tmp_path, wins: dict | None, pairwise: dict | None):
    paths = tmp_path / "wins.json", tmp_path / "pairwise.json"
    for path, answer in zip(paths, (wins, pairwise)):
        if answer is not None:
            path.write_text(json.dumps(answer))
    return paths


def answer(bench, paths, best: float, solve: bool = False) -> dict:
    # net and image are never touched: every answer here comes from the cache
    return bench.exact_answer(*paths, None, None, (3, 0, 7, "top2"), LINF, best, 60.0, solve=solve)


def optimal(eps: float) -> dict:
    return {"eps": eps, "lo": eps, "hi": eps, "status": "optimal", "seconds": 1.0, "time_limit": 60.0}


def test_a_pairwise_eps_far_below_the_attack_is_only_a_lower_bound(bench, tmp_path):
    wins = {"eps": math.nan, "lo": 0.0, "hi": 0.0729, "status": "time_limit", "seconds": 60.0, "time_limit": 60.0}
    found = answer(bench, cached(tmp_path, wins, optimal(0.0722)), best=0.0814)
    assert (found["status"], found["eps"], found["via"]) == ("lower_bound", 0.0722, "pairwise")
    assert found["hi"] == 0.0729  # the open target-wins MILP's point still bounds eps* from above


def test_an_attack_at_the_pairwise_eps_makes_it_exact_without_a_solve(bench, tmp_path):
    found = answer(bench, cached(tmp_path, None, optimal(0.0314248)), best=0.0314249, solve=True)
    assert (found["status"], found["eps"], found["via"]) == ("optimal", 0.0314248, "pairwise")


def test_a_proven_target_wins_answer_is_taken_over_the_pairwise_one(bench, tmp_path):
    found = answer(bench, cached(tmp_path, optimal(0.0403), optimal(0.0400)), best=0.0412)
    assert (found["status"], found["eps"], found["via"]) == ("optimal", 0.0403, "milp")


def test_nothing_cached_and_nothing_to_solve_is_not_run(bench, tmp_path):
    found = answer(bench, cached(tmp_path, None, None), best=0.05)
    assert found["status"] == "not_run" and math.isnan(found["eps"])
