"""Shipped weights load into their architectures and reach their recorded accuracy."""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import REPO

ROW = re.compile(r"^\| `(?P<file>[^`]+)` \| (?P<dataset>\w+) \| (?P<model>[\w,-]+) \| (?P<activation>\w+) "
                 r"\| (?P<epochs>\d+) \| (?P<accuracy>[\d.]+)% \|")


def shipped_models() -> list[dict]:
    rows = [m.groupdict() for m in map(ROW.match, (REPO / "models" / "README.md").read_text().splitlines()) if m]
    assert rows, "models/README.md lists no models"
    return rows


def test_every_weights_file_is_listed_and_every_listed_file_exists():
    listed = {r["file"] for r in shipped_models()}
    assert listed == {p.name for p in (REPO / "models").glob("*.weights.h5")}


@pytest.mark.parametrize("row", shipped_models(), ids=lambda r: r["file"])
def test_shipped_model_reaches_its_recorded_accuracy_on_the_first_1000_test_images(row):
    from datasets import load_dataset
    from model_zoo import load_zoo_model, parse_model_name

    assert parse_model_name(row["dataset"], row["model"], row["activation"]).weights_file == row["file"]
    model = load_zoo_model(row["dataset"], row["model"], row["activation"])
    data = load_dataset(row["dataset"], REPO / "data" / row["dataset"] if row["dataset"] == "mnist" else None)
    logits = model.predict(data.test_data[:1000], batch_size=500, verbose=0)
    accuracy = 100 * np.mean(logits.argmax(1) == data.test_labels[:1000].argmax(1))
    assert accuracy >= float(row["accuracy"]) - 0.5, (row["file"], accuracy)


@pytest.mark.parametrize("row", [r for r in shipped_models() if r["model"] == "brelu"], ids=lambda r: r["file"])
def test_brelu_hidden_activations_never_exceed_1(row):
    import keras

    from datasets import load_dataset
    from model_zoo import load_zoo_model

    model = load_zoo_model(row["dataset"], "brelu")
    hidden = [layer.output for layer in model.layers[:-1] if hasattr(layer, "activation")]
    probe = keras.Model(model.inputs, hidden)
    data = load_dataset(row["dataset"], REPO / "data" / row["dataset"] if row["dataset"] == "mnist" else None)
    outputs = probe.predict(data.test_data[:200], verbose=0)
    assert max(float(np.max(o)) for o in outputs) <= 1.0
    assert min(float(np.min(o)) for o in outputs) >= 0.0
    assert any(np.mean(o == 1.0) > 0.001 for o in outputs)  # the cap is reached, so it matters
