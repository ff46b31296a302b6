"""--compare against the proofs and the found examples: a "more robust" they do not show is named, with its exit status."""

from __future__ import annotations

import numpy as np
import pytest

from cleverscore.scoring.compare import (EXIT_DISAGREEMENT, GRADIENT_MASKING, MORE_ROBUST_A, MORE_ROBUST_B,
                                         NO_DIFFERENCE, compare_rows, exit_status)
from test_compare import rows, write_folder

NORMS = ("L1", "L2", "Li")


def with_evidence(score_rows, certified=None, attack=None):
    """The rows with a certified radius and an attack distortion proportional to each score (None: absent)."""
    for r in score_rows:
        if certified is not None:
            r["certified_radius"] = certified * r["score"]
        if attack is not None:
            r["attack_distortion"] = attack * r["score"]
    return score_rows


def scores(n=12, seed=3):
    return np.random.default_rng(seed).uniform(0.5, 2.0, n)


def test_clever_up_with_attacks_flat_names_the_attack_and_gradient_masking():
    a = scores()
    # B's scores are 1.3x A's, its attack distortions the same as A's (B/A = 1 exactly)
    (s,) = compare_rows(with_evidence(rows(a), attack=2.0), with_evidence(rows(1.3 * a), attack=2.0 / 1.3)).summary
    assert s["verdict"] == MORE_ROBUST_B and s["disagreeing"] == "attack"
    assert s["final_verdict"] == (f"{MORE_ROBUST_B} by CLEVER, but attack disagrees (attack B/A = 1.00 [1.00, 1.00] "
                                  f"contains 1): {GRADIENT_MASKING}")


def test_clever_up_with_attacks_and_certified_radii_up_is_backed_by_both():
    a = scores()
    (s,) = compare_rows(with_evidence(rows(a), certified=0.3, attack=2.0),
                        with_evidence(rows(1.3 * a), certified=0.3, attack=2.0)).summary
    assert s["certified_verdict"] == s["attack_verdict"] == MORE_ROBUST_B
    assert s["disagreeing"] == "" and s["final_verdict"] == f"{MORE_ROBUST_B}; certified and attack agree"


def test_certified_radii_that_fall_are_named_beside_the_attack_that_agrees():
    a = scores()
    (s,) = compare_rows(with_evidence(rows(a), certified=0.3, attack=2.0),
                        with_evidence(rows(1.3 * a), certified=0.3 / 1.3 / 1.2, attack=2.0)).summary
    assert s["disagreeing"] == "certified"
    assert "but certified disagrees (certified B/A = 0.83 [0.83, 0.83] falls)" in s["final_verdict"]


def test_attacks_gaining_under_1_1x_where_clever_shows_1_3x_do_not_back_it():
    a = scores()
    (s,) = compare_rows(with_evidence(rows(a), attack=2.0), with_evidence(rows(1.3 * a), attack=2.0 * 1.05 / 1.3)).summary
    assert s["attack_verdict"] == MORE_ROBUST_B and s["attack_ratio"] == pytest.approx(1.05)
    assert s["disagreeing"] == "attack" and "attack B/A = 1.05 [1.05, 1.05] shows under 1.1x" in s["final_verdict"]


def test_a_small_gain_that_clever_and_the_attacks_both_show_is_agreement():
    a = scores(n=40)
    (s,) = compare_rows(with_evidence(rows(a, rel_lo=0.01, rel_hi=0.01), attack=2.0),
                        with_evidence(rows(1.05 * a, rel_lo=0.01, rel_hi=0.01), attack=2.0)).summary
    assert s["verdict"] == MORE_ROBUST_B and s["ratio"] == pytest.approx(1.05)
    assert s["disagreeing"] == "" and s["final_verdict"] == f"{MORE_ROBUST_B}; attack agrees"


def test_a_more_robust_by_clever_while_the_attacks_rise_is_a_disagreement_too():
    a = scores()
    (s,) = compare_rows(with_evidence(rows(1.3 * a), attack=2.0), with_evidence(rows(a), attack=2.0 * 1.3 * 1.2)).summary
    assert s["verdict"] == MORE_ROBUST_A and s["disagreeing"] == "attack"
    assert s["final_verdict"].startswith(f"{MORE_ROBUST_A} by CLEVER, but attack disagrees (attack B/A = 1.20")
    assert "rises" in s["final_verdict"]


def test_no_difference_by_clever_is_never_called_a_disagreement():
    a = scores()
    (s,) = compare_rows(with_evidence(rows(a, rel_lo=0.6, rel_hi=0.6), attack=2.0),
                        with_evidence(rows(a, rel_lo=0.6, rel_hi=0.6), attack=2.0 * 1.5)).summary
    assert s["verdict"] == NO_DIFFERENCE and s["agreement"] == "disagree"
    assert s["disagreeing"] == "" and s["final_verdict"] == NO_DIFFERENCE


def test_without_evidence_the_verdict_says_it_rests_on_clever_alone():
    a = scores()
    for b, claim in ((1.3 * a, MORE_ROBUST_B), (a / 1.3, MORE_ROBUST_A)):
        (s,) = compare_rows(rows(a), rows(b)).summary
        assert s["final_verdict"].startswith(f"{claim}; rests on CLEVER alone")
    # evidence on one side only is no evidence
    (s,) = compare_rows(with_evidence(rows(a), attack=2.0), rows(1.3 * a)).summary
    assert "attack_ratio" not in s and "rests on CLEVER alone" in s["final_verdict"]


def test_exit_status_is_disagreement_first_then_left_out_inputs():
    a = scores()
    flat = compare_rows(with_evidence(rows(a), attack=2.0), with_evidence(rows(1.3 * a), attack=2.0 / 1.3))
    backed = compare_rows(with_evidence(rows(a), attack=2.0), with_evidence(rows(1.3 * a), attack=2.0))
    assert exit_status(flat, False) == exit_status(flat, True) == EXIT_DISAGREEMENT == 3
    assert exit_status(backed, False) == 0 and exit_status(backed, True) == 1


# ---- clever.py --compare on .mat folders holding certified radii and attack distortions ----

def add_evidence(folder, certified=None, attack=None):
    """Write `certified_radius_<norm>` / `attack_distortion_<norm>` into every file: the value times (1 + image id)."""
    import scipy.io as sio

    for path in sorted(folder.glob("*.mat")):
        mat = {k: v for k, v in sio.loadmat(path).items() if not k.startswith("__")}
        image = int(np.squeeze(mat["id"]))
        for key, value in (("certified_radius", certified), ("attack_distortion", attack)):
            if value is not None:
                mat.update({f"{key}_{norm}": value * (1 + image) for norm in NORMS})
        sio.savemat(path, mat)
    return folder


@pytest.fixture(scope="module")
def evidence_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("evidence")
    images, labels = (0,), (7,)  # one image (two target types): each file costs a fit per norm, about a second
    return {
        "a": add_evidence(write_folder(root / "mnist_a", "mnist", images=images, true_labels=labels),
                          certified=0.01, attack=0.1),
        # CLEVER scores 1.3x A's; attack distortions flat, certified radii 1.3x
        "masked": add_evidence(write_folder(root / "mnist_masked", "mnist", scale=1.3, images=images,
                                            true_labels=labels), certified=0.013, attack=0.1),
        # everything 1.3x A's
        "robust": add_evidence(write_folder(root / "mnist_robust", "mnist", scale=1.3, images=images,
                                            true_labels=labels), certified=0.013, attack=0.13),
    }


def compare_lines(*argv):
    from conftest import run_cli_in_process

    res = run_cli_in_process("clever.py", "--compare", *map(str, argv), "--nthreads", "1")
    return res, [line for line in res.stdout.splitlines() if line.startswith("[COMPARE]") and "noise =" in line]


def test_cli_clever_up_attacks_flat_names_the_attack_and_exits_3(evidence_folders):
    res, lines = compare_lines(evidence_folders["a"], evidence_folders["masked"])
    assert res.returncode == EXIT_DISAGREEMENT, res.stderr
    assert len(lines) == 6  # (least, top2) x (L1, L2, Li)
    for line in lines:
        assert ", B/A = 1.30 [" in line
        assert line.endswith(f"noise = rerun: {MORE_ROBUST_B} by CLEVER, but attack disagrees "
                             f"(attack B/A = 1.00 [1.00, 1.00] contains 1): {GRADIENT_MASKING}")


def test_cli_clever_attacks_and_certified_radii_all_up_agree_and_exit_0(evidence_folders):
    res, lines = compare_lines(evidence_folders["a"], evidence_folders["robust"])
    assert res.returncode == 0, res.stderr
    assert len(lines) == 6
    assert all(line.endswith(f"noise = rerun: {MORE_ROBUST_B}; certified and attack agree") for line in lines)
