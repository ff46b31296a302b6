"""clever_scores(..., certify=True): the proofs of `collect_gradients.py --certify` from Python (fast)."""

from __future__ import annotations

import numpy as np
import pytest

from cleverscore.errors import UsageError
from cleverscore.mat_files import MatName
from cleverscore.running.plan import pending_targets
from cleverscore.settings import BoundSettings, CollectSettings, SamplingSettings
from conftest import write_mat
from test_certify_cli import RADIUS, tiny_mlp


@pytest.fixture(scope="module")
def mlp_and_image():
    model = tiny_mlp()
    return model, np.random.default_rng(0).uniform(-0.5, 0.5, (4, 4, 1)).astype(np.float32)


def test_certified_radii_lie_below_the_exact_minimal_distortion(mlp_and_image):
    from cleverscore.api import clever_scores
    from cleverscore.certify.milp import minimal_distortion, relu_network_from_keras
    from cleverscore.norms import L1, LINF

    model, x = mlp_and_image
    result = clever_scores(model, x, nsamps=32, niters=5, sample_norm="li", radius=RADIUS, certify=True)
    assert len(result.targets) == 2  # untargeted over 3 classes
    net = relu_network_from_keras(model)
    for scores in result.targets:
        assert set(scores.certified_radius) == {"L1", "L2", "Li"} == set(scores.lipschitz_certified)
        for norm in (LINF, L1):
            exact = minimal_distortion(net, x, result.true_label, scores.target, norm, (-0.5, 0.5), 30)
            assert exact.exact and 0 < scores.certified_radius[norm.label] <= exact.value
    for label in ("L1", "L2", "Li"):
        assert result.certified_radius[label] == min(t.certified_radius[label] for t in result.targets)


def test_optimised_slopes_from_python_never_lower_a_radius_nor_pass_the_exact_one(mlp_and_image):
    from cleverscore.api import clever_scores
    from cleverscore.certify.milp import minimal_distortion, relu_network_from_keras
    from cleverscore.norms import LINF

    model, x = mlp_and_image
    kwargs = dict(nsamps=16, niters=3, sample_norm="li", radius=RADIUS, certify=True)
    plain = clever_scores(model, x, **kwargs)
    optimized = clever_scores(model, x, certify_optimize=3.0, **kwargs)
    net = relu_network_from_keras(model)
    for before, after in zip(plain.targets, optimized.targets):
        exact = minimal_distortion(net, x, plain.true_label, before.target, LINF, (-0.5, 0.5), 30)
        assert before.certified_radius["Li"] <= after.certified_radius["Li"] <= exact.value * (1 + 1e-6)


@pytest.mark.parametrize("kwargs,message", [
    ({"certify": True, "certify_optimize": -1.0}, "`certify_optimize` must be a finite number"),
    ({"certify": True, "certify_budget": float("nan")}, "`certify_budget` must be a finite number"),
    ({"certify_optimize": 2.0}, "`certify_optimize` needs `certify=True`"),
])
def test_bad_certify_budgets_are_usage_errors_before_any_work(mlp_and_image, kwargs, message):
    from cleverscore.api import clever_scores

    model, x = mlp_and_image
    with pytest.raises(UsageError, match=message):
        clever_scores(model, x, nsamps=16, niters=3, **kwargs)


def test_certify_refuses_a_plain_callable_before_sampling(mlp_and_image):
    from cleverscore.api import clever_scores

    model, x = mlp_and_image
    with pytest.raises(UsageError, match="need a Keras model"):
        clever_scores(lambda batch: model(batch), x, nsamps=16, niters=3, certify=True)


@pytest.mark.parametrize("bounds,extra,recomputed", [
    (BoundSettings(), {}, False),
    (BoundSettings(certify=True), {}, True),
    (BoundSettings(certify=True), {"certified_radius_Li": 0.01}, True),  # before the Lipschitz radius: redone
    (BoundSettings(certify=True), {"certified_radius_lipschitz_Li": 0.01}, False),
    (BoundSettings(exact=True), {"certified_radius_lipschitz_Li": 0.01}, True),
    (BoundSettings(certify=True, certify_optimize=5.0), {"certified_radius_lipschitz_Li": 0.01}, True),
    (BoundSettings(certify=True, certify_optimize=5.0),
     {"certified_radius_lipschitz_Li": 0.01, "certified_radius_unoptimized_Li": 0.01}, False),
    (BoundSettings(attacks=("pgd_li", "ddn_l2")), {"attack_distortion_L2": 0.5, "attack_names": "pgd_li,ddn_l2"}, False),
    (BoundSettings(attacks=("pgd_li", "ddn_l2")), {"attack_distortion_L2": 0.5, "attack_names": "pgd_li"}, True),
    (BoundSettings(attacks=("pgd_li",)), {"attack_distortion_L2": 0.5, "attack_names": "pgd_li,fab_l1"}, True),
    (BoundSettings(attacks=("pgd_li",)), {"attack_distortion_Li": 0.5}, True),  # --exact's keys only
])
def test_a_file_without_the_bounds_asked_for_is_recomputed_not_skipped(tmp_path, bounds, extra, recomputed):
    sampling = SamplingSettings(nsamps=8, niters=5)
    settings = CollectSettings(sampling=sampling, bounds=bounds)
    name = MatName(8, 5, 0, 7, 2, "top2", "relu", 1)
    write_mat(tmp_path / name.filename, np.linspace(1, 2, 5), **extra)
    todo = pending_targets(settings, tmp_path, 0, 7, [(2, "top2")])
    assert [path.name for *_, path in todo] == ([name.filename] if recomputed else [])


def test_a_lipschitz_bound_flagged_exact_is_the_milps_exact_constant(mlp_and_image):
    from cleverscore.certify.milp import local_lipschitz, relu_network_from_keras
    from cleverscore.norms import LINF
    from cleverscore.running.bounds import certified_keys

    model, x = mlp_and_image
    logits = model(x[None]).numpy()[0]
    label = int(np.argmax(logits))
    targets = [j for j in range(3) if j != label]
    radius = 0.2  # wide enough for unstable ReLUs: the one pass is not exact, the split search ends on leaves
    rows = certified_keys(model, x, label, targets, SamplingSettings(sample_norm=LINF, radius=radius), (-0.5, 0.5),
                          split_seconds=3.0)
    net = relu_network_from_keras(model)
    flagged = 0
    for row, target in zip(rows, targets):
        exact = local_lipschitz(net, x, label, target, radius, time_limit=30)
        assert exact.exact and row["G1_certified"] >= exact.value * (1 - 1e-5)
        assert row["lipschitz_certified_exact"] in (0, 1)
        if row["lipschitz_certified_exact"]:
            assert row["G1_certified"] == pytest.approx(exact.value, rel=1e-4)
            flagged += 1
    assert flagged >= 1


def test_the_score_tables_exact_constant_is_the_milps_else_a_certified_bound_proven_attained():
    from cleverscore.norms import L2, LINF
    from cleverscore.scoring.folder import exact_constant

    ball = {"sample_norm": np.array(["li"]), "sample_radius": np.array([[0.02]]), "input_dim": np.array([[784]])}
    certified = {"G1_certified": np.array([[5.0]]), "G2_certified": np.array([[0.5]])}
    attained = {**ball, **certified, "lipschitz_certified_exact": np.array([[1]])}
    assert exact_constant(attained, LINF) == 5.0  # the dual of the sampling norm: the bound the search proved
    assert exact_constant(attained, L2) is None  # other norms' bounds are maxima over its parts, not attained
    assert exact_constant({**attained, "lipschitz_certified_exact": np.array([[0]])}, LINF) is None
    assert exact_constant({**attained, "G1_exact": np.array([[4.5]])}, LINF) == 4.5  # the MILP's answer first
    assert exact_constant({**certified, "lipschitz_certified_exact": np.array([[1]])}, LINF) is None  # no ball


def test_clever_scores_gives_the_exact_constant_the_split_search_proved(mlp_and_image):
    from cleverscore.api import clever_scores
    from cleverscore.certify.milp import local_lipschitz, relu_network_from_keras

    model, x = mlp_and_image
    result = clever_scores(model, x, nsamps=16, niters=3, sample_norm="li", radius=0.2, certify=True,
                           certify_budget=3.0)
    net = relu_network_from_keras(model)
    for scores in result.targets:
        assert set(scores.lipschitz_exact) <= {"Li"}
        if scores.lipschitz_exact:
            exact = local_lipschitz(net, x, result.true_label, scores.target, 0.2, time_limit=30)
            assert scores.lipschitz_exact["Li"] == pytest.approx(exact.value, rel=1e-4)
            assert scores.lipschitz_exact["Li"] == scores.lipschitz_certified["Li"]
    assert any(scores.lipschitz_exact for scores in result.targets)
