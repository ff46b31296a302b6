"""--certify and --exact end to end: a tiny ReLU MLP as a user model through collect_gradients.py,
clever.py --csv, attacks.py, the Table 2 command and clever_scores(certify=True).

The module shares one collection (2 images, top-2 targets, Linf ball): 17 s alone on 2 cores, 30 s
beside other jobs, so these are slow tests. The fast representatives are test_api_certify.py and
the [STATS][CERT] test here, which writes its .mat files itself.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import scipy.io as sio

from conftest import run_script, write_mat

RADIUS = 0.05  # small enough for the MILP to answer in well under a second
CERT = re.compile(r"\[STATS\]\[CERT\] info = (\w+), (.*)")


def tiny_mlp():
    import keras

    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(3)])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("certify")
    model = tiny_mlp()
    model.save(root / "mlp.keras")
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 4, 4, 1)).astype(np.float32)
    np.savez(root / "two.npz", x=x, y=np.argmax(model.predict(x, verbose=0), axis=1))
    res = run_script("collect_gradients.py", "--model_path", str(root / "mlp.keras"), "--data_path",
                     str(root / "two.npz"), "-n", "2", "-N", "32", "-i", "5", "--target_type", "1", "--sample_norm",
                     "li", "--radius", str(RADIUS), "--certify", "--certify_optimize", "3", "--exact", "-s",
                     str(root / "out"), "--quiet")
    assert res.returncode == 0, res.stderr
    (folder,) = (root / "out").glob("two_mlp_*")
    scored = run_script("clever.py", str(folder), "--csv", str(root / "s.csv"))
    assert scored.returncode == 0, scored.stderr
    return {"root": root, "mats": sorted(folder.glob("*.mat")), "csv": pd.read_csv(root / "s.csv"),
            "stdout": scored.stdout, "x": x}


@pytest.mark.slow
def test_every_certify_and_exact_key_is_written(run):
    keys = ["certified_radius_L1", "certified_radius_L2", "certified_radius_Li", "G1_certified", "G2_certified",
            "Gi_certified", "certified_radius_lipschitz_L1", "certified_radius_lipschitz_Li", "certified_radius_crown_Li",
            "exact_distortion_Li", "exact_distortion_L1", "G1_exact", "attack_distortion_Li",
            "attack_distortion_L1"]
    assert len(run["mats"]) == 2
    for path in run["mats"]:
        mat = sio.loadmat(path)
        assert [k for k in keys if k not in mat] == [], path.name
        assert all(np.isfinite(mat[k]).all() and mat[k].item() > 0 for k in keys[:6]), path.name
        for label in ("L1", "L2", "Li"):  # the larger of the two proofs, and which one it was
            crown = mat[f"certified_radius_crown_{label}"].item()
            lipschitz = mat[f"certified_radius_lipschitz_{label}"].item()
            assert mat[f"certified_radius_{label}"].item() == max(crown, lipschitz)
            assert str(mat[f"certified_radius_by_{label}"][0]) == ("lipschitz" if lipschitz > crown else "crown")


@pytest.mark.slow
def test_optimised_slopes_keep_crowns_own_radius_and_never_fall_below_it(run):
    for path in run["mats"]:
        mat = sio.loadmat(path)
        for norm in ("L1", "L2", "Li"):
            plain = mat[f"certified_radius_unoptimized_{norm}"].item()
            optimized = mat[f"certified_radius_crown_{norm}"].item()
            assert 0 < plain <= optimized <= mat[f"certified_radius_{norm}"].item(), (path.name, norm)
        assert optimized <= mat["exact_distortion_Li"].item() * (1 + 1e-6), path.name


@pytest.mark.slow
def test_certified_radius_below_exact_distortion_below_attack_distortion(run):
    table = run["csv"][run["csv"]["norm"].isin(["L1", "Li"])]
    assert len(table) == 4 and table["exact_distortion"].notna().all()  # the MILP answered every pair
    assert (table["certified_radius"] <= table["exact_distortion"]).all()
    assert (table["exact_distortion"] <= table["attack_distortion"] * (1 + 1e-6)).all()
    assert np.isfinite(table["attack_distortion"]).any()  # at least one example found, so one real check


@pytest.mark.slow
def test_lipschitz_found_below_exact_below_certified(run):
    li = run["csv"][run["csv"]["norm"] == "Li"]  # the exact constant exists for the Linf score
    assert len(li) == 2 and li["lipschitz_exact"].notna().all()
    assert (li["lipschitz_found"] <= li["lipschitz_exact"] * (1 + 1e-6)).all()
    assert (li["lipschitz_exact"] <= li["lipschitz_certified"] * (1 + 1e-6)).all()


@pytest.mark.slow
def test_the_cert_line_is_the_mean_of_the_csv_column(run):
    (match,) = CERT.findall(run["stdout"])
    info, rest = match
    printed = dict(re.findall(r"\w+_certified_(L1|L2|Li) = ([^,]+)", rest))
    table = run["csv"][run["csv"]["info"] == info]
    means = table.groupby("norm")["certified_radius"].mean()
    assert set(printed) == {"L1", "L2", "Li"}
    for norm, value in printed.items():
        assert float(value) == pytest.approx(means[norm], rel=1e-4)  # printed to 5 digits


@pytest.mark.slow
def test_api_certify_gives_the_radius_the_cli_wrote(run):
    from cleverscore.api import clever_scores

    mat = sio.loadmat(run["mats"][0])
    image, true, target = int(mat["id"].item()), int(mat["true_label"].item()), int(mat["target_label"].item())
    result = clever_scores(str(run["root"] / "mlp.keras"), run["x"][image], target=target, true_label=true,
                           nsamps=32, niters=5, sample_norm="li", radius=RADIUS, image_id=image, certify=True)
    (scores,) = result.targets
    for label in ("L1", "L2", "Li"):
        # The run optimised its slopes (--certify_optimize); the API's default keeps CROWN's.
        plain = max(mat[f"certified_radius_unoptimized_{label}"].item(), mat[f"certified_radius_lipschitz_{label}"].item())
        assert scores.certified_radius[label] == pytest.approx(plain, rel=1e-6)
    # The run's optimised slopes also tightened its forward bounds, so its Lipschitz bound is never looser than
    # the API's plain one, and never below the exact constant.
    exact, bound = mat["G1_exact"].item(), mat["G1_certified"].item()
    assert bound <= scores.lipschitz_certified["Li"] * (1 + 1e-6)
    assert np.isnan(exact) or exact * (1 - 1e-6) <= bound
    assert result.certified_radius == scores.certified_radius  # one target: its radii are the minimum
    assert scores.certified_radius["Li"] <= mat["exact_distortion_Li"].item()


@pytest.mark.slow
def test_table2_from_the_run_has_certified_columns_below_cw(run):
    root = run["root"]
    res = run_script("attacks.py", "--model_path", str(root / "mlp.keras"), "--data_path", str(root / "two.npz"),
                     "-n", "2", "--target_type", "1", "--cw_binary_steps", "5", "--cw_iterations", "200",
                     "--ifgsm_steps", "20", "--csv", str(root / "a.csv"))
    assert res.returncode == 0, res.stderr
    table = run_script("-m", "cleverscore.cli.tables", "--network", "MLP", str(root / "a.csv"), str(root / "s.csv"),
                       "--csv", str(root / "t.csv"))
    assert table.returncode == 0, table.stderr
    assert "| Certified L2 | Certified Linf |" in table.stdout and "| — |" not in table.stdout
    assert "certified above best on 0" in table.stderr and "[WARNING]" not in table.stderr  # best: the default attacks
    row = pd.read_csv(root / "t.csv").iloc[0]
    assert 0 < row.cert_l2 <= row.best_l2 <= row.cw_l2 and 0 < row.cert_linf <= row.best_linf <= row.cw_linf


def test_the_cert_line_of_written_files_is_the_mean_of_the_csv_column(tmp_path):
    # fast: .mat files as --certify writes them, without collecting; image 1 has the smaller radii
    g2 = np.linspace(1.0, 2.0, 20)
    for image, scale in ((0, 1.0), (1, 0.5)):
        radii = {f"certified_radius_{n}": scale * r for n, r in (("L1", 0.9), ("L2", 0.3), ("Li", 0.02))}
        write_mat(tmp_path / f"1_20_{image}_7_2_top2_relu_order1.mat", g2 * (1 + image), id=image, **radii)
    res = run_script("clever.py", str(tmp_path), "--csv", str(tmp_path / "s.csv"))
    assert res.returncode == 0, res.stderr
    (line,) = [m for m in CERT.findall(res.stdout)]
    printed = dict(re.findall(r"\w+_certified_(\w+) = ([^,]+)", line[1]))
    means = pd.read_csv(tmp_path / "s.csv").groupby("norm")["certified_radius"].mean()
    assert means.to_dict() == pytest.approx({"L1": 0.675, "L2": 0.225, "Li": 0.015})
    assert {k: float(v) for k, v in printed.items()} == pytest.approx(means.to_dict(), rel=1e-4)
