"""Before-and-after comparison of two folders' CLEVER scores (compare.py, clever.py --compare)."""

from __future__ import annotations

import numpy as np
import pytest

from cleverscore.scoring.compare import (MORE_ROBUST_A, MORE_ROBUST_B, NO_DIFFERENCE, compare_rows, draw_scores, pair_rows,
                                        ratio_interval, report_lines, verdict)
from cleverscore.errors import UsageError


def rows(scores, info="top2", norm="L2", rel_lo=0.1, rel_hi=0.05, labels=None, first_id=0):
    """Synthetic clever.py rows: one per image, with an asymmetric 95% interval around each score (end point
    and rerun alike)."""
    return [{"file": f"{i}.mat", "id": i, "true_label": (labels or {}).get(i, i % 10), "target_label": 1,
             "info": info, "norm": norm, "score": s, "score_lo": s * (1 - rel_lo), "score_hi": s * (1 + rel_hi),
             "score_rerun_lo": s * (1 - rel_lo), "score_rerun_hi": s * (1 + rel_hi), "order": 1}
            for i, s in enumerate(scores, start=first_id)]


def noisy_rows(truth, rel, seed, **kwargs):
    """Scores measured with relative noise `rel` (normal), with the matching 95% interval."""
    rng = np.random.default_rng(seed)
    measured = truth * (1 + rel * rng.standard_normal(truth.size))
    return rows(measured, rel_lo=1.96 * rel, rel_hi=1.96 * rel, **kwargs)


def test_draws_match_the_interval_ends_and_the_estimate_as_quantiles():
    z = np.random.default_rng(0).standard_normal(200_000)
    draws = draw_scores(np.full_like(z, 2.0), np.full_like(z, 1.0), np.full_like(z, 2.5), z)
    assert np.quantile(draws, [0.025, 0.5, 0.975]) == pytest.approx([1.0, 2.0, 2.5], abs=0.01)
    # score_lo = 0: 2.5% of draws fall below 0 and are clipped there, none is negative
    draws = draw_scores(np.full_like(z, 2.0), np.zeros_like(z), np.full_like(z, 2.5), z)
    assert draws.min() == 0.0 and np.mean(draws == 0) == pytest.approx(0.025, abs=0.002)


def test_b_exactly_1_3_times_a_is_more_robust_with_1_3_inside_the_interval():
    a = np.random.default_rng(1).uniform(0.3, 3.0, 20)
    result = compare_rows(rows(a), rows(1.3 * a))
    (summary,) = result.summary
    assert summary["pairs"] == 20 and summary["ratio"] == pytest.approx(1.3)
    assert summary["ratio_lo"] < 1.3 < summary["ratio_hi"] and summary["ratio_lo"] > 1.0
    assert summary["verdict"] == MORE_ROBUST_B
    assert all(p["ratio"] == pytest.approx(1.3) for p in result.pairs)
    # the other way round
    assert compare_rows(rows(1.3 * a), rows(a)).summary[0]["verdict"] == MORE_ROBUST_A


def test_rows_without_intervals_count_as_exact_and_the_bootstrap_is_over_images_only():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    plain = [{k: v for k, v in r.items() if not k.startswith(("score_lo", "score_hi", "score_rerun"))} for r in rows(a)]
    result = compare_rows(plain, [dict(r, score=2 * r["score"]) for r in plain])
    assert result.pairs[0]["score_a_lo"] == result.pairs[0]["score_a_hi"] == 1.0
    # every pair has ratio 2, so every resample of images does too
    assert result.summary[0]["ratio_lo"] == pytest.approx(2.0) and result.summary[0]["ratio_hi"] == pytest.approx(2.0)


def test_the_interval_is_reproducible_and_widens_with_the_score_intervals():
    a = np.random.default_rng(2).uniform(0.5, 2.0, 10)
    first = compare_rows(rows(a), rows(1.1 * a)).summary[0]
    assert compare_rows(rows(a), rows(1.1 * a)).summary[0] == first
    wide = compare_rows(rows(a, rel_lo=0.5, rel_hi=0.5), rows(1.1 * a, rel_lo=0.5, rel_hi=0.5)).summary[0]
    assert wide["ratio_hi"] - wide["ratio_lo"] > 2 * (first["ratio_hi"] - first["ratio_lo"])
    assert wide["verdict"] == NO_DIFFERENCE


def test_a_rerun_of_a_shows_no_difference_in_most_seeds():
    """False alarms: A against a rerun of A, scores with 5% noise and matching intervals, 20 images."""
    truth = np.random.default_rng(3).uniform(0.3, 3.0, 20)
    verdicts = [compare_rows(noisy_rows(truth, 0.05, 2 * k), noisy_rows(truth, 0.05, 2 * k + 1)).summary[0]["verdict"]
                for k in range(60)]
    # a 95% interval allows 3 of 60 on average; the redraw makes it conservative (see ratio_interval)
    assert verdicts.count(NO_DIFFERENCE) >= 57
    # and a real 20% difference with the same noise is found every time
    found = [compare_rows(noisy_rows(truth, 0.05, 2 * k), noisy_rows(1.2 * truth, 0.05, 2 * k + 1)).summary[0]["verdict"]
             for k in range(20)]
    assert found == [MORE_ROBUST_B] * 20


def test_scores_not_bounded_below_cannot_make_b_more_robust():
    """score_lo = 0 (the Lipschitz constant not bounded above): B's true scores may be far lower."""
    a = np.random.default_rng(4).uniform(0.3, 3.0, 20)
    summary = compare_rows(rows(a), rows(1.3 * a, rel_lo=1.0)).summary[0]
    assert summary["ratio"] == pytest.approx(1.3)
    assert summary["ratio_lo"] < 1.0 and summary["verdict"] == NO_DIFFERENCE


def test_verdict_needs_the_whole_interval_on_one_side_of_1():
    assert verdict(1.01, 1.5) == MORE_ROBUST_B
    assert verdict(0.5, 0.99) == MORE_ROBUST_A
    assert verdict(0.9, 1.1) == verdict(1.0, 1.2) == NO_DIFFERENCE


def test_pairs_by_target_type_not_by_class_and_lists_images_in_one_folder_only():
    a = rows([1.0, 2.0, 3.0]) + rows([4.0, 5.0, 6.0], info="least")
    b = rows([1.5, 2.5, 9.0], first_id=1) + rows([4.5, 5.5, 6.5], info="least")
    for r in b:
        r["target_label"] = 7  # B picked other classes as its top-2 and least-likely targets
    result = compare_rows(a, b)
    assert [(p["id"], p["info"]) for p in result.pairs] == [(0, "least"), (1, "least"), (2, "least"), (1, "top2"),
                                                           (2, "top2")]
    assert result.pairs[3]["target_a"] == 1 and result.pairs[3]["target_b"] == 7
    assert result.only_a == [(0, "top2")] and result.only_b == [(3, "top2")]
    lines = report_lines(result)
    assert lines[0] == "[COMPARE] left out, only in A: 1 (image, target type): id 0 top2"
    assert lines[1] == "[COMPARE] left out, only in B: 1 (image, target type): id 3 top2"
    assert lines[2].startswith("[COMPARE] info = least, norm = L2, pairs = 3, A = 5, B = 5.5, B/A = 1.10 [")
    assert lines[3].startswith("[COMPARE] info = top2, norm = L2, pairs = 2, A = 2.5, B = 2, B/A = 0.80 [")


def test_untargeted_folders_compare_the_per_image_minimum_with_its_interval():
    def classes(image, scores):
        return [{"file": f"{image}_{j}.mat", "id": image, "true_label": 3, "target_label": j, "info": f"class{j}",
                 "norm": "Li", "score": s, "score_lo": lo, "score_hi": hi, "order": 1}
                for j, (s, lo, hi) in enumerate(scores)]

    a = classes(0, [(2.0, 1.5, 2.2), (1.0, 0.5, 3.0)]) + classes(1, [(4.0, 3.0, 5.0)])
    b = classes(0, [(1.8, 1.7, 1.9), (2.5, 2.0, 2.6)]) + classes(1, [(5.0, 4.0, 6.0)])
    result = pair_rows(a, b, bound="end_point")
    first = result.pairs[0]
    assert (first["id"], first["info"], first["norm"]) == (0, "untargeted", "Li")
    # A: the minimum is class 1's score, its interval [min lo, min hi] = [0.5, 2.2]; B: class 0's
    assert (first["score_a"], first["score_a_lo"], first["score_a_hi"]) == (1.0, 0.5, 2.2)
    assert (first["score_b"], first["target_b"], first["score_b_lo"], first["score_b_hi"]) == (1.8, 0, 1.7, 1.9)
    assert len(result.pairs) == 2 and result.pairs[1]["score_b"] == 5.0


def test_untargeted_flag_reduces_targeted_rows_too():
    a = rows([1.0, 2.0]) + rows([0.5, 3.0], info="least")
    result = pair_rows(a, a, untargeted=True)
    assert [(p["info"], p["score_a"]) for p in result.pairs] == [("untargeted", 0.5), ("untargeted", 2.0)]


def test_different_images_are_refused():
    with pytest.raises(UsageError, match="image 1 has true label 1 in A but 5 in B: the two folders hold different"):
        pair_rows(rows([1.0, 2.0]), rows([1.0, 2.0], labels={1: 5}))


def test_two_files_for_one_image_and_target_type_are_refused():
    with pytest.raises(UsageError, match="folder B has two files for image 0, target type top2"):
        pair_rows(rows([1.0]), rows([1.0]) + rows([2.0]))


def test_second_order_rows_and_non_finite_scores_are_left_out():
    a = rows([1.0, 2.0, 3.0])
    a[2]["score"] = float("inf")
    extra = dict(rows([9.0])[0], order=2, info="random")
    result = compare_rows(a + [extra], rows([1.0, 2.0, 3.0]) + [extra])
    assert [p["id"] for p in result.pairs] == [0, 1]
    assert result.not_finite == [(2, "top2", "L2")]
    assert report_lines(result)[0] == "[COMPARE] left out, score not finite: 1 (image, target type): id 2 top2"


def test_no_pairs_give_nan_not_an_error():
    assert all(np.isnan(ratio_interval([], [], [], [], [], [])))


# ---- clever.py --compare on synthetic .mat folders ----

def write_folder(folder, dataset, scale=1.0, images=(0, 1, 2), seed=0, true_labels=(7, 2, 1)):
    """Result files whose maxima are reverse-Weibull draws (end point 2 + image), divided by `scale`.

    Shape 1.2: 40 maxima then bound the end point within a few percent, so the score intervals are narrow.
    """
    import scipy.io as sio
    from scipy.stats import weibull_min

    folder.mkdir(parents=True)
    for image in images:
        rng = np.random.default_rng([seed, image])  # the same draws whichever images a folder has
        for info, target in (("least", 3), ("top2", 5)):
            end = 2.0 + image
            draws = {key: (end * factor - weibull_min.rvs(1.2, scale=0.3 * factor, size=40, random_state=rng)) / scale
                     for key, factor in (("Gi_max", 1.0), ("G2_max", 4.0), ("G1_max", 40.0))}
            sio.savemat(folder / f"40_1_{image}_{true_labels[image]}_{target}_{info}_relu_order1.mat",
                        {**draws, "g_x0": 1.0 + image, "id": image, "true_label": true_labels[image],
                         "target_label": target, "info": info, "args": {"dataset": dataset, "data_path": ""}})
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    return {"a": write_folder(root / "mnist_a", "mnist"),
            "partial": write_folder(root / "mnist_c", "mnist", scale=1.3, images=(1, 2)),
            "cifar": write_folder(root / "cifar_a", "cifar", true_labels=(3, 8, 8)), "root": root}


def test_cli_b_with_maxima_scaled_down_by_1_3_is_more_robust_by_1_3_and_lists_unpaired_images(folders):
    import json

    import pandas as pd

    from conftest import run_cli_in_process

    root = folders["root"]
    # B lacks image 0: it is listed and left out
    res = run_cli_in_process("clever.py", "--compare", str(folders["a"]), str(folders["partial"]), "--nthreads", "1",
                             "--csv", str(root / "pairs.csv"), "--json", str(root / "cmp.json"), "--plot",
                             str(root / "cmp.png"))
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if line.startswith("[COMPARE]")]
    assert lines[0] == "[COMPARE] left out, only in A: 2 (image, target type): id 0 least, id 0 top2"
    assert len(lines) == 7  # then (least, top2) x (L1, L2, Li)
    for line in lines[1:]:
        assert "pairs = 2" in line and ", B/A = 1.30 [" in line
        assert line.endswith("], noise = rerun: B is more robust; rests on CLEVER alone "
                             "(no certified radius or attack distortion in both folders)")
    pairs = pd.read_csv(root / "pairs.csv")
    assert len(pairs) == 12 and np.allclose(pairs.score_b / pairs.score_a, 1.3)
    summary = pd.read_csv(root / "pairs_summary.csv")
    assert len(summary) == 6 and np.allclose(summary.ratio, 1.3)
    assert (summary.ratio_lo <= 1.3 + 1e-9).all() and (summary.ratio_hi >= 1.3 - 1e-9).all()
    document = json.loads((root / "cmp.json").read_text())
    assert document["a"] == "mnist_a" and len(document["pairs"]) == 12
    assert document["only_in_a"] == [{"id": 0, "info": "least"}, {"id": 0, "info": "top2"}]
    assert (root / "cmp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_folders_from_different_datasets_in_one_line(folders):
    from conftest import run_script

    res = run_script("clever.py", "--compare", str(folders["a"]), str(folders["cifar"]))
    assert res.returncode == 2
    assert res.stderr == ("error: the folders hold different images: A is from mnist, B from cifar; "
                          "compare needs the same images\n")
    assert "[DEBUG]" not in res.stdout  # refused before any fitting


def synthetic_folder(folder, ends, g_x0, seed, maxima=60, scale_down=1.0, shape=4.0, scale=0.03):
    """Result files whose maxima lie below known end points (the true Lipschitz constants).

    A Weibull scale of 3% of the end point gives maxima as spread as the MNIST MLP's real ones
    (sd 0.3-1.5% of the largest at -N 256)."""
    import scipy.io as sio
    from scipy.stats import weibull_min

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for image, (end, g) in enumerate(zip(ends, g_x0)):
        draws = {key: (end - weibull_min.rvs(shape, scale=scale * end, size=maxima, random_state=rng)) / scale_down
                 for key in ("G1_max", "G2_max", "Gi_max")}
        sio.savemat(folder / f"256_{maxima}_{image}_0_1_top2_relu_order1.mat",
                    {**draws, "g_x0": g, "id": image, "true_label": 0, "target_label": 1, "info": "top2",
                     "args": {"dataset": "synthetic", "data_path": ""}})


def folder_rows(folder):
    import contextlib
    import io

    from cleverscore.scoring.folder import folder_files, score_files
    from cleverscore.settings import ScoreSettings

    with contextlib.redirect_stdout(io.StringIO()):
        results, _, _ = score_files(folder_files(folder, 0), ScoreSettings(nthreads=1))
    return [row for r in results for row in r.rows("mle_reg")]


def test_maxima_scaled_down_by_1_3_show_the_difference_on_rerun_noise_where_end_points_do_not(tmp_path):
    # The case: 8 images at -i 60, every maximum of B is A's divided by 1.3.
    rng = np.random.default_rng(11)
    ends, g_x0 = rng.uniform(1.0, 5.0, 8), rng.uniform(0.5, 3.0, 8)
    synthetic_folder(tmp_path / "a", ends, g_x0, seed=3)
    synthetic_folder(tmp_path / "b", ends, g_x0, seed=3, scale_down=1.3)
    a, b = folder_rows(tmp_path / "a"), folder_rows(tmp_path / "b")
    for s in compare_rows(a, b).summary:
        assert s["ratio"] == pytest.approx(1.3, rel=1e-6) and s["ratio_lo"] > 1.0 and s["verdict"] == MORE_ROBUST_B
        assert s["bound"] == "rerun"
    conservative = compare_rows(a, b, bound="end_point").summary
    assert all(s["ratio_hi"] - s["ratio_lo"] > 0.2 for s in conservative)  # end points: far wider


def test_a_folder_against_its_rerun_with_another_seed_shows_no_difference(tmp_path):
    rng = np.random.default_rng(12)
    ends, g_x0 = rng.uniform(1.0, 5.0, 8), rng.uniform(0.5, 3.0, 8)
    synthetic_folder(tmp_path / "a", ends, g_x0, seed=4)
    synthetic_folder(tmp_path / "rerun", ends, g_x0, seed=5)
    summary = compare_rows(folder_rows(tmp_path / "a"), folder_rows(tmp_path / "rerun")).summary
    assert [s["verdict"] for s in summary] == [NO_DIFFERENCE] * 3
    assert all(s["ratio_lo"] < 1.0 < s["ratio_hi"] for s in summary)


@pytest.mark.slow  # 12 s; CI time budget (8 minutes on 2 cores); the synthetic-folder power tests stay
def test_a_true_1_3_difference_between_independent_runs_is_found(tmp_path):
    rng = np.random.default_rng(13)
    ends, g_x0 = rng.uniform(1.0, 5.0, 20), rng.uniform(0.5, 3.0, 20)
    synthetic_folder(tmp_path / "a", ends, g_x0, seed=6, maxima=100)
    synthetic_folder(tmp_path / "b", ends, g_x0, seed=7, maxima=100, scale_down=1.3)
    summary = compare_rows(folder_rows(tmp_path / "a"), folder_rows(tmp_path / "b")).summary
    assert all(s["verdict"] == MORE_ROBUST_B and s["ratio_lo"] < 1.3 < s["ratio_hi"] for s in summary)


def test_certified_radii_and_attacks_are_compared_beside_and_their_agreement_said():
    a = np.random.default_rng(3).uniform(0.5, 2.0, 12)
    rows_a, rows_b = rows(a), rows(1.3 * a)
    for r in rows_a:
        r.update(certified_radius=0.3 * r["score"], attack_distortion=2.0 * r["score"])
    for r in rows_b:
        r.update(certified_radius=0.3 * r["score"], attack_distortion=1.0 * r["score"] / 1.3 * 2.0)  # attacks: same
    (s,) = compare_rows(rows_a, rows_b).summary
    assert s["certified_ratio"] == pytest.approx(1.3) and s["certified_verdict"] == MORE_ROBUST_B
    assert s["attack_ratio"] == pytest.approx(1.0) and s["attack_verdict"] == NO_DIFFERENCE
    assert s["agreement"] == "disagree"
    lines = report_lines(compare_rows(rows_a, rows_b))
    assert any("certified B/A = 1.30" in ln and "attack B/A = 1.00" in ln and ln.endswith("disagree") for ln in lines)
