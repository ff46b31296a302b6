"""The optional ONNX install: pinned in one place, and never a second TensorFlow."""

from __future__ import annotations

import re
import tomllib

from conftest import REPO


def pins(path) -> set[str]:
    lines = (ln.split("#", 1)[0].strip() for ln in (REPO / path).read_text().splitlines())
    return {ln.lower().replace("-", "_") for ln in lines if ln}


def test_the_onnx_extra_pins_what_requirements_onnx_pins():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["onnx"]
    assert {e.lower().replace("-", "_") for e in extra} == pins("requirements-onnx.txt")


def test_tf_keras_comes_only_without_its_dependencies():
    """tf_keras requires the `tensorflow` distribution; with its dependencies pip installs that full wheel
    beside tensorflow-cpu. So it is in none of the files installed with dependencies."""
    assert not any(p.startswith("tf_keras") for p in pins("requirements-onnx.txt") | pins("requirements.txt"))
    assert pins("requirements-onnx-nodeps.txt") == {"tf_keras==2.21.0"}
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"pip install .*--no-deps -r requirements-onnx-nodeps\.txt", ci)
    assert ci.index("requirements-onnx.txt") < ci.index("requirements-onnx-nodeps.txt")


def test_the_torch_requirements_give_the_portable_command_first_and_the_local_wheel_as_fallback():
    text = (REPO / "requirements-torch.txt").read_text()
    assert "torch==2.13.0" in pins("requirements-torch.txt") and "onnxscript==0.7.2" in pins("requirements-torch.txt")
    assert not any(p.endswith(".whl") for p in pins("requirements-torch.txt"))  # no path that exists only here
    portable = text.index("--index-url https://download.pytorch.org/whl/cpu")
    local = text.index("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    assert portable < local
