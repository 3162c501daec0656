"""The original training/test data loader (`puzzle_dataset.py`), written plainly after spec §6.3-6.6.

This is the independent reference for trm_mlx's loader. Like the original it draws the examples of each puzzle
from NumPy's *global* legacy RNG (`np.random.choice`); the original seeds that RNG only indirectly (PyTorch's
DataLoader worker seeding), so callers seed it themselves with `np.random.seed(...)`.
"""

import json
import os
from typing import List

import numpy as np
import pydantic
import torch
from torch.utils.data import IterableDataset, get_worker_info

from legacy.dataset.common import PuzzleDatasetMetadata
from legacy.models.losses import IGNORE_LABEL_ID


class PuzzleDatasetConfig(pydantic.BaseModel):
    seed: int
    dataset_paths: List[str]
    global_batch_size: int
    test_set_mode: bool
    epochs_per_iter: int
    rank: int
    num_replicas: int


def _sample_batch(rng, group_order, puzzle_indices, group_indices, start_index, global_batch_size):
    """Pack one global batch: for each next group pick one puzzle (rng), then up to all of its examples."""
    example_rows = []
    puzzle_of_row = []
    filled = 0
    while start_index < group_order.size and filled < global_batch_size:
        group = group_order[start_index]
        puzzle = rng.integers(group_indices[group], group_indices[group + 1])
        start_index += 1

        first_row = puzzle_indices[puzzle]
        n_examples = int(puzzle_indices[puzzle + 1] - first_row)
        n_taken = min(n_examples, global_batch_size - filled)

        puzzle_of_row.append(np.full(n_taken, puzzle, dtype=np.int32))
        example_rows.append(first_row + np.random.choice(n_examples, n_taken, replace=False))
        filled += n_taken
    return start_index, np.concatenate(example_rows), np.concatenate(puzzle_of_row)


class PuzzleDataset(IterableDataset):
    def __init__(self, config: PuzzleDatasetConfig, split: str = "train"):
        super().__init__()
        self.config = config
        self.split = split

        metadatas = [self._load_metadata(path) for path in config.dataset_paths]
        first = metadatas[0]
        for other in metadatas[1:]:
            assert other.seq_len == first.seq_len
            assert other.vocab_size == first.vocab_size
            assert other.pad_id == first.pad_id
            assert other.ignore_label_id == first.ignore_label_id
            assert other.blank_identifier_id == first.blank_identifier_id
            assert other.sets == first.sets
            assert other.num_puzzle_identifiers == first.num_puzzle_identifiers
        weighted_examples = 0
        total_puzzles = 0
        total_groups = 0
        num_identifiers = 0
        for metadata in metadatas:
            weighted_examples += metadata.mean_puzzle_examples * metadata.total_puzzles
            total_puzzles += metadata.total_puzzles
            total_groups += metadata.total_groups
            num_identifiers += metadata.num_puzzle_identifiers
        self.metadata = PuzzleDatasetMetadata(
            seq_len=first.seq_len,
            vocab_size=first.vocab_size,
            pad_id=first.pad_id,
            ignore_label_id=first.ignore_label_id,
            blank_identifier_id=first.blank_identifier_id,
            num_puzzle_identifiers=num_identifiers,
            total_groups=total_groups,
            mean_puzzle_examples=weighted_examples / total_puzzles,
            total_puzzles=total_puzzles,
            sets=first.sets,
        )

        assert config.global_batch_size % config.num_replicas == 0
        self.local_batch_size = config.global_batch_size // config.num_replicas

        self._data = None
        self._iters = 0

    def _load_metadata(self, dataset_path) -> PuzzleDatasetMetadata:
        with open(os.path.join(dataset_path, self.split, "dataset.json")) as f:
            return PuzzleDatasetMetadata(**json.load(f))

    def _lazy_load_dataset(self):
        if self._data is not None:
            return
        memory_mapped = {"inputs": True, "labels": True, "puzzle_identifiers": False, "puzzle_indices": False,
                         "group_indices": False}
        self._data = {}
        for set_name in self.metadata.sets:
            for i, dataset_path in enumerate(self.config.dataset_paths):
                key = set_name if i == 0 else set_name + str(i)
                self._data[key] = {
                    field: np.load(os.path.join(dataset_path, self.split, f"{set_name}__{field}.npy"),
                                   mmap_mode="r" if mmapped else None)
                    for field, mmapped in memory_mapped.items()
                }

    def _collate_batch(self, batch):
        batch = {k: v.astype(np.int32) for k, v in batch.items()}
        if self.metadata.ignore_label_id is not None:
            batch["labels"][batch["labels"] == self.metadata.ignore_label_id] = IGNORE_LABEL_ID
        n_rows = batch["puzzle_identifiers"].size
        if n_rows < self.local_batch_size:
            pad = self.local_batch_size - n_rows
            fill = {"inputs": self.metadata.pad_id, "labels": IGNORE_LABEL_ID,
                    "puzzle_identifiers": self.metadata.blank_identifier_id}
            batch = {k: np.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1), constant_values=fill[k])
                     for k, v in batch.items()}
        return {k: torch.from_numpy(v) for k, v in batch.items()}

    def _iter_test(self):
        for set_name, data in self._data.items():
            n_examples = len(data["inputs"])
            start = 0
            while start < n_examples:
                end = min(n_examples, start + self.config.global_batch_size)
                local_start = start + self.config.rank * self.local_batch_size
                local_end = min(start + (self.config.rank + 1) * self.local_batch_size, end)

                puzzle_of_row = []
                puzzle = np.searchsorted(data["puzzle_indices"], local_start, side="right") - 1
                for row in range(local_start, local_end):
                    while puzzle + 1 < len(data["puzzle_indices"]) and row >= data["puzzle_indices"][puzzle + 1]:
                        puzzle += 1
                    puzzle_of_row.append(puzzle)

                yield set_name, self._collate_batch({
                    "inputs": data["inputs"][local_start:local_end],
                    "labels": data["labels"][local_start:local_end],
                    "puzzle_identifiers": data["puzzle_identifiers"][puzzle_of_row],
                }), end - start
                start += self.config.global_batch_size

    def _iter_train(self):
        for set_name, data in self._data.items():
            self._iters += 1
            rng = np.random.Generator(np.random.Philox(seed=self.config.seed + self._iters))
            n_groups = data["group_indices"].size - 1
            group_order = np.concatenate([rng.permutation(n_groups) for _ in range(self.config.epochs_per_iter)])

            start_index = 0
            while start_index < group_order.size:
                start_index, rows, puzzles = _sample_batch(
                    rng, group_order, data["puzzle_indices"], data["group_indices"], start_index,
                    self.config.global_batch_size,
                )
                global_effective_batch_size = puzzles.size
                if global_effective_batch_size < self.config.global_batch_size:
                    break  # drop the last, incomplete batch

                local = slice(self.config.rank * self.local_batch_size, (self.config.rank + 1) * self.local_batch_size)
                yield set_name, self._collate_batch({
                    "inputs": data["inputs"][rows[local]],
                    "labels": data["labels"][rows[local]],
                    "puzzle_identifiers": data["puzzle_identifiers"][puzzles[local]],
                }), global_effective_batch_size

    def __iter__(self):
        worker_info = get_worker_info()
        assert worker_info is None or worker_info.num_workers == 1, "one data worker at most"
        self._lazy_load_dataset()
        if self.config.test_set_mode:
            yield from self._iter_test()
        else:
            yield from self._iter_train()
