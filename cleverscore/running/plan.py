"""Planning a collection: which images, which targets of each, and which of them still need a file."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleverscore.errors import CleverError, UsageError
from cleverscore.log_lines import datagen_line
from cleverscore.mat_files import MatName, load_mat, mat_status, mat_text, result_folder
from cleverscore.models.user import model_label
from cleverscore.running.targets import USER, choose_targets, read_ids_file
from cleverscore.settings import CollectSettings, DataSettings, ModelSettings


@dataclass
class WorkItem:
    """One image with its pending targets: what a worker, in this process or on Ray, computes."""

    seq: int  # position of the image in the run, as printed in the [STATS] lines
    image_id: int
    true_label: int
    x0: np.ndarray
    todo: list[tuple[int, str, Path]]  # (target, info, result file)


def output_folder(settings: CollectSettings, model_id: str | None = None) -> Path:
    """`<save>/<data name>_<model name>`, known before anything loads.

    A user's model (`model_path`) adds the first 8 digits of its `model_id` (computed here when
    not given): `runs/a/model.onnx` and `runs/b/model.onnx` never share a folder, while a copy
    of one file finds its results. Built-in models keep the original's `<dataset>_<model_name>`.
    """
    data = model_label(str(settings.data.data_path)) if settings.data.data_path else settings.model.dataset
    if not settings.model.model_path:
        return result_folder(settings.save, data, settings.model.model_name)
    from cleverscore.models.identity import model_id as identity

    digits = (model_id or identity(settings.model, settings.sampling.seed))[:8]
    return result_folder(settings.save, data, f"{model_label(str(settings.model.model_path))}_{digits}")


def select_images(data: DataSettings, num_test: int, num_classes: int | None) -> list[tuple[int, int | None]]:
    """(image id, user target) pairs to process."""
    if data.ids:
        entries = read_ids_file(str(data.ids), bool(data.target_type & USER), num_classes, num_test)
        entries = entries[data.firstimg : data.firstimg + data.numimg]
        if not entries:
            raise UsageError(f"`firstimg` {data.firstimg} is past the end of the `ids` file")
        return [(e.id, e.target) for e in entries]
    if data.firstimg >= num_test:
        raise UsageError(f"`firstimg` {data.firstimg} is past the end of the test set ({num_test} images)")
    last = min(data.firstimg + data.numimg, num_test)
    if data.firstimg + data.numimg > num_test:
        print(f"[WARNING] only {last - data.firstimg} images from --firstimg {data.firstimg} to the end of the test set",
              file=sys.stderr)
    return [(i, None) for i in range(data.firstimg, last)]


def require_some_correct(logits: np.ndarray, labels: np.ndarray, model: ModelSettings) -> None:
    """CleverError when the model misclassifies every selected image: a preprocessing mistake, not robustness.

    Each misclassified image is skipped, so without this check such a run ends with exit 0
    and nothing written. The hint names the flags that set what the model sees."""
    predicted = np.argmax(logits, axis=1)
    if len(labels) == 0 or np.any(predicted == labels):
        return
    classes, counts = np.unique(predicted, return_counts=True)
    common = f"it predicts class {classes[np.argmax(counts)]} for {counts.max()} of them"
    if model.model_path:
        hint = ("check what the model is given: `input_range` (the range it takes; uint8 data are mapped onto it), "
                "`input_mean`/`input_std` (the normalisation it expects, if not inside the model) and, for ONNX, "
                "`input_layout`")
    else:
        hint = "check that the data are the built-in model's (`dataset`, `data_dir`)"
    raise CleverError(f"the model misclassifies every selected image ({len(labels)}; {common}), so none has a "
                      f"score; {hint}")


def required_keys(settings: CollectSettings) -> tuple[str, ...]:
    """The keys a result file needs to be skipped: a file without the bounds asked for is recomputed."""
    keys = ("G2_max", "g_x0")
    if settings.bounds.certify:
        keys += ("certified_radius_lipschitz_Li",)  # files of versions before the Lipschitz radius are redone
    if settings.bounds.certify_optimize:
        keys += ("certified_radius_unoptimized_Li",)
    if settings.bounds.exact:
        keys += ("exact_distortion_Li",)
    if settings.bounds.attacks:
        keys += ("attack_distortion_L2",)  # --exact's files hold only the Linf and L1 attack distortions
    return keys


def pending_targets(settings: CollectSettings, folder: Path, image_id: int, true_label: int, chosen,
                    model_id: str | None = None, existing: list | None = None) -> list:
    """(target, info, path) for the targets of an image without a complete result file of this model.

    A file that records another `model_id` is recomputed (and replaced), never skipped. The
    (image, target) pairs skipped because their file is complete are appended to `existing`."""
    existing = [] if existing is None else existing
    s = settings.sampling
    keys = required_keys(settings)
    todo = []
    for target, info in chosen:
        name = MatName(s.nsamps, s.niters, image_id, true_label, target, info, settings.model.activation, s.order)
        path = folder / name.filename
        status, redo = ("missing", "") if settings.overwrite else existing_status(path, model_id, keys,
                                                                                  settings.bounds.attacks)
        if redo and settings.verbose:
            print(f"[INFO] {path} {redo}; recomputing it")
        if status == "complete":
            if settings.verbose:
                print(f"file {path} already exists. Skipping this sample...")
            existing.append((image_id, target))
            continue
        if status == "other model":
            print(f"[WARNING] {path} was collected from another model (its model_id is not {model_id}); "
                  "recomputing it", file=sys.stderr)
        todo.append((target, info, path))
    return todo


def existing_status(path: Path, model_id: str | None, keys: tuple[str, ...], attacks: tuple[str, ...]) -> tuple[str, str]:
    """`result_status` of a result file for this run (loaded once), and why a file complete for the
    original is redone ('' when it is not): it lacks keys this run writes, or its attack distortions
    came from another set of attacks (folders compared on them must have been attacked alike)."""
    if not path.is_file():
        return "missing", ""
    try:
        mat = load_mat(path)
    except Exception:  # noqa: BLE001 - any unreadable file counts as incomplete
        return "incomplete", ""
    status = mat_status(mat, model_id)
    if status != "complete":
        return status, ""
    if mat_status(mat, model_id, keys) == "incomplete":
        return "incomplete", f"has no {' or '.join(k for k in keys[2:])}"
    recorded = set(filter(None, mat_text(mat.get("attack_names", "")).split(",")))
    if attacks and recorded != set(attacks):
        return "incomplete", f"was attacked by other attacks than {','.join(attacks)}"
    return "complete", ""


def plan_items(settings: CollectSettings, test_x, test_y, images, logits, names, folder,
               counters, model_id: str | None = None) -> Iterator[WorkItem]:
    """Print each image's [DATAGEN] line (verbose) and yield its pending targets as work items.

    A generator, so that a local run prints each image's lines next to its results. Misclassified
    images and pairs whose file exists are counted in `counters` ("misclassified", "existing").
    """
    for no, ((image_id, user_target), pred) in enumerate(zip(images, logits), start=1):
        true_label, predicted = int(test_y[image_id]), int(np.argmax(pred))
        if not np.all(np.isfinite(pred)):
            print(f"[ERROR] logits of image {image_id} are NaN or Inf; skipping it", file=sys.stderr)
            counters["failed"].append((image_id, None))
            continue
        chosen = choose_targets(pred, settings.data.target_type, settings.sampling.seed, image_id, user_target)
        correct = predicted == true_label
        if settings.verbose:
            print(datagen_line(no, image_id, true_label, predicted, correct,
                               [t for t, _ in chosen] if correct else [], [i for _, i in chosen] if correct else [],
                               (names[true_label], names[predicted]) if names else None))
        if not correct:
            if settings.verbose:
                print(f"[WARNING] image {image_id} is misclassified (true {true_label}, predicted {predicted}); "
                      "skipping")
            counters.setdefault("misclassified", []).append(image_id)
            continue
        todo = pending_targets(settings, folder, image_id, true_label, chosen, model_id,
                               counters.setdefault("existing", []))
        # Order 2 collects target by target (no shared samples), so each target is an item of its own.
        for group in ([[t] for t in todo] if settings.sampling.order == 2 else [todo] if todo else []):
            yield WorkItem(no - 1, image_id, true_label, test_x[image_id], group)
