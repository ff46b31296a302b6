"""ONNX models (PyTorch exports): conversion, layout, normalisation, batch axis, errors.

The graphs are written with onnx.helper (tests/onnx_graphs.py); PyTorch is not needed."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

from conftest import REPO, run_script

if not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnx2tf")):
    pytest.skip("the packages of requirements-onnx.txt are not installed", allow_module_level=True)

from onnx_graphs import affine_nchw, keras_cnn_as_onnx, residual_cnn  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory, monkeypatch_module):
    folder = tmp_path_factory.mktemp("onnx_cache")
    monkeypatch_module.setenv("CLEVER_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def mnist():
    from cleverscore.data import load_dataset
    from cleverscore.models.zoo import load_zoo_model

    data = load_dataset("mnist")
    return load_zoo_model("mnist", "normal"), data.test_data[:2], np.argmax(data.test_labels[:2], 1)


def test_mnist_cnn_as_nchw_onnx_gives_the_keras_maxima_and_scores(cache, mnist):
    from cleverscore.api import clever_scores
    from cleverscore.models.onnx_convert import load_onnx_model

    keras_model, x, y = mnist
    proto = keras_cnn_as_onnx(keras_model)
    converted = load_onnx_model(proto)
    assert converted.converted_now and converted.layout == "nchw" and converted.image_shape == (28, 28, 1)
    again = load_onnx_model(proto)  # the second load comes from the cache, keyed by content
    assert not again.converted_now and again.cache_path == converted.cache_path
    np.testing.assert_allclose(again(x).numpy(), keras_model(x).numpy(), rtol=1e-5, atol=1e-4)

    runs = {name: clever_scores(model, x[1], target=3, true_label=int(y[1]), nsamps=64, niters=15, image_id=1)
            for name, model in (("keras", keras_model), ("onnx", proto))}
    for ours, ref in zip(runs["onnx"].targets, runs["keras"].targets):
        assert ours.g_x0 == pytest.approx(ref.g_x0, rel=1e-5)
        for norm in ("L1", "L2", "Li"):
            assert ours.scores[norm] == pytest.approx(ref.scores[norm], rel=1e-4)
            assert ours.fits[norm].estimate == pytest.approx(ref.fits[norm].estimate, rel=1e-4)


def test_residual_block_matches_onnxruntime_and_scores(cache):
    import onnxruntime as ort

    from cleverscore.api import clever_scores
    from cleverscore.models.onnx_convert import load_onnx_model

    proto = residual_cnn()
    model = load_onnx_model(proto)
    x = np.random.default_rng(3).uniform(0, 1, (6, 32, 32, 3)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"input": x.transpose(0, 3, 1, 2)})[0]
    np.testing.assert_allclose(model(x).numpy(), reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    result = clever_scores(proto, x[0], target=[1, 2], true_label=0, nsamps=32, niters=8, input_range=(0.0, 1.0))
    assert [t.target for t in result.targets] == [1, 2]
    assert result.targets[0].g_x0 == pytest.approx(float(reference[0, 0] - reference[0, 1]), rel=1e-4, abs=1e-4)
    assert all(np.isfinite(v) and v > 0 for v in result.scores.values())


def _affine(batch="batch"):
    rng = np.random.default_rng(5)
    chw = (3, 4, 5)  # H != W != C: any layout mistake changes the numbers
    weights = rng.normal(size=(int(np.prod(chw)), 4))
    bias = np.array([2.0, 0.0, -0.5, 0.3])
    return affine_nchw(weights, bias, chw, batch), weights, bias


def test_affine_nchw_maxima_are_exact_dual_norms_and_g_x0_uses_the_transposed_image(cache):
    from cleverscore.sampling.estimator import EstimateLipschitz
    from cleverscore.models.onnx_convert import load_onnx_model

    proto, weights, bias = _affine()
    x0 = np.random.default_rng(6).uniform(-0.5, 0.5, (4, 5, 3)).astype(np.float32)  # NHWC, as our data
    est = EstimateLipschitz(log=None)
    est.load_model(model=load_onnx_model(proto), batch_size=64)
    logits = x0.transpose(2, 0, 1).ravel() @ weights + bias  # the model sees the CHW image
    c = int(np.argmax(logits))
    targets = [j for j in range(4) if j != c]
    for res in est.estimate_targets(x0, c, targets, 64, 5, "l2"):
        w = weights[:, c] - weights[:, res.target]
        assert res.g_x0 == pytest.approx(logits[c] - logits[res.target], rel=1e-5)
        wrong = x0.ravel() @ w + bias[c] - bias[res.target]  # the untransposed (HWC) flattening
        assert abs(res.g_x0 - wrong) > 1e-2
        np.testing.assert_allclose(res.grad_max, np.tile([np.linalg.norm(w), np.abs(w).sum(), np.abs(w).max()],
                                                         (5, 1)), rtol=1e-5)


def test_input_mean_and_std_act_inside_the_model_so_gradients_stay_in_input_units(cache):
    from cleverscore.api import clever_scores

    proto, weights, bias = _affine()
    x0 = np.random.default_rng(7).uniform(0, 1, (4, 5, 3)).astype(np.float32)
    mean, std = np.array([0.4, 0.5, 0.6]), np.array([0.2, 0.25, 0.5])
    z = ((x0 - mean) / std).transpose(2, 0, 1).ravel()
    logits = z @ weights + bias
    c = int(np.argmax(logits))
    j = (c + 1) % 4
    res = clever_scores(proto, x0, target=j, true_label=c, nsamps=32, niters=4, input_range=(0.0, 1.0),
                        input_mean=mean, input_std=std).targets[0]
    # d/dx of w . ((x - mean) / std) is w / std per channel (w in CHW order).
    w = ((weights[:, c] - weights[:, j]).reshape(3, 4, 5) / std[:, None, None]).ravel()
    assert res.g_x0 == pytest.approx(logits[c] - logits[j], rel=1e-5)
    assert res.scores["L2"] == pytest.approx(res.g_x0 / np.linalg.norm(w), rel=1e-5)
    assert res.scores["Li"] == pytest.approx(res.g_x0 / np.abs(w).sum(), rel=1e-5)


def test_fixed_batch_export_takes_any_batch_size(cache):
    from cleverscore.models.onnx_convert import load_onnx_model

    proto, weights, bias = _affine(batch=1)
    x = np.random.default_rng(8).uniform(-0.5, 0.5, (7, 4, 5, 3)).astype(np.float32)
    got = load_onnx_model(proto)(x).numpy()
    np.testing.assert_allclose(got, x.transpose(0, 3, 1, 2).reshape(7, -1) @ weights + bias, rtol=1e-5, atol=1e-5)


def test_batch_fixed_inside_the_graph_says_how_to_export(cache):
    from onnx import TensorProto, helper

    from cleverscore.errors import UsageError
    from cleverscore.models.onnx_convert import load_onnx_model

    proto, _, _ = _affine(batch=1)
    flatten = proto.graph.node[0]
    proto.graph.initializer.append(helper.make_tensor("shape", TensorProto.INT64, [2], [1, -1]))
    proto.graph.node.remove(flatten)
    proto.graph.node.insert(0, helper.make_node("Reshape", ["input", "shape"], ["flat"]))
    with pytest.raises(UsageError, match=r"fixed batch size.*dynamic_axes=\{'input': \{0: 'batch'\}"):
        load_onnx_model(proto)


def test_unsupported_operator_is_named_in_one_line(cache):
    from onnx import helper

    from cleverscore.errors import UsageError
    from cleverscore.models.onnx_convert import load_onnx_model

    proto, _, _ = _affine()
    node = helper.make_node("LpPool", ["input"], ["pooled"], kernel_shape=[1, 1], p=2)
    proto.graph.node.insert(0, node)
    proto.graph.node[1].input[0] = "pooled"
    with pytest.raises(UsageError, match=r"^the ONNX model uses LpPool, which the converter .* cannot translate$"):
        load_onnx_model(proto)


def test_missing_packages_say_what_to_install(tmp_path, monkeypatch):
    import sys

    from cleverscore.errors import UsageError
    from cleverscore.models.onnx_convert import load_onnx_model

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(UsageError, match=r"onnxruntime is missing.*pip install -r requirements-onnx\.txt"):
        load_onnx_model(_affine()[0], cache_dir=tmp_path)


def test_corrupt_file_is_one_line_usage_error(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    res = run_script("collect_gradients.py", "--model_path", str(bad), "-N", "8", "-i", "2", "-s", str(tmp_path),
                     env={"CLEVER_CACHE_DIR": str(tmp_path / "cache")})
    assert res.returncode == 2
    assert re.fullmatch(r"error: .*broken\.onnx is not a valid ONNX model: .*\n", res.stderr), res.stderr
    assert not list(tmp_path.rglob("*.mat"))


@pytest.mark.slow
def test_cli_collect_and_attacks_on_an_onnx_model_with_normalisation(tmp_path):
    import onnx

    proto = residual_cnn()
    onnx.save(proto, tmp_path / "resnet.onnx")
    x = np.random.default_rng(9).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    from cleverscore.models.onnx_convert import load_onnx_model

    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    z = (x.astype(np.float32) / 255 - np.array(mean, np.float32)) / np.array(std, np.float32)
    y = np.argmax(load_onnx_model(proto, cache_dir=tmp_path / "c0")(z).numpy(), 1)
    np.savez(tmp_path / "imgs.npz", x=x, y=y)
    env = {"CLEVER_CACHE_DIR": str(tmp_path / "cache")}
    flags = ["--model_path", str(tmp_path / "resnet.onnx"), "--data_path", str(tmp_path / "imgs.npz"),
             "--input_range", "0,1", "--input_mean", ",".join(map(str, mean)), "--input_std", ",".join(map(str, std))]
    res = run_script("collect_gradients.py", *flags, "-n", "3", "-N", "32", "-i", "10", "--target_type", "1",
                     "-s", str(tmp_path / "out"), "--quiet", env=env)
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "out").glob("imgs_resnet_*/*.mat"))) == 3
    assert list((tmp_path / "cache" / "onnx").glob("*/saved_model"))
    res = run_script("attacks.py", *flags, "-n", "3", "--target_type", "1", "--attacks", "ifgsm_li",
                     "--ifgsm_steps", "10", "--csv", str(tmp_path / "att.csv"), env=env)
    assert res.returncode == 0, res.stderr
    import pandas as pd

    rows = pd.read_csv(tmp_path / "att.csv")
    assert len(rows) == 3 and rows["success"].all() and (rows["linf"] <= 1.0).all()


def test_readme_names_the_cache_folder_and_the_export_lines():
    text = (REPO / "README.md").read_text()
    section = text.split("## PyTorch models", 1)[1].split("\n## ", 1)[0]
    for needle in ("torch.onnx.export", "dynamic_axes", "--input_mean", "--input_std", "--input_layout",
                   "~/.cache/clever/onnx", "requirements-onnx.txt"):
        assert needle in section
