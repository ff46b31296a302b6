"""A `torch.nn.Module` as an ONNX file in the cache, so that `clever_scores(module, image)` needs no export by hand.

The export is the one the README shows: the module in eval mode (its own mode is restored
afterwards), a dynamic batch axis, the weights inside the one file. torch's current exporter
(`dynamo=True`) needs `onnxscript`; without it the older exporter is used. The file is written
under the ONNX cache folder and the usual conversion takes it from there, so the converted
model is cached by content like any other: a second call on the same module re-exports (seconds)
but does not convert again.

torch is never imported here unless the caller already has: a module can only come from it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import tempfile
import warnings
from pathlib import Path

from cleverscore.errors import CleverError, UsageError

EXPORT_BATCH = 2  # torch.export specialises a dimension of size 1, so the example batch holds 2


def is_torch_module(model) -> bool:
    """Whether `model` is a torch.nn.Module (False without importing torch when it is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _example_input(module, image_shape: tuple[int, int, int], layout: str):
    import torch

    h, w, c = image_shape
    shape = (EXPORT_BATCH, h, w, c) if layout == "nhwc" else (EXPORT_BATCH, c, h, w)
    parameter = next(iter(module.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    return torch.zeros(shape, dtype=torch.float32, device=device)


@contextlib.contextmanager
def _quiet_logger(name: str):
    """Errors only from a logger (torch.onnx logs a line per optional package it does not find)."""
    import logging

    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _export(module, x, path: Path, dynamo: bool) -> None:
    import torch

    common = {"input_names": ["input"], "output_names": ["logits"]}
    if dynamo:
        torch.onnx.export(module, (x,), str(path), dynamo=True, external_data=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), **common)
    else:
        torch.onnx.export(module, (x,), str(path), dynamo=False,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **common)


def export_module(module, image_shape: tuple[int, int, int], layout: str = "auto",
                  folder: str | os.PathLike | None = None):
    """The module exported to ONNX, as an onnx.ModelProto taking (N, C, H, W) (or (N, H, W, C): `layout` 'nhwc').

    UsageError when torch.onnx cannot export it, with the exporter's reason."""
    from cleverscore.models.onnx_convert import cache_folder

    folder = Path(folder) if folder else cache_folder() / "torch_exports"
    folder.mkdir(parents=True, exist_ok=True)
    dynamo = importlib.util.find_spec("onnxscript") is not None
    was_training = module.training
    module.eval()  # batch norm with running statistics and no dropout: the function being scored
    work = Path(tempfile.mkdtemp(prefix=".export.", dir=folder))
    path = work / "model.onnx"
    try:
        log = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
                _quiet_logger("torch.onnx"):
            warnings.simplefilter("ignore")  # the exporters' deprecation notes are about their own future
            _export(module, _example_input(module, image_shape, layout), path, dynamo)
        from cleverscore.models.onnx_source import import_optional

        return import_optional("onnx").load_model_from_string(path.read_bytes())
    except CleverError:
        raise
    except Exception as err:  # noqa: BLE001 - torch.export raises many types; each becomes one line
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        exporter = "torch.onnx.export(dynamo=True)" if dynamo else "torch.onnx.export(dynamo=False)"
        raise UsageError(f"{exporter} cannot export the module: {type(err).__name__}: {first}") from None
    finally:
        module.train(was_training)
        for leftover in work.iterdir() if work.exists() else ():
            leftover.unlink()
        with contextlib.suppress(OSError):
            work.rmdir()
