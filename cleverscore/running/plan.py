"""Planning a collection: which images, which targets of each, and which of them still need a file."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cleverscore.errors import UsageError
from cleverscore.log_lines import datagen_line
from cleverscore.mat_files import MatName, is_complete, result_folder
from cleverscore.models.user import model_label
from cleverscore.running.targets import USER, choose_targets, read_ids_file
from cleverscore.settings import CollectSettings, DataSettings


@dataclass
class WorkItem:
    """One image with its pending targets: what a worker, in this process or on Ray, computes."""

    seq: int  # position of the image in the run, as printed in the [STATS] lines
    image_id: int
    true_label: int
    x0: np.ndarray
    todo: list[tuple[int, str, Path]]  # (target, info, result file)


def output_folder(settings: CollectSettings) -> Path:
    """`<save>/<data name>_<model name>`, known before anything loads."""
    data = model_label(str(settings.data.data_path)) if settings.data.data_path else settings.model.dataset
    model = model_label(str(settings.model.model_path)) if settings.model.model_path else settings.model.model_name
    return result_folder(settings.save, data, model)


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


def pending_targets(settings: CollectSettings, folder: Path, image_id: int, true_label: int, chosen) -> list:
    """(target, info, path) for the targets of an image whose result file is missing."""
    s = settings.sampling
    todo = []
    for target, info in chosen:
        name = MatName(s.nsamps, s.niters, image_id, true_label, target, info, settings.model.activation, s.order)
        path = folder / name.filename
        if not settings.overwrite and is_complete(path):
            print(f"file {path} already exists. Skipping this sample...")
        else:
            todo.append((target, info, path))
    return todo


def plan_items(settings: CollectSettings, test_x, test_y, images, logits, names, folder,
               counters) -> Iterator[WorkItem]:
    """Print each image's [DATAGEN] line and yield its pending targets as work items.

    A generator, so that a local run prints each image's lines next to its results.
    """
    for no, ((image_id, user_target), pred) in enumerate(zip(images, logits), start=1):
        true_label, predicted = int(test_y[image_id]), int(np.argmax(pred))
        if not np.all(np.isfinite(pred)):
            print(f"[ERROR] logits of image {image_id} are NaN or Inf; skipping it", file=sys.stderr)
            counters["failed"].append((image_id, None))
            continue
        chosen = choose_targets(pred, settings.data.target_type, settings.sampling.seed, image_id, user_target)
        correct = predicted == true_label
        print(datagen_line(no, image_id, true_label, predicted, correct,
                           [t for t, _ in chosen] if correct else [], [i for _, i in chosen] if correct else [],
                           (names[true_label], names[predicted]) if names else None))
        if not correct:
            print(f"[WARNING] image {image_id} is misclassified (true {true_label}, predicted {predicted}); skipping")
            continue
        todo = pending_targets(settings, folder, image_id, true_label, chosen)
        # Order 2 collects target by target (no shared samples), so each target is an item of its own.
        for group in ([[t] for t in todo] if settings.sampling.order == 2 else [todo] if todo else []):
            yield WorkItem(no - 1, image_id, true_label, test_x[image_id], group)
