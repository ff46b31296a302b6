"""Target classes follow the --target_type mask (spec section 4)."""

from __future__ import annotations

import numpy as np
import pytest

from cleverscore.errors import UsageError
from cleverscore.running.targets import ALL, LEAST, RANDOM, TOP2, USER, choose_targets, read_ids_file

LOGITS = np.array([0.5, 3.0, -2.0, 1.0, 9.0, 0.0, 2.5, -1.0, 0.2, 0.1])  # predicted 4, top2 1, least 2


def test_default_mask_gives_least_top2_random_in_that_order():
    chosen = choose_targets(LOGITS, TOP2 | RANDOM | LEAST, seed=1215, image_id=0)
    assert [i for _, i in chosen] == ["least", "top2", "random"]
    assert chosen[0][0] == 2 and chosen[1][0] == 1
    assert chosen[2][0] not in (4, 1, 2)


def test_random_target_is_seeded_by_seed_and_image():
    picks = {choose_targets(LOGITS, RANDOM, 1215, i)[0][0] for i in range(30)}
    assert len(picks) > 2
    assert choose_targets(LOGITS, RANDOM, 1215, 7) == choose_targets(LOGITS, RANDOM, 1215, 7)


def test_all_classes_bit_gives_every_other_class():
    chosen = choose_targets(LOGITS, ALL, 1, 0)
    assert [t for t, _ in chosen] == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert chosen[0][1] == "class0"


def test_user_targets_come_from_the_ids_file(tmp_path):
    ids = tmp_path / "ids.tsv"
    ids.write_text("id\ttarget\n3\t5\n8\t0\n")
    entries = read_ids_file(str(ids), True, 10, 100)
    assert [(e.id, e.target) for e in entries] == [(3, 5), (8, 0)]
    assert choose_targets(LOGITS, USER, 1, 3, user_target=5) == [(5, "user")]


@pytest.mark.parametrize("content,message", [
    ("image\n1\n", "'id' column"),
    ("id\ttarget\nx\t1\n", "not integer"),
    ("id\ttarget\n1\t12\n", "target 12 is outside"),
    ("id\ttarget\n500\t1\n", "image id 500 is outside"),
    ("id\n1\n", "'target' column"),
])
def test_malformed_ids_files_are_refused(tmp_path, content, message):
    ids = tmp_path / "ids.tsv"
    ids.write_text(content)
    with pytest.raises(UsageError, match=message):
        read_ids_file(str(ids), True, 10, 100)
