"""Scoring your own Keras model on your own data: CLI, Python API, tables, resume, bad inputs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, run_cli_in_process, run_script

STATS = re.compile(r"info = (\w+), \w+_clever_L1 = ([^,]+), \w+_clever_L2 = ([^,]+), \w+_clever_Li = (\S+)")


def user_cnn(softmax: bool = False):
    import keras

    keras.utils.set_random_seed(21)
    layers = [keras.Input((12, 12, 1)), keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.Flatten(),
              keras.layers.Dense(6)]
    if softmax:
        layers.append(keras.layers.Softmax())
    return keras.Sequential(layers)


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    model = user_cnn()
    model.save(root / "mycnn.keras")
    model.export(str(root / "mycnn_savedmodel"), verbose=False)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (3, 12, 12, 1)).astype(np.float32)
    y = np.argmax(model.predict(x, verbose=0), axis=1)  # labels the model gets right
    np.savez(root / "three.npz", x=x, y=y)
    probs = user_cnn(softmax=True)
    probs.save(root / "probs.keras")
    return root, model, x, y


def collect(root, model_file, *extra, save="out"):
    return run_script("collect_gradients.py", "--model_path", str(root / model_file), "--data_path",
                      str(root / "three.npz"), "-n", "3", "-N", "64", "-i", "15", "--target_type", "1",
                      "-s", str(root / save), "--quiet", *extra)


@pytest.fixture(scope="module")
def collected(user_files):
    """collect(model_file) once per model file for the module: (its result, its folder)."""
    root, *_ = user_files
    runs = {}

    def run(model_file):
        if model_file not in runs:
            res = collect(root, model_file, save=f"out_{model_file}")
            assert res.returncode == 0, res.stderr
            runs[model_file] = res, one_folder(root / f"out_{model_file}", f"three_{model_file.split('.')[0]}")
        return runs[model_file]

    return run


def one_folder(save, prefix: str):
    """The results folder of a user's model: `<data>_<model>_<8 digits of its model_id>`."""
    found = list(save.glob(f"{prefix}_*"))
    assert len(found) == 1 and re.fullmatch(rf"{prefix}_[0-9a-f]{{8}}", found[0].name), found
    return found[0]


def scores_of(stdout: str) -> list[float]:
    return [float(v) for v in re.findall(r"bnd = ([^,]+), ks", stdout)]


@pytest.mark.parametrize("model_file", ["mycnn.keras", pytest.param("mycnn_savedmodel", marks=pytest.mark.slow)])
def test_own_model_and_npz_score_end_to_end_and_match_the_python_api(user_files, collected, model_file):
    root, model, x, y = user_files
    _, folder = collected(model_file)
    assert len(list(folder.glob("*.mat"))) == 3
    out = run_cli_in_process("clever.py", str(folder), "--nthreads", "1", "--verbose").stdout
    cli = {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"id = (\d+), .*bnd_norm = 2, bnd = ([^,]+),", out)}
    assert sorted(cli) == [0, 1, 2] and all(v > 0 for v in cli.values())

    from cleverscore.api import clever_scores

    for i in range(3):
        top2 = int(np.argsort(model.predict(x[i : i + 1], verbose=0)[0])[-2])
        api = clever_scores(model, x[i], target=top2, true_label=int(y[i]), nsamps=64, niters=15, image_id=i)
        assert api.scores["L2"] == pytest.approx(cli[i], rel=1e-4)


@pytest.mark.slow  # 21 s; CI time budget (8 minutes on 2 cores)
def test_probability_model_needs_output_probs(user_files):
    root, *_ = user_files
    plain = collect(root, "probs.keras", save="p1")
    assert "look like probabilities" in plain.stderr
    res = collect(root, "probs.keras", "--output", "probs", save="p2")
    assert res.returncode == 0, res.stderr
    assert "log-probabilities" in res.stderr
    out = run_script("clever.py", str(one_folder(root / "p2", "three_probs"))).stdout
    values = [float(v) for v in STATS.search(out).groups()[1:]]
    assert all(np.isfinite(values)) and all(v > 0 for v in values)


def test_csv_and_json_have_one_row_per_file_and_norm_matching_the_printed_lines(collected, tmp_path):
    _, folder = collected("mycnn.keras")
    out = run_script("clever.py", str(folder), "--csv", str(tmp_path / "s.csv"), "--json", str(tmp_path / "s.json"),
                     "--verbose")
    table = pd.read_csv(tmp_path / "s.csv")
    assert list(table.columns) == ["file", "id", "true_label", "target_label", "info", "norm", "g_x0", "score",
                                   "score_lo", "score_hi", "lipschitz", "lipschitz_lo", "lipschitz_hi", "score_rerun_lo",
                                   "score_rerun_hi", "lipschitz_rerun_lo", "lipschitz_rerun_hi", "searched",
                                   "shape", "loc", "scale", "ks", "pVal", "method", "order", "supported_radius",
                                   "beyond_ball", "partial", "plateau", "lipschitz_found", "lipschitz_certified",
                                   "certified_radius", "lipschitz_exact", "exact_distortion", "attack_distortion",
                                   "certified_radius_lipschitz", "certified_by"]
    assert len(table) == 3 * 3 and set(table["norm"]) == {"L1", "L2", "Li"}
    printed = scores_of(out.stdout)
    np.testing.assert_allclose(sorted(table["score"]), sorted(printed), rtol=1e-4)
    np.testing.assert_allclose(table["score"], table["g_x0"] / table["lipschitz"], rtol=1e-9)
    assert len(pd.read_json(tmp_path / "s.json")) == 9


@pytest.mark.slow  # 43 s; the suite must stay under 8 minutes on 2 cores
def test_kill_9_mid_run_then_rerun_gives_the_files_of_an_uninterrupted_run(user_files, tmp_path):
    root, *_ = user_files
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def command(save):
        return [sys.executable, "collect_gradients.py", "--model_path", str(root / "mycnn.keras"), "--data_path",
                str(root / "three.npz"), "-n", "3", "-N", "1024", "-i", "200", "--target_type", "7",
                "-s", str(save), "--quiet"]

    proc = subprocess.Popen(command(tmp_path / "killed"), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from cleverscore.models.identity import model_id
    from cleverscore.settings import ModelSettings

    folder = tmp_path / "killed" / f"three_mycnn_{model_id(ModelSettings(model_path=root / 'mycnn.keras'))[:8]}"
    deadline = time.time() + 120
    while time.time() < deadline and not list(folder.glob("*.mat")) and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = {p.name for p in folder.glob("*.mat")}
    assert 0 < len(first) < 9, "the kill should land after the first image and before the last"
    rerun = subprocess.run(command(tmp_path / "killed"), cwd=REPO, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.count("already exists. Skipping") == len(first)
    whole = subprocess.run(command(tmp_path / "whole"), cwd=REPO, env=env, capture_output=True, text=True)
    assert whole.returncode == 0
    names = sorted(p.name for p in folder.glob("*.mat"))
    assert names == sorted(p.name for p in (tmp_path / "whole" / folder.name).glob("*.mat"))
    assert len(names) == 9 and not list(folder.glob(".*"))
    import scipy.io as sio

    for name in names:  # same seed, same samples: the resumed files equal the uninterrupted ones
        a, b = sio.loadmat(folder / name), sio.loadmat(tmp_path / "whole" / folder.name / name)
        np.testing.assert_array_equal(a["G2_max"], b["G2_max"])


@pytest.mark.parametrize("case,make,message", [
    ("missing model", lambda r: ["--model_path", str(r / "nope.keras"), "--data_path", str(r / "three.npz")],
     "does not exist"),
    ("missing data", lambda r: ["--model_path", str(r / "mycnn.keras"), "--data_path", str(r / "nope.npz")],
     "does not exist"),
    ("wrong shape", lambda r: ["--model_path", str(r / "mycnn.keras"), "--data_path", str(r / "flat.npz")],
     "x must have shape (N, H, W, C)"),
    ("labels out of range", lambda r: ["--model_path", str(r / "mycnn.keras"), "--data_path",
                                       str(r / "badlab.npz")], "outside 0..5"),
    ("outside input range", lambda r: ["--model_path", str(r / "mycnn.keras"), "--data_path",
                                       str(r / "wide.npz")], "outside --input_range"),
    ("NCHW data", lambda r: ["--model_path", str(r / "mycnn.keras"), "--data_path", str(r / "nchw.npz")],
     "looks like (N, C, H, W), PyTorch's layout; the data must be (N, H, W, C): save x.transpose(0, 2, 3, 1)"),
    ("PyTorch checkpoint", lambda r: ["--model_path", str(r / "weights.pth"), "--data_path", str(r / "three.npz")],
     "is a PyTorch file; export the model to ONNX first"),
])
def test_bad_user_inputs_are_one_line_errors_with_nothing_written(user_files, tmp_path, case, make, message):
    root, _, x, y = user_files
    np.savez(root / "flat.npz", x=x.reshape(3, -1), y=y)
    np.savez(root / "badlab.npz", x=x, y=np.array([0, 1, 9]))
    np.savez(root / "wide.npz", x=x * 4, y=y)
    np.savez(root / "nchw.npz", x=np.repeat(x, 3, axis=3).transpose(0, 3, 1, 2), y=y)
    (root / "weights.pth").write_bytes(b"PK\x03\x04 not really a checkpoint")
    res = run_cli_in_process("collect_gradients.py", *make(root), "-n", "3", "-N", "32", "-i", "3", "-s", str(tmp_path))
    assert res.returncode == 2, (case, res.stderr)
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, (case, last)
    assert not list(tmp_path.rglob("*"))


def test_two_same_named_models_never_mix(user_files, tmp_path, capsys):
    """runs/exp1/model.keras and runs/exp2/model.keras on one data set: two folders, nothing skipped across them,
    and a folder that holds both models' files is refused by clever.py (before, it averaged them, exit 0).
    In-process (the command lines' `main`), to spare three TensorFlow start-ups."""
    import keras
    import scipy.io as sio

    from cleverscore.cli.collect import main as collect_main
    from cleverscore.cli.score import main as score_main
    from cleverscore.errors import UsageError
    from cleverscore.models.identity import model_id
    from cleverscore.settings import ModelSettings

    root, model, x, y = user_files
    other = keras.models.clone_model(model)  # same architecture and file name, other weights: logits x 2,
    weights = model.get_weights()             # so the same classes and targets, and so the same file names
    other.set_weights(weights[:-2] + [w * 2 for w in weights[-2:]])
    for exp, m in (("exp1", model), ("exp2", other)):
        (tmp_path / exp).mkdir()
        m.save(tmp_path / exp / "model.keras")
    save = tmp_path / "out"

    def collect_in_process(exp: str) -> tuple[int, str, str]:
        code = collect_main(["--model_path", str(tmp_path / exp / "model.keras"), "--data_path",
                             str(root / "three.npz"), "-n", "3", "-N", "16", "-i", "4", "--target_type", "1",
                             "-s", str(save), "--quiet", "--verbose"])
        out = capsys.readouterr()
        return code, out.out, out.err

    runs = [collect_in_process(exp) for exp in ("exp1", "exp2")]
    assert [r[0] for r in runs] == [0, 0], runs[1][2]
    assert "already exists" not in runs[1][1]  # the second model skips nothing of the first
    ids = [model_id(ModelSettings(model_path=tmp_path / exp / "model.keras")) for exp in ("exp1", "exp2")]
    assert ids[0] != ids[1]
    folders = [save / f"three_model_{i[:8]}" for i in ids]
    for folder, identity in zip(folders, ids):
        files = sorted(folder.glob("*.mat"))
        assert len(files) == 3 and {str(sio.loadmat(f)["model_id"][0]) for f in files} == {identity}
    printed = runs[0][1].splitlines()[0]  # the arguments line describes the user's model and data
    assert "'model_path'" in printed and "'model_name'" not in printed and "'dataset'" not in printed

    # The old layout: both models' files in one folder. clever.py refuses it...
    mixed = folders[0]
    victim = sorted(mixed.glob("*.mat"))[0]
    victim.write_bytes((folders[1] / victim.name).read_bytes())
    with pytest.raises(UsageError, match=r"holds the results of 2 different models") as refused:
        score_main([str(mixed), "--nthreads", "1"])
    assert ids[0] in str(refused.value) and ids[1] in str(refused.value) and refused.value.exit_code == 2
    assert "[STATS]" not in capsys.readouterr().out
    # ...and a collection recomputes the other model's file instead of skipping it
    code, out, err = collect_in_process("exp1")
    assert code == 0 and out.count("already exists") == 2 and "collected from another model" in err
    assert str(sio.loadmat(victim)["model_id"][0]) == ids[0]
    assert score_main([str(mixed), "--nthreads", "1"]) == 0  # the folder is one model's again


def test_every_image_misclassified_is_an_error_with_the_preprocessing_hint(user_files, tmp_path, capsys):
    from cleverscore.cli.collect import main as collect_main
    from cleverscore.errors import CleverError

    root, model, x, y = user_files
    np.savez(tmp_path / "wrong.npz", x=x, y=(y + 1) % 6)
    with pytest.raises(CleverError) as stopped:
        collect_main(["--model_path", str(root / "mycnn.keras"), "--data_path", str(tmp_path / "wrong.npz"),
                      "-n", "3", "-N", "16", "-i", "3", "-s", str(tmp_path / "out")])
    message = str(stopped.value)
    assert stopped.value.exit_code == 1 and "\n" not in message
    assert message.startswith("the model misclassifies every selected image (3; it predicts class")
    assert "--input_range" in message and "--input_mean/--input_std" in message and "--input_layout" in message
    assert not list(tmp_path.rglob("*.mat"))
