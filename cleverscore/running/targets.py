"""Which target classes to score for an image (spec section 4, the `--target_type` bit mask)."""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np

from cleverscore.errors import UsageError

TOP2, RANDOM, LEAST, USER, ALL = 1, 2, 4, 8, 16
DEFAULT_TARGET_TYPE = TOP2 | RANDOM | LEAST | USER


@dataclass(frozen=True)
class IdsEntry:
    """A row of an `--ids` file: an image id and optionally a user target class."""

    id: int
    target: int | None


def choose_targets(logits: np.ndarray, target_type: int, seed: int, image_id: int,
                   user_target: int | None = None) -> list[tuple[int, str]]:
    """(target class, info) pairs for one image, in the original's order.

    bit4 gives every class but the predicted one (`class<j>`); otherwise least likely, top-2
    and random (a class other than the predicted, least likely and top-2 ones, drawn from a
    generator seeded by (seed, image id), so a resumed run picks the same one), then the
    user's target from the `--ids` file.
    """
    logits = np.asarray(logits)
    num_classes = len(logits)
    predicted = int(np.argmax(logits))
    if target_type & ALL:
        return [(j, f"class{j}") for j in range(num_classes) if j != predicted]
    least = int(np.argmin(logits))
    top2 = int(np.argsort(logits)[-2])
    chosen = []
    if target_type & LEAST:
        chosen.append((least, "least"))
    if target_type & TOP2:
        chosen.append((top2, "top2"))
    if target_type & RANDOM:
        excluded = {predicted, least, top2}
        candidates = [j for j in range(num_classes) if j not in excluded]
        if candidates:
            rng = np.random.default_rng([seed, image_id])
            chosen.append((int(rng.choice(candidates)), "random"))
    if target_type & USER and user_target is not None:
        chosen.append((int(user_target), "user"))
    return chosen


def read_ids_file(path: str, need_targets: bool, num_classes: int | None, num_images: int) -> list[IdsEntry]:
    """Parse a tab-separated ids file with an `id` column and, for bit3, a `target` column."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except OSError as err:
        raise UsageError(f"cannot read `ids` file {path}: {err.strerror or err}") from err
    except (csv.Error, UnicodeDecodeError) as err:
        raise UsageError(f"malformed `ids` file {path}: {err}") from err
    if not rows or "id" not in rows[0]:
        raise UsageError(f"malformed `ids` file {path}: needs a tab-separated header with an 'id' column")
    if need_targets and "target" not in rows[0]:
        raise UsageError(f"malformed `ids` file {path}: `target_type` bit 3 needs a 'target' column")
    entries = []
    for line, row in enumerate(rows, start=2):
        try:
            image_id = int(row["id"])
            target = int(row["target"]) if need_targets else None
        except (TypeError, ValueError):
            raise UsageError(f"malformed `ids` file {path}: line {line} is not integer id/target") from None
        if not 0 <= image_id < num_images:
            raise UsageError(f"`ids` file {path} line {line}: image id {image_id} is outside 0..{num_images - 1}")
        if target is not None and num_classes is not None and not 0 <= target < num_classes:
            raise UsageError(f"`ids` file {path} line {line}: target {target} is outside 0..{num_classes - 1}")
        entries.append(IdsEntry(image_id, target))
    return entries
