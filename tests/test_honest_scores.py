"""A score never contradicts its own samples: fit selection, fallbacks, the sampled ball, partial images."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cleverscore.scoring.fit import fit_reverse_weibull
from conftest import run_cli_in_process
from conftest import reverse_weibull, write_mat, run_script
from cleverscore.norms import L1, L2, LINF, supported_radius


# --- 1. the estimate is never below the largest maximum ---------------------------------------

def test_the_issue_case_keeps_a_fit_whose_support_holds_every_maximum():
    s = reverse_weibull(30, 100, seed=14)
    assert s.max() == pytest.approx(8.3146, abs=1e-4)
    original = fit_reverse_weibull(s, select="original")
    assert original.estimate == pytest.approx(8.2584, abs=1e-3) and original.estimate < s.max()
    fixed = fit_reverse_weibull(s)
    assert fixed.estimate >= s.max() and fixed.estimate == pytest.approx(8.59, abs=0.01)


positive_samples = st.lists(st.floats(1e-6, 1e6, allow_nan=False), min_size=3, max_size=60).map(np.array)


@given(sample=positive_samples, select=st.sampled_from(["ks", "likelihood"]))
@settings(max_examples=25, deadline=None)
def test_estimate_is_never_below_the_largest_maximum(sample, select):
    assert fit_reverse_weibull(sample, select=select).estimate >= sample.max()


@pytest.mark.parametrize("shape,n,seed", [(3.0, 200, 1), (8.0, 300, 2), (15.0, 100, 3), (5.0, 50, 4)])
def test_fit_equals_the_original_where_the_original_choice_was_valid(shape, n, seed):
    s = reverse_weibull(shape, n, seed)
    original = fit_reverse_weibull(s, select="original")
    assert original.estimate >= s.max()  # the original's choice was a valid fit here
    assert fit_reverse_weibull(s) == original


# --- 2. fallbacks said aloud; 3. the sampled ball ----------------------------------------------

def test_supported_radius_of_all_nine_norm_pairs():
    d = 784
    expected = {(L2, L1): 3.0, (L2, L2): 3.0, (L2, LINF): 3.0 / 28,
                (LINF, L1): 3.0, (LINF, L2): 3.0, (LINF, LINF): 3.0,
                (L1, L1): 3.0, (L1, L2): 3.0 / 28, (L1, LINF): 3.0 / 784}
    for (sampled, score), radius in expected.items():
        assert supported_radius(sampled, 3.0, d, score) == pytest.approx(radius, rel=1e-12), (sampled, score)


def test_the_supported_ball_lies_inside_the_sampled_ball():
    # The corners of the supported ball are the points of largest sampled norm.
    rng = np.random.default_rng(0)
    d = 50
    for sampled in (L1, L2, LINF):
        for score in (L1, L2, LINF):
            r = supported_radius(sampled, 1.0, d, score)
            corner = np.full(d, r / d ** (1 / score.p)) if score.p != np.inf else np.full(d, r)
            points = [corner, r * np.eye(d)[0], r * rng.normal(size=d) / np.linalg.norm(rng.normal(size=d), score.p)]
            for x in points:
                x = x * r / np.linalg.norm(x, score.p)  # on the supported sphere
                assert np.linalg.norm(x, sampled.p) <= 1.0 + 1e-9


def clever_rows(folder, *flags):
    out = folder / "rows.json"
    res = run_cli_in_process("clever.py", str(folder), "--nthreads", "1", "--json", str(out), "--verbose", *flags)
    rows = json.loads(out.read_text()) if out.exists() else []
    return res, rows


def test_fallback_is_warned_counted_and_marked(tmp_path):
    s = np.concatenate([np.full(25, 1.0), np.full(25, 100.0)]) + np.linspace(0, 1e-3, 50)  # no Weibull fits this
    write_mat(tmp_path / "8_50_0_7_2_top2_relu_order1.mat", s, g1=reverse_weibull(5, 50, 1), gi=reverse_weibull(5, 50, 2))
    res, rows = clever_rows(tmp_path)
    assert res.returncode == 0, res.stderr
    warnings = [ln for ln in res.stderr.splitlines() if "ill-conditioned samples" in ln]
    assert len(warnings) == 1 and "8_50_0_7_2_top2_relu_order1.mat L2" in warnings[0]
    assert "1 fit(s) fell back to the largest maximum: top2/L2 = 1" in res.stderr
    assert [r["method"] for r in rows] == ["mle_reg", "mle_reg:fallback_max", "mle_reg"]


def test_beyond_ball_scores_are_flagged_counted_and_capped_on_request(tmp_path):
    g2 = reverse_weibull(5, 60, 3, end=1.0, scale=0.2)  # L2 estimate about 1, g_x0 = 3: score about 3
    write_mat(tmp_path / "8_60_0_7_2_top2_relu_order1.mat", g2, g_x0=3.0, ball=("l2", 2.0, 784))
    res, rows = clever_rows(tmp_path)
    assert res.returncode == 0, res.stderr
    by_norm = {r["norm"]: r for r in rows}
    assert by_norm["L2"]["supported_radius"] == pytest.approx(2.0)
    assert by_norm["Li"]["supported_radius"] == pytest.approx(2.0 / 28)
    assert by_norm["L2"]["score"] > 2.0 and by_norm["L2"]["beyond_ball"] is True
    flagged = [n for n, r in by_norm.items() if r["beyond_ball"]]
    assert all(by_norm[n]["score"] > by_norm[n]["supported_radius"] for n in flagged)
    assert all(by_norm[n]["score"] <= by_norm[n]["supported_radius"] for n in by_norm if n not in flagged)
    assert res.stderr.count("is beyond the sampled ball") == len(flagged)
    assert f"{len(flagged)} score(s) beyond the sampled ball" in res.stderr
    uncapped = float(re.search(r"top2_clever_L2 = ([^,]+)", res.stdout).group(1))
    capped_out = run_cli_in_process("clever.py", str(tmp_path), "--nthreads", "1", "--cap_radius").stdout
    capped = float(re.search(r"top2_clever_L2 = ([^,]+)", capped_out).group(1))
    assert uncapped == pytest.approx(by_norm["L2"]["score"], rel=1e-4) and capped == pytest.approx(2.0)


def test_files_without_ball_keys_leave_the_columns_empty(tmp_path):
    write_mat(tmp_path / "8_60_0_7_2_top2_relu_order1.mat", reverse_weibull(5, 60, 3))
    res, rows = clever_rows(tmp_path, "--cap_radius")
    assert res.returncode == 0, res.stderr
    assert all(r["supported_radius"] is None and r["beyond_ball"] is None for r in rows)
    assert "beyond the sampled ball" not in res.stderr


# --- 4. untargeted scores over all the classes -------------------------------------------------

def untargeted_folder(folder, missing=()):
    for j in range(10):
        if j == 7 or j in missing:
            continue
        write_mat(folder / f"8_40_0_7_{j}_class{j}_relu_order1.mat", reverse_weibull(5, 40, j, end=1.0 + j, scale=0.2),
                  target=j, info=f"class{j}")


def test_an_image_missing_classes_is_left_out_and_counts_as_a_skip(tmp_path):
    untargeted_folder(tmp_path, missing=(3, 4))
    res, rows = clever_rows(tmp_path, "--untargeted")
    assert res.returncode == 1
    assert "image 0: no files for target classes [3, 4]" in res.stderr
    assert "[STATS][L0] info = untargeted" not in res.stdout


def test_allow_partial_keeps_the_image_and_marks_it(tmp_path):
    untargeted_folder(tmp_path, missing=(3,))
    res, rows = clever_rows(tmp_path, "--untargeted", "--allow_partial")
    assert res.returncode == 0, res.stderr
    assert "[STATS][L0] info = untargeted" in res.stdout and "no files for target classes [3]" in res.stderr
    assert rows and all(r["partial"] is True for r in rows)


def test_a_complete_image_is_scored_without_warnings(tmp_path):
    untargeted_folder(tmp_path)
    res, rows = clever_rows(tmp_path, "--untargeted")
    assert res.returncode == 0, res.stderr
    assert "no files for target classes" not in res.stderr
    assert all(r["partial"] is False for r in rows)


# --- the original's [DEBUG][L1] line ------------------------------------------------------------

def test_debug_lines_carry_nsamps_and_niters_from_the_file(tmp_path):
    write_mat(tmp_path / "16_60_0_7_2_top2_relu_order1.mat", reverse_weibull(5, 60, 3))
    fitted = run_cli_in_process("clever.py", str(tmp_path), "--nthreads", "1", "--verbose").stdout
    pattern = (r"^\[DEBUG\]\[L1\] id = 0, true_label = 7, target_label = 2, info = top2, nsamps = 16, niters = 60, "
               r"bnd_norm = ([12i]), bnd = \S+, ks = \S+, pVal = \S+, shape = \S+, loc = \S+, scale = \S+, g_x0 = 3$")
    assert [m.group(1) for m in re.finditer(pattern, fitted, re.M)] == ["1", "2", "i"]
    maxsamp = run_script("clever.py", str(tmp_path), "--method", "maxsamp", "--verbose").stdout
    assert "[DEBUG]" not in run_cli_in_process("clever.py", str(tmp_path), "--nthreads", "1").stdout  # --verbose only
    assert len(re.findall(r"^\[DEBUG\]\[L1\] id = 0, true_label = 7, target_label = 2, info = top2, nsamps = 16, "
                          r"niters = 60, bnd_norm = [12i], bnd = \S+$", maxsamp, re.M)) == 3


def test_scores_stay_finite_and_positive(tmp_path):
    write_mat(tmp_path / "8_60_0_7_2_top2_relu_order1.mat", reverse_weibull(5, 60, 3))
    _, rows = clever_rows(tmp_path)
    assert all(math.isfinite(r["score"]) and r["score"] > 0 for r in rows)
