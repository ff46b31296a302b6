"""ONNX models (PyTorch exports): conversion, layout, normalisation, batch axis, errors.

The graphs are written with onnx.helper (tests/onnx_graphs.py); PyTorch is not needed."""

from __future__ import annotations

import importlib.util
import re

from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_script

if not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnx2tf")):
    pytest.skip("the packages of requirements-onnx.txt are not installed", allow_module_level=True)

from onnx_graphs import (  # noqa: E402
    affine_nchw,
    constant_reshape_affine,
    conv_mean_head,
    keras_cnn_as_onnx,
    residual_cnn,
    view_flatten_affine,
)


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


@pytest.mark.slow  # 19 s; CI time budget (8 minutes on 2 cores); the residual-block ONNX test stays
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


@pytest.mark.parametrize("shape", [[2, 60], [2, -1]], ids=["batch_and_size", "batch_and_minus_one"])
def test_fixed_batch_export_whose_flatten_is_a_constant_reshape_takes_any_batch_size(cache, shape):
    """torch's current exporter writes a fixed-batch flatten as Reshape(x, [2, 60]) (or [2, -1] for view)."""
    from cleverscore.models.onnx_convert import load_onnx_model

    _, weights, bias = _affine()
    proto = constant_reshape_affine(weights, bias, (3, 4, 5), batch=2, shape=shape)
    x = np.random.default_rng(8).uniform(-0.5, 0.5, (7, 4, 5, 3)).astype(np.float32)
    got = load_onnx_model(proto)(x).numpy()
    np.testing.assert_allclose(got, x.transpose(0, 3, 1, 2).reshape(7, -1) @ weights + bias, rtol=1e-5, atol=1e-5)


def test_batch_fixed_where_no_rewrite_reaches_says_how_to_export(cache):
    from cleverscore.errors import UsageError
    from cleverscore.models.onnx_convert import load_onnx_model

    _, weights, bias = _affine()
    proto = constant_reshape_affine(weights, bias, (3, 4, 5), batch=2, shape=[2, -1], through_identity=True)
    with pytest.raises(UsageError, match=r"fixed batch size \(2\); export it with a dynamic batch axis: "
                                         r"torch\.onnx\.export\(.*dynamic_shapes=\(\{0: torch\.export\.Dim"):
        load_onnx_model(proto)


def test_view_flatten_subgraph_converts_despite_the_converters_int32_shapes(cache):
    """Shape -> Gather -> Unsqueeze -> Concat(-1) -> Reshape: onnx2tf makes Shape int32 and the Concat with the
    int64 -1 failed; the Cast to int64 after Shape makes it convert, with any batch size."""
    from cleverscore.models.onnx_convert import load_onnx_model
    from cleverscore.models.onnx_graph import shapes_to_int64

    _, weights, bias = _affine()
    proto = view_flatten_affine(weights, bias, (3, 4, 5))
    probe = view_flatten_affine(weights, bias, (3, 4, 5))
    assert shapes_to_int64(probe) == 1 and [n.op_type for n in probe.graph.node][:2] == ["Shape", "Cast"]
    x = np.random.default_rng(10).uniform(-0.5, 0.5, (5, 4, 5, 3)).astype(np.float32)
    got = load_onnx_model(proto)(x).numpy()
    np.testing.assert_allclose(got, x.transpose(0, 3, 1, 2).reshape(5, -1) @ weights + bias, rtol=1e-5, atol=1e-5)


def test_reduce_mean_with_axes_from_a_constant_node_matches_onnxruntime(cache):
    """The older exporter's `h.mean((2, 3))`: from a Constant node onnx2tf reduced the wrong (NHWC) axes."""
    import onnxruntime as ort

    from cleverscore.models.onnx_convert import load_onnx_model

    proto = conv_mean_head()
    x = np.random.default_rng(11).uniform(0, 1, (4, 6, 8, 3)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    want = session.run(None, {"input": x.transpose(0, 3, 1, 2)})[0]
    np.testing.assert_allclose(load_onnx_model(proto)(x).numpy(), want, rtol=1e-5, atol=1e-5)


def test_a_conversion_failure_names_the_converters_own_cause():
    """Keras wraps the failing op's message; the error shows the message, not the wrapper."""
    from cleverscore.models.onnx_convert import converter_cause

    inner = ValueError("Dimensions must be equal, but are 32 and 8 for '{{node MatMul}}' with input shapes: "
                       "[?,32], [8,10].")
    wrapped = ValueError('Exception encountered when calling layer "tf.linalg.matmul" (type TFOpLambda).\n\n'
                         f"{inner}\n\nCall arguments received by layer \"tf.linalg.matmul\" (type TFOpLambda):\n"
                         "  • a=tf.Tensor(shape=(None, 32), dtype=float32)")
    assert converter_cause(wrapped) == f"ValueError: {inner}"
    try:
        try:
            raise inner
        except ValueError:
            raise TypeError('Exception encountered when calling layer "tf.concat" (type TFOpLambda).') from None
    except TypeError as outer:
        outer.__cause__ = inner  # only the exception it came from holds the text
        assert converter_cause(outer) == f"ValueError: {inner}"


def _save_with_external_data(proto, folder):
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx.data").unlink(missing_ok=True)  # onnx appends to an existing data file; torch rewrites it
    onnx.save_model(proto, folder / "model.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    return folder / "model.onnx"


def test_external_data_loads_from_another_folder_and_new_weights_are_never_served_stale(cache, tmp_path, capsys):
    """torch's exporter writes model.onnx + model.onnx.data. The data are found beside the graph whatever the
    working folder, and the cache key covers them: a re-export with new weights and the same graph bytes
    gives the new model's margins (the cache used to serve the old one)."""
    import os

    from cleverscore.models.onnx_convert import load_onnx_model

    _, weights, bias = _affine()
    x = np.random.default_rng(12).uniform(-0.5, 0.5, (3, 4, 5, 3)).astype(np.float32)
    flat = x.transpose(0, 3, 1, 2).reshape(3, -1)
    path = _save_with_external_data(affine_nchw(weights, bias, (3, 4, 5)), tmp_path / "runs" / "exp")
    assert (path.parent / "model.onnx.data").stat().st_size > weights.size * 4
    assert os.getcwd() != str(path.parent)
    first = load_onnx_model(str(path))
    np.testing.assert_allclose(first(x).numpy(), flat @ weights + bias, rtol=1e-5, atol=1e-5)
    said = capsys.readouterr().err  # a first conversion takes seconds: it says so, in one line
    assert said.count(f"[INFO] converting {path} to TensorFlow with onnx2tf") == 1

    graph_bytes = path.read_bytes()
    new_weights = weights[:, ::-1].copy()  # the classes' rows swapped: every margin changes sign or size
    _save_with_external_data(affine_nchw(new_weights, bias, (3, 4, 5)), path.parent)
    assert path.read_bytes() == graph_bytes  # only the data file changed
    second = load_onnx_model(str(path))
    assert second.converted_now and second.cache_path != first.cache_path
    assert second.content_key != first.content_key
    np.testing.assert_allclose(second(x).numpy(), flat @ new_weights + bias, rtol=1e-5, atol=1e-5)
    assert not np.allclose(second(x).numpy(), first(x).numpy(), atol=1e-2)


def test_missing_external_data_file_is_a_one_line_error_naming_it(tmp_path):
    from cleverscore.errors import UsageError
    from cleverscore.models.onnx_convert import load_onnx_model

    path = _save_with_external_data(_affine()[0], tmp_path / "exp")
    (path.parent / "model.onnx.data").rename(tmp_path / "elsewhere.data")
    with pytest.raises(UsageError, match=r"keeps its weights in model\.onnx\.data, which is not in .*exp; keep the "
                                         r"data file beside the \.onnx file"):
        load_onnx_model(str(path), cache_dir=tmp_path / "c")


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
    for needle in ("torch.onnx.export", "dynamic_axes", "dynamic_shapes", "dynamo=False", "external_data=False",
                   "model.onnx.data", "--input_mean", "--input_std", "--input_layout", "~/.cache/clever/onnx",
                   "requirements-onnx.txt", "pip install --no-deps -r requirements-onnx-nodeps.txt", "--save_adv",
                   "nn.Module", ".pth"):
        assert needle in section, needle


def test_same_named_onnx_models_get_their_own_model_id_and_folder(tmp_path):
    """runs/exp1/model.onnx and runs/exp2/model.onnx (same graph bytes, other weights in model.onnx.data) are two
    models; a copy elsewhere is the same one; the normalisation around a model is part of what is scored."""
    import shutil

    from cleverscore.models.identity import model_id
    from cleverscore.running.plan import output_folder
    from cleverscore.settings import CollectSettings, DataSettings, ModelSettings

    _, weights, bias = _affine()
    first = _save_with_external_data(affine_nchw(weights, bias, (3, 4, 5)), tmp_path / "runs" / "exp1")
    second = _save_with_external_data(affine_nchw(weights * 2, bias, (3, 4, 5)), tmp_path / "runs" / "exp2")
    copy = tmp_path / "copy"
    shutil.copytree(first.parent, copy)
    ids = [model_id(ModelSettings(model_path=p)) for p in (first, second, copy / "model.onnx")]
    assert ids[0] != ids[1] and ids[0] == ids[2]
    assert model_id(ModelSettings(model_path=first, input_mean=(0.5,), input_std=(0.25,))) != ids[0]
    folders = [output_folder(CollectSettings(model=ModelSettings(model_path=p), data=DataSettings(data_path=Path(
        "data/images.npz")), save=Path("out"))) for p in (first, second)]
    assert [f.name for f in folders] == [f"images_model_{i[:8]}" for i in ids[:2]]
    zoo = CollectSettings(model=ModelSettings(dataset="cifar", model_name="brelu"))
    assert output_folder(zoo) == Path("lipschitz_mat") / "cifar_brelu"  # the original's names for built-in models
