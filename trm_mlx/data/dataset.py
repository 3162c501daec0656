"""Reader for datasets in the original on-disk format (§6), with the original's train and test iteration.

Batches are dicts of int32 NumPy arrays `inputs [B, S]`, `labels [B, S]` (ignore label -> -100) and
`puzzle_identifiers [B]`; iteration yields `(set_name, batch, global_effective_batch_size)` like the original.
"""

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from trm_mlx.data.metadata import DatasetFormatError, PuzzleDatasetMetadata, load_metadata, merge_metadata
from trm_mlx.data.prefetch import Prefetcher
from trm_mlx.data.sampler import SamplerState, SetIndex, TrainSampler

IGNORE_LABEL_ID = -100

Batch = dict[str, np.ndarray]


@dataclass
class SetArrays:
    """One `<set>` of one dataset path: inputs/labels memory-mapped, index arrays in memory."""

    inputs: np.ndarray
    labels: np.ndarray
    puzzle_identifiers: np.ndarray
    puzzle_indices: np.ndarray
    group_indices: np.ndarray


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise DatasetFormatError(f"{path}: not found")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DatasetFormatError(f"{path}: not a readable .npy array ({e})") from None


def _check_index(path: Path, index: np.ndarray, last: int, what: str) -> None:
    if index.ndim != 1 or len(index) < 1 or not np.issubdtype(index.dtype, np.integer):
        raise DatasetFormatError(f"{path}: expected a 1-D integer array, got {index.dtype} {index.shape}")
    if index[0] != 0 or index[-1] != last or np.any(np.diff(index) < 0):
        raise DatasetFormatError(
            f"{path}: must start at 0, never decrease and end at the number of {what} ({last}); "
            f"got first {index[0]}, last {index[-1]}"
        )


def _check_tokens(path: Path, tokens: np.ndarray, vocab_size: int, ignore: int | None = None) -> None:
    """Integer token ids in [0, vocab_size) (or ``ignore``), read in chunks of the memory-mapped array."""
    if not np.issubdtype(tokens.dtype, np.integer):
        raise DatasetFormatError(f"{path}: token ids must be integers, got {tokens.dtype}")
    rows = max(1, 2**24 // max(1, tokens.shape[1]))
    for start in range(0, len(tokens), rows):
        chunk = np.asarray(tokens[start : start + rows])
        if chunk.size == 0 or (chunk.min() >= 0 and chunk.max() < vocab_size):
            continue
        bad = (chunk < 0) | (chunk >= vocab_size)
        if ignore is not None:
            bad &= chunk != ignore
        if bad.any():
            row, column = np.argwhere(bad)[0]
            raise DatasetFormatError(f"{path}: row {start + row}, position {column}: token id {chunk[row, column]} "
                                     f"outside [0, vocab_size={vocab_size})")


def load_set(dataset_path: str | Path, split: str, set_name: str, metadata: PuzzleDatasetMetadata) -> SetArrays:
    folder = Path(dataset_path) / split

    def path(field: str) -> Path:
        return folder / f"{set_name}__{field}.npy"

    arrays = SetArrays(
        inputs=_load_array(path("inputs"), mmap=True),
        labels=_load_array(path("labels"), mmap=True),
        puzzle_identifiers=_load_array(path("puzzle_identifiers"), mmap=False),
        puzzle_indices=_load_array(path("puzzle_indices"), mmap=False),
        group_indices=_load_array(path("group_indices"), mmap=False),
    )
    for field in ("inputs", "labels"):
        shape = getattr(arrays, field).shape
        if len(shape) != 2 or shape[1] != metadata.seq_len:
            raise DatasetFormatError(f"{path(field)}: expected shape [N, seq_len={metadata.seq_len}], got {shape}")
    _check_tokens(path("inputs"), arrays.inputs, metadata.vocab_size)
    _check_tokens(path("labels"), arrays.labels, metadata.vocab_size, metadata.ignore_label_id)
    if arrays.labels.shape != arrays.inputs.shape:
        raise DatasetFormatError(
            f"{path('labels')}: shape {arrays.labels.shape} differs from inputs {arrays.inputs.shape}"
        )
    ids = arrays.puzzle_identifiers
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise DatasetFormatError(f"{path('puzzle_identifiers')}: expected a 1-D integer array, got {ids.shape}")
    if len(ids) and (ids.min() < 0 or ids.max() >= metadata.num_puzzle_identifiers):
        raise DatasetFormatError(
            f"{path('puzzle_identifiers')}: identifiers must lie in [0, num_puzzle_identifiers="
            f"{metadata.num_puzzle_identifiers}), got [{ids.min()}, {ids.max()}]"
        )
    _check_index(path("puzzle_indices"), arrays.puzzle_indices, len(arrays.inputs), "examples")
    if len(arrays.puzzle_indices) != len(ids) + 1:
        raise DatasetFormatError(
            f"{path('puzzle_indices')}: length {len(arrays.puzzle_indices)} must be number of puzzles + 1 "
            f"({len(ids) + 1})"
        )
    _check_index(path("group_indices"), arrays.group_indices, len(ids), "puzzles")
    return arrays


def load_identifiers(dataset_path: str | Path) -> list[str]:
    """`identifiers.json`: entry i is the puzzle name of identifier i ("<blank>" where unused)."""
    path = Path(dataset_path) / "identifiers.json"
    if not path.is_file():
        raise DatasetFormatError(f"{path}: not found")
    try:
        names = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetFormatError(f"{path}: expected a JSON list of puzzle names")
    return names


def collate(
    inputs: np.ndarray, labels: np.ndarray, puzzle_identifiers: np.ndarray, metadata: PuzzleDatasetMetadata,
    batch_size: int,
) -> Batch:
    """int32 arrays, ignore label -> -100, rows padded at the end up to `batch_size` (§6.6)."""
    batch = dict(
        inputs=inputs.astype(np.int32),
        labels=labels.astype(np.int32),
        puzzle_identifiers=puzzle_identifiers.astype(np.int32),
    )
    if metadata.ignore_label_id is not None:
        batch["labels"][batch["labels"] == metadata.ignore_label_id] = IGNORE_LABEL_ID
    missing = batch_size - len(batch["puzzle_identifiers"])
    if missing > 0:
        fill = dict(inputs=metadata.pad_id, labels=IGNORE_LABEL_ID, puzzle_identifiers=metadata.blank_identifier_id)
        batch = {
            k: np.concatenate([v, np.full((missing, *v.shape[1:]), fill[k], dtype=np.int32)]) for k, v in batch.items()
        }
    return batch


class PuzzleDataset:
    """One split of one or more datasets, iterated as the original `PuzzleDataset` does (§6.3-6.6).

    Set keys: for each set name, for each path i, `set` (i = 0) or `set + str(i)`. Identifiers are not offset
    between paths (build with `--puzzle-identifiers-start` for that), as in the original.
    """

    def __init__(
        self,
        paths: list[str] | str,
        split: str,
        global_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epochs_per_iter: int = 1,
        prefetch_depth: int = 2,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if global_batch_size % world_size != 0:
            raise ValueError(f"global_batch_size {global_batch_size} must be a multiple of world_size {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} must lie in [0, world_size={world_size})")
        self.paths = [str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
        self.split = split
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.rank = rank
        self.prefetch_depth = prefetch_depth

        per_path = [load_metadata(p, split) for p in self.paths]
        self.metadata = merge_metadata(self.paths, per_path)
        self.sets: dict[str, SetArrays] = {}
        for set_name in self.metadata.sets:
            for i, path in enumerate(self.paths):
                self.sets[set_name if i == 0 else f"{set_name}{i}"] = load_set(path, split, set_name, per_path[i])

        self._sampler = TrainSampler(
            [SetIndex(s.puzzle_indices, s.group_indices) for s in self.sets.values()],
            global_batch_size, seed, epochs_per_iter,
        )
        self._state = self._sampler.initial_state()

    # ---- training ----------------------------------------------------------------------------------------------

    def iter_train(self) -> Iterator[tuple[str, Batch, int]]:
        """One iteration (each set `epochs_per_iter` times); continues a partly consumed or restored iteration."""
        names = list(self.sets)
        start_state = self._state

        def produce():
            for sampled, after in self._sampler.iterate(start_state):
                if sampled is None:
                    yield None, after
                    return
                arrays = self.sets[names[sampled.set_index]]
                local = slice(self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size)
                rows, puzzles = sampled.example_rows[local], sampled.puzzle_rows[local]
                batch = collate(
                    arrays.inputs[rows], arrays.labels[rows], arrays.puzzle_identifiers[puzzles], self.metadata,
                    self.local_batch_size,
                )
                yield (names[sampled.set_index], batch, len(sampled.example_rows)), after

        with Prefetcher(produce(), self.prefetch_depth) as batches:
            for item, after in batches:
                self._state = after  # the state of what the consumer has received, not of the prefetcher
                if item is None:
                    return
                yield item

    @property
    def between_iterations(self) -> bool:
        """Whether the last batch taken ended an iteration (or none was taken): the next batch starts a new one."""
        return self._state.set_index is None

    @cached_property
    def fingerprint(self) -> str:
        """A digest of the data: the metadata, each set's index arrays, and the shapes, dtypes and 64 evenly spaced
        rows of its inputs and labels. Two builds that differ (another augmentation seed, another subsample) differ
        here with near certainty; it costs milliseconds, not a read of the memory-mapped arrays."""
        digest = hashlib.sha256(self.metadata.model_dump_json().encode())
        for name, arrays in self.sets.items():
            digest.update(name.encode())
            for field in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices"):
                array = getattr(arrays, field)
                digest.update(f"{field}{array.dtype}{array.shape}".encode())
                if field in ("inputs", "labels"):
                    array = array[np.linspace(0, len(array) - 1, num=min(64, len(array)), dtype=np.int64)]
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def state_dict(self) -> dict:
        """Training position (plain JSON-able values); `load_state_dict` of it makes iteration resume exactly."""
        return self._state.to_dict()

    def load_state_dict(self, state: dict) -> None:
        expected = {"iters", "set_index", "groups_consumed", "example_rng"}
        if not isinstance(state, dict) or set(state) != expected:
            raise ValueError(f"dataset state must be a dict with keys {sorted(expected)}, got {state!r:.200}")
        restored = SamplerState(
            iters=int(state["iters"]),
            set_index=None if state["set_index"] is None else int(state["set_index"]),
            groups_consumed=int(state["groups_consumed"]),
            example_rng=dict(state["example_rng"]),
        )
        self._sampler.validate_state(restored)
        self._state = restored

    # ---- evaluation --------------------------------------------------------------------------------------------

    def iter_test(self) -> Iterator[tuple[str, Batch, int]]:
        """Every example once, in order, in global batches; this rank's slice padded to the local batch size."""

        def produce():
            for set_name, arrays in self.sets.items():
                n = len(arrays.inputs)
                for start in range(0, n, self.global_batch_size):
                    end = min(n, start + self.global_batch_size)
                    local_start = start + self.rank * self.local_batch_size
                    local_end = min(start + (self.rank + 1) * self.local_batch_size, end)
                    rows = np.arange(local_start, max(local_start, local_end))
                    puzzles = np.searchsorted(arrays.puzzle_indices, rows, side="right") - 1
                    batch = collate(
                        arrays.inputs[local_start:local_end], arrays.labels[local_start:local_end],
                        arrays.puzzle_identifiers[puzzles], self.metadata, self.local_batch_size,
                    )
                    yield set_name, batch, end - start

        with Prefetcher(produce(), self.prefetch_depth) as batches:
            yield from batches
