"""scripts/slice_test_split.py: the first groups of the test split, whole, with the ARC task list cut to match and the
training split shared."""

import json

import numpy as np
import pytest

from scripts.slice_test_split import slice_test_split
from tiny_dataset import SEQ_LEN, VOCAB, write_split
from trm_mlx.data import PuzzleDataset

# Test split: three tasks (groups) of augmented puzzles; puzzle examples 2+1, 3, 1+1.
NAMES = ["<blank>", "a", "a|||t1|||0123456789", "b", "c", "c|||t2|||9876543210"]
TEST_IDS, TEST_PUZZLES, TEST_GROUPS = [1, 2, 3, 4, 5], [0, 2, 3, 6, 7, 8], [0, 2, 3, 5]


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    inputs = rng.integers(1, VOCAB, (8, SEQ_LEN)).astype(np.uint8)
    root = tmp_path / "data"
    write_split(root, "train", inputs, inputs[:, ::-1].copy(), [1, 3, 4], [0, 3, 6, 8], [0, 1, 2, 3], num_ids=6)
    write_split(root, "test", inputs, inputs[:, ::-1].copy(), TEST_IDS, TEST_PUZZLES, TEST_GROUPS, num_ids=6)
    (root / "identifiers.json").write_text(json.dumps(NAMES))
    tasks = {name: {"train": [], "test": [{"input": [[int(i)]], "output": [[int(i)]]}]} for i, name in
             enumerate("abc")}  # fmt: skip
    (root / "test_puzzles.json").write_text(json.dumps(tasks))
    return root


def test_the_first_groups_are_kept_whole_and_the_task_list_follows(dataset, tmp_path):
    out = slice_test_split(dataset, tmp_path / "sliced", groups=2)  # tasks a and b: 3 puzzles, 6 examples

    metadata = json.loads((out / "test" / "dataset.json").read_text())
    assert (metadata["total_groups"], metadata["total_puzzles"], metadata["mean_puzzle_examples"]) == (2, 3, 2.0)
    original = {field: np.load(dataset / "test" / f"all__{field}.npy") for field in ("inputs", "labels")}
    for field, array in original.items():
        np.testing.assert_array_equal(np.load(out / "test" / f"all__{field}.npy"), array[:6])
    np.testing.assert_array_equal(np.load(out / "test" / "all__group_indices.npy"), [0, 2, 3])
    np.testing.assert_array_equal(np.load(out / "test" / "all__puzzle_indices.npy"), [0, 2, 3, 6])
    np.testing.assert_array_equal(np.load(out / "test" / "all__puzzle_identifiers.npy"), [1, 2, 3])
    assert sorted(json.loads((out / "test_puzzles.json").read_text())) == ["a", "b"]

    rows = [batch for _, batch, _ in PuzzleDataset([str(out)], "test", 4).iter_test()]
    seen = np.concatenate([np.asarray(batch["inputs"]) for batch in rows])
    np.testing.assert_array_equal(seen[:6], original["inputs"][:6])  # every kept example once, then padding
    assert (seen[6:] == 0).all()
    train = PuzzleDataset([str(out)], "train", 4)
    assert train.metadata == PuzzleDataset([str(dataset)], "train", 4).metadata
    assert json.loads((out / "identifiers.json").read_text()) == NAMES


def test_keeping_every_group_or_more_is_refused(dataset, tmp_path):
    with pytest.raises(ValueError, match=r"test: set 'all' has 3 groups"):
        slice_test_split(dataset, tmp_path / "sliced", groups=3)
    assert not (tmp_path / "sliced").exists()
