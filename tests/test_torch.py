"""PyTorch models as a PyTorch user has them: the README's export lines (both exporters), fixed-batch exports,
and an `nn.Module` passed to `clever_scores`.

These need torch (requirements-torch.txt), which CI does not install (its time budget, see README); they run
wherever torch is installed."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

from conftest import REPO

torch = pytest.importorskip("torch")
if not all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnx2tf")):
    pytest.skip("the packages of requirements-onnx.txt are not installed", allow_module_level=True)

from torch import nn  # noqa: E402

CHW = (3, 8, 8)


class SmallResNet(nn.Module):
    """Conv-BN-ReLU, a residual block, and `x.view(x.size(0), -1)` before the classifier: the three
    patterns of the issue in one network."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                   nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4))
        self.head = nn.Linear(4 * 4 * 4, classes)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        h = nn.functional.max_pool2d(h, 2)
        return self.head(h.view(h.size(0), -1))


def small_net() -> SmallResNet:
    torch.manual_seed(0)
    net = SmallResNet()
    with torch.no_grad():  # running statistics far from (0, 1): a training-mode export would give other logits
        for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


def torch_logits(net, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def readme_export_calls() -> list[str]:
    """Every `torch.onnx.export(...)` call in the README's PyTorch section's Python blocks, as written there."""
    section = (REPO / "README.md").read_text().split("## PyTorch models", 1)[1].split("\n## ", 1)[0]
    section = "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))
    calls = []
    for start in (m.start() for m in re.finditer(r"torch\.onnx\.export\(", section)):
        depth = 0
        for position in range(start, len(section)):
            depth += {"(": 1, ")": -1}.get(section[position], 0)
            if section[position] == ")" and depth == 0:
                calls.append(section[start:position + 1])
                break
    return calls


def export_as_readme(call: str, net, folder, monkeypatch) -> None:
    monkeypatch.chdir(folder)
    exec(call, {"torch": torch, "model": net, "x": torch.zeros(2, *CHW)})  # noqa: S102 - the README's own line
    monkeypatch.chdir(REPO)  # converted from another working folder, as a user's run would


def assert_exact(path, net, tmp_path) -> float:
    from cleverscore.models.onnx_convert import load_onnx_model

    x = np.random.default_rng(1).uniform(0, 1, (5, 8, 8, 3)).astype(np.float32)  # any batch size, not the export's 2
    converted = load_onnx_model(str(path), cache_dir=tmp_path / "cache")
    want = torch_logits(net, x)
    got = converted(x).numpy()
    difference = float(np.abs(got - want).max())
    assert difference <= 1e-5 * max(1.0, float(np.abs(want).max())), difference
    return difference


def test_readme_shows_one_export_line_per_exporter_and_the_error_hint_is_the_first():
    from cleverscore.models.onnx_convert import EXPORT_LINE, LEGACY_EXPORT_LINE

    calls = readme_export_calls()
    assert len(calls) == 2 and "dynamo=False" in calls[1] and "dynamo" not in calls[0]
    flat = [re.sub(r"\s+", " ", c).replace('"', "'") for c in calls]
    assert flat == [EXPORT_LINE, LEGACY_EXPORT_LINE]


@pytest.mark.parametrize("exporter", [0, 1], ids=["current", "older"])
def test_the_readme_export_lines_convert_exactly(exporter, tmp_path, monkeypatch):
    """The current exporter (dynamic_shapes, weights inside) and the older one (dynamic_axes) on a network with
    BatchNorm, a residual block and a view flatten: the converted model gives torch's logits."""
    if exporter == 0:
        pytest.importorskip("onnxscript")  # the current exporter writes the graph with it
    net = small_net()
    export_as_readme(readme_export_calls()[exporter], net, tmp_path, monkeypatch)
    assert not (tmp_path / "model.onnx.data").exists()  # external_data=False keeps one file
    assert_exact(tmp_path / "model.onnx", net, tmp_path)


@pytest.mark.parametrize("dynamo", [
    False, pytest.param(True, marks=pytest.mark.slow)])  # the current exporter: 6-15 s on 2 loaded cores
def test_a_fixed_batch_export_with_the_exporters_defaults_converts(dynamo, tmp_path, monkeypatch):
    """No dynamic axes: the current exporter bakes the batch into the flatten's Reshape (and writes
    model.onnx.data beside model.onnx); both are handled."""
    import warnings

    if dynamo:
        pytest.importorskip("onnxscript")
    net = small_net()
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(2, *CHW),), "model.onnx", dynamo=dynamo)
    monkeypatch.chdir(REPO)
    assert (tmp_path / "model.onnx.data").exists() == dynamo
    assert_exact(tmp_path / "model.onnx", net, tmp_path)


class Flattened(SmallResNet):
    """SmallResNet with another way to flatten."""

    def __init__(self, flatten: str):
        super().__init__()
        self.flatten = flatten

    def forward(self, x):
        h = nn.functional.max_pool2d(torch.relu(self.stem(x)), 2)
        if self.flatten == "nn.Flatten":
            h = nn.Flatten()(h)
        elif self.flatten == "reshape":
            h = h.reshape(h.shape[0], -1)
        else:
            h = h.view(h.size(0), -1)
        return self.head(h)


@pytest.mark.parametrize("flatten", ["nn.Flatten", "view", "reshape"])
def test_every_flatten_of_the_older_exporter_converts(flatten, tmp_path, monkeypatch):
    """view and reshape become Shape, Gather, Unsqueeze and Concat nodes in the older exporter."""
    torch.manual_seed(0)
    net = Flattened(flatten).eval()
    export_as_readme(readme_export_calls()[1], net, tmp_path, monkeypatch)
    assert_exact(tmp_path / "model.onnx", net, tmp_path)


def test_an_nn_module_is_exported_converted_and_scored_once(tmp_path, monkeypatch):
    from cleverscore.api import clever_scores

    monkeypatch.setenv("CLEVER_CACHE_DIR", str(tmp_path))
    net = small_net().train()  # the user's mode: scored in eval mode, and given back as it was
    image = np.random.default_rng(2).uniform(0, 1, (8, 8, 3)).astype(np.float32)
    logits = torch_logits(net.eval(), image[None])[0]
    net.train()
    c, j = int(np.argmax(logits)), int(np.argsort(logits)[-2])
    runs = [clever_scores(net, image, target=j, true_label=c, nsamps=32, niters=4, input_range=(0.0, 1.0))
            for _ in range(2)]
    assert net.training
    for result in runs:
        assert result.targets[0].g_x0 == pytest.approx(float(logits[c] - logits[j]), abs=1e-5)
        assert all(np.isfinite(v) and v > 0 for v in result.scores.values())
    assert len(list((tmp_path / "onnx").glob("*/meta.json"))) == 1  # the second call found the conversion
    assert not list((tmp_path / "onnx" / "torch_exports").iterdir())  # the exported file is not left behind


def test_a_chw_image_is_refused_with_the_transpose_that_fixes_it():
    from cleverscore.api import clever_scores
    from cleverscore.errors import UsageError

    with pytest.raises(UsageError, match=r"looks like \(C, H, W\).*image\.transpose\(1, 2, 0\)"):
        clever_scores(small_net(), np.zeros(CHW, np.float32), target=1)
