"""Every estimate inside its own interval, and no certainty where the sampler saw one region."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from cleverscore.scoring.brackets import consistent_interval, is_plateau
from cleverscore.scoring.fit import fit_reverse_weibull
from cleverscore.scoring.intervals import EndPointInterval, end_point_interval
from conftest import reverse_weibull, run_cli_in_process, write_mat


def test_a_fallback_estimate_lies_inside_its_interval():
    # A rejected fit reports the largest maximum; the profile interval of these maxima starts above it.
    maxima = np.array([243.77] * 3 + list(243.77 - np.geomspace(1.0, 40.0, 57)))
    fit = fit_reverse_weibull(maxima)
    interval = EndPointInterval(357.14, 420.0, 360.0)  # the case: lo above the estimate
    bracket = consistent_interval(fit.estimate, interval, maxima, float(maxima.max()))
    assert bracket.interval.lo <= bracket.estimate <= bracket.interval.hi
    assert bracket.interval.lo == pytest.approx(243.77) and bracket.interval.hi == 420.0


def test_all_equal_maxima_give_an_unbounded_interval_and_a_plateau_flag():
    maxima = np.full(50, 3.5)
    assert end_point_interval(maxima).hi == 3.5  # the profile likelihood alone says [max, max]
    bracket = consistent_interval(3.5, end_point_interval(maxima), maxima, 3.5)
    assert bracket.plateau and bracket.interval.lo == 3.5 and math.isinf(bracket.interval.hi)


def test_a_plateau_is_bounded_by_a_certificate_and_zero_width_only_when_it_equals_the_max():
    maxima = np.array([2.0] * 30 + [1.5] * 20)
    assert is_plateau(maxima)
    wide = consistent_interval(2.0, end_point_interval(maxima), maxima, 2.0, certified=2.6)
    assert (wide.interval.lo, wide.interval.hi) == (2.0, 2.6)
    tight = consistent_interval(2.0, end_point_interval(maxima), maxima, 2.0, certified=2.0)
    assert tight.interval.lo == tight.interval.hi == 2.0


def test_a_fitted_sample_is_no_plateau_and_keeps_its_profile_interval():
    maxima = reverse_weibull(5, 200, seed=3)
    fit = fit_reverse_weibull(maxima)
    interval = end_point_interval(maxima)
    bracket = consistent_interval(fit.estimate, interval, maxima, float(maxima.max()))
    assert not bracket.plateau
    assert bracket.interval.lo == pytest.approx(min(interval.lo, fit.estimate))
    assert bracket.interval.hi == pytest.approx(max(interval.hi, fit.estimate))


def test_an_estimate_above_a_certified_bound_is_lowered_to_it():
    maxima = reverse_weibull(3, 100, seed=1)  # end point 10
    bracket = consistent_interval(11.0, EndPointInterval(10.0, 12.0, 11.0), maxima, float(maxima.max()),
                                  certified=10.5)
    assert bracket.estimate == 10.5 and bracket.interval.hi == 10.5 and bracket.interval.lo <= 10.5


def test_clever_flags_a_plateau_and_prints_no_zero_width_interval(tmp_path):
    folder = tmp_path / "mats"
    folder.mkdir()
    g2 = np.full(40, 4.0)
    write_mat(folder / "64_40_0_7_2_top2_relu_order1.mat", g2, g1=np.full(40, 80.0), gi=np.full(40, 0.8))
    res = run_cli_in_process("clever.py", str(folder), "--nthreads", "1", "--csv", str(tmp_path / "s.csv"), "--verbose")
    assert res.returncode == 0, res.stderr
    assert "the maxima repeat one value" in res.stderr and "plateau(s)" in res.stderr
    rows = pd.read_csv(tmp_path / "s.csv")
    assert rows["plateau"].all()
    assert (rows["lipschitz_hi"] == np.inf).all() and (rows["score_lo"] == 0).all()
    assert (rows["lipschitz_lo"] <= rows["lipschitz"]).all()
    # Nor a zero-width rerun interval: another seed may meet a region the sampler never saw.
    assert (rows["lipschitz_rerun_hi"] == np.inf).all() and (rows["score_rerun_lo"] == 0).all()
    assert (rows["lipschitz_rerun_lo"] <= rows["lipschitz"]).all()


def test_the_bound_line_prints_the_certain_bracket_beside_both_intervals(tmp_path):
    folder = tmp_path / "mats"
    folder.mkdir()
    rng = np.random.default_rng(5)
    g2 = 2.0 - rng.weibull(4.0, 60) * 0.2
    write_mat(folder / "64_60_0_7_2_top2_relu_order1.mat", g2, G2_certified=2.5, G1_certified=60.0, Gi_certified=0.7)
    write_mat(folder / "64_60_1_7_3_top2_relu_order1.mat", g2 * 1.1, id=1)  # not certified: no line
    res = run_cli_in_process("clever.py", str(folder), "--nthreads", "1", "--csv", str(tmp_path / "s.csv"), "--verbose")
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("[BOUND]")]
    assert len(lines) == 3 and all("id = 0," in ln for ln in lines)
    rows = pd.read_csv(tmp_path / "s.csv").set_index(["id", "norm"])
    pattern = (r"bnd_norm = (\w+), lipschitz = (\S+), end_point = \[(\S+), (\S+)\], rerun = \[(\S+), (\S+)\], "
               r"certain = \[(\S+), (\S+)\]$")
    for line in lines:
        bnd, *values = re.search(pattern, line).groups()
        lip, lo, hi, rlo, rhi, found, cert = map(float, values)
        row = rows.loc[(0, {"1": "L1", "2": "L2", "i": "Li"}[bnd])]
        assert (lip, lo, hi, rlo, rhi, found, cert) == pytest.approx(
            (row.lipschitz, row.lipschitz_lo, row.lipschitz_hi, row.lipschitz_rerun_lo, row.lipschitz_rerun_hi,
             row.lipschitz_found, row.lipschitz_certified), rel=1e-4)
        assert found <= lip <= cert and lo <= lip <= hi
    assert rows.loc[(0, "L2")].lipschitz_certified == pytest.approx(2.5)


def test_a_fallback_whose_top_maximum_repeats_gets_no_zero_width_rerun_interval(tmp_path):
    # The top value 5.0 in 10 of 60 iterations: no plateau (< 50%), but a bootstrap of the maxima
    # almost always draws it, so their difference is 0 at both quantiles.
    folder = tmp_path / "mats"
    folder.mkdir()
    rng = np.random.default_rng(2)
    g2 = np.concatenate([np.full(10, 5.0), rng.uniform(1.0, 2.0, 50)])
    write_mat(folder / "64_60_0_7_2_top2_relu_order1.mat", g2, g1=g2 * 20, gi=g2 / 5)
    res = run_cli_in_process("clever.py", str(folder), "--nthreads", "1", "--csv", str(tmp_path / "s.csv"))
    assert res.returncode == 0, res.stderr
    rows = pd.read_csv(tmp_path / "s.csv")
    assert not rows["plateau"].any()
    assert (rows["lipschitz_rerun_hi"] > rows["lipschitz_rerun_lo"]).all()
    assert (rows["lipschitz_rerun_lo"] <= rows["lipschitz"]).all()
    assert (rows["lipschitz"] <= rows["lipschitz_rerun_hi"]).all()
