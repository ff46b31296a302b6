"""Every score with a 95% interval: coverage on maxima with a known end point, and where it shows."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.stats import weibull_min

from cleverscore.scoring.intervals import end_point_interval, mean_interval
from conftest import run_cli_in_process
from conftest import write_mat

END = 10.0


def coverage(shape: float, n: int, trials: int, seed: int) -> tuple[float, float]:
    """(fraction of intervals holding the true end point, fraction unbounded above)."""
    rng = np.random.default_rng(seed)
    hits = unbounded = 0
    for _ in range(trials):
        s = -weibull_min.rvs(shape, loc=-END, scale=2.0, size=n, random_state=rng)
        iv = end_point_interval(s)
        hits += iv.lo <= END <= iv.hi
        unbounded += not iv.bounded
    return hits / trials, unbounded / trials


@pytest.mark.parametrize("shape,n", [(3.0, 200), (8.0, 100), (20.0, 300)])
def test_intervals_cover_the_true_end_point_about_95_percent_of_the_time(shape, n):
    # 150 trials: a calibrated interval lands in [0.90, 0.99] with probability > 0.99.
    cover, _ = coverage(shape, n, 150, seed=int(shape * n))
    assert 0.90 <= cover <= 0.99


def test_an_identified_end_point_gets_a_tight_bounded_interval():
    cover, unbounded = coverage(3.0, 500, 40, seed=5)
    assert unbounded == 0
    s = -weibull_min.rvs(3.0, loc=-END, scale=2.0, size=500, random_state=9)
    iv = end_point_interval(s)
    assert iv.bounded and (iv.hi - iv.lo) / 2 / END < 0.05


def test_a_gumbel_like_sample_is_not_bounded_above():
    # Shape 30 at n = 100 is indistinguishable from a Gumbel tail: the samples allow any end point.
    s = -weibull_min.rvs(30.0, loc=-END, scale=2.0, size=100, random_state=3)
    iv = end_point_interval(s)
    assert not iv.bounded and iv.hi == math.inf
    assert iv.score_interval(2.0) == (0.0, pytest.approx(2.0 / iv.lo))


@given(sample=st.lists(st.floats(1e-3, 1e3, allow_nan=False), min_size=3, max_size=50).map(np.array),
       g=st.floats(1e-3, 10.0))
@example(sample=np.array([0.001, 0.001, np.nextafter(0.001, 1.0)]), g=1.0)  # spread in the last bit: NaN likelihoods
@settings(max_examples=50, deadline=None)
def test_the_score_upper_end_never_exceeds_margin_over_the_largest_norm(sample, g):
    iv = end_point_interval(sample)
    lo, hi = iv.score_interval(g)
    assert iv.lo >= sample.max() and iv.hi >= iv.lo
    assert 0 <= lo <= hi <= g / sample.max() * (1 + 1e-12)


def test_constant_maxima_give_a_degenerate_interval():
    iv = end_point_interval(np.full(20, 4.0))
    assert (iv.lo, iv.hi) == (4.0, 4.0)


def test_mean_interval_combines_independent_errors():
    lo, hi = mean_interval([1.0, 1.0, 1.0, 1.0], [0.8] * 4, [1.1] * 4)
    assert lo == pytest.approx(1.0 - 0.2 / 2) and hi == pytest.approx(1.0 + 0.1 / 2)  # sqrt(4) / 4 = 1/2
    # An unbounded score (lower end 0) widens only the lower side, by its whole value.
    lo, hi = mean_interval([1.0, 2.0], [0.0, 2.0], [1.0, 2.0])
    assert lo == pytest.approx(1.5 - 0.5) and hi == pytest.approx(1.5)


def test_csv_json_columns_and_the_ci_line(tmp_path):
    rng = np.random.default_rng(0)
    for image in range(3):
        g2 = -weibull_min.rvs(3.0, loc=-1.0, scale=0.3, size=300, random_state=rng)
        write_mat(tmp_path / f"8_300_{image}_7_2_top2_relu_order1.mat", g2, g1=g2 * 20, gi=g2 / 5, g_x0=2.0)
    out = tmp_path / "rows.json"
    res = run_cli_in_process("clever.py", str(tmp_path), "--nthreads", "1", "--json", str(out), "--csv",
                             str(tmp_path / "r.csv"))
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())
    for r in rows:
        assert r["lipschitz_lo"] <= r["lipschitz_hi"] and r["score_lo"] <= r["score_hi"]
        assert r["score_lo"] == pytest.approx(2.0 / r["lipschitz_hi"] if math.isfinite(r["lipschitz_hi"]) else 0.0)
        assert r["score_hi"] == pytest.approx(2.0 / r["lipschitz_lo"])
    header = (tmp_path / "r.csv").read_text().splitlines()[0].split(",")
    assert {"score_lo", "score_hi", "lipschitz_lo", "lipschitz_hi"} <= set(header)
    l0 = [ln for ln in res.stdout.splitlines() if ln.startswith("[STATS][L0]")]
    ci = [ln for ln in res.stdout.splitlines() if ln.startswith("[STATS][CI]")]
    assert len(l0) == 1 and [ln.rsplit(" = ", 1)[1] for ln in ci] == ["end_point", "rerun"]
    m = re.match(r"^\[STATS\]\[CI\] info = top2, top2_clever_L1 = (\S+), L1_lo = (\S+), L1_hi = (\S+), "
                 r"top2_clever_L2 = (\S+), L2_lo = (\S+), L2_hi = (\S+), top2_clever_Li = (\S+), Li_lo = (\S+), "
                 r"Li_hi = (\S+), interval = end_point$", ci[0])
    assert m, ci[0]
    values = [float(v.rstrip(",")) for v in m.groups()]
    for score, lo, hi in zip(values[0::3], values[1::3], values[2::3]):
        assert lo <= score <= hi
    mean_l2 = np.mean([r["score"] for r in rows if r["norm"] == "L2"])
    assert values[3] == pytest.approx(mean_l2, rel=1e-4)
    assert f"top2_clever_L2 = {values[3]:.5g}," in l0[0]  # the [STATS][L0] line is unchanged


def test_python_api_gives_each_score_its_interval_and_an_affine_model_a_point():
    from cleverscore.api import clever_scores
    from conftest import affine_model

    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(784, 3)), np.array([3.0, 0.0, 0.0])
    result = clever_scores(affine_model(w, b), np.zeros((28, 28, 1), np.float32), target=2, true_label=0,
                           nsamps=32, niters=6, radius=0.05)
    t = result.targets[0]
    d = w[:, 0] - w[:, 2]
    exact = {"L1": 3.0 / np.abs(d).max(), "L2": 3.0 / np.linalg.norm(d), "Li": 3.0 / np.abs(d).sum()}
    for label, value in exact.items():
        lo, hi = t.intervals[label]
        assert lo == pytest.approx(value, rel=1e-4) and hi == pytest.approx(value, rel=1e-4)
