"""`dataset.json` of a split: the original's `PuzzleDatasetMetadata`, with readable errors and the merge rule
for training on several dataset paths at once."""

import json
from pathlib import Path

import pydantic


class PuzzleDatasetMetadata(pydantic.BaseModel):
    """Field order is the key order of the original's `dataset.json` files."""

    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    total_puzzles: int
    sets: list[str]


# Fields every merged path must agree on (§6.5); the original asserts num_puzzle_identifiers too, then sums it.
MERGE_MUST_AGREE = (
    "seq_len",
    "vocab_size",
    "pad_id",
    "ignore_label_id",
    "blank_identifier_id",
    "sets",
    "num_puzzle_identifiers",
)


class DatasetFormatError(ValueError):
    """A dataset folder or source file is missing, malformed or inconsistent; the message names the file."""


def load_metadata(dataset_path: str | Path, split: str) -> PuzzleDatasetMetadata:
    path = Path(dataset_path) / split / "dataset.json"
    if not path.is_file():
        raise DatasetFormatError(
            f"{path}: not found (is {dataset_path} a built dataset with a '{split}' split? `trm-build-data` builds "
            "one: docs/DATA.md)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: not valid JSON ({e})") from None
    try:
        return PuzzleDatasetMetadata.model_validate(data)
    except pydantic.ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise DatasetFormatError(f"{path}: invalid dataset metadata ({problems})") from None


def merge_metadata(paths: list[str], metadatas: list[PuzzleDatasetMetadata]) -> PuzzleDatasetMetadata:
    """One metadata for several dataset paths: agreeing fields kept, counts summed, mean weighted by puzzles."""
    if not metadatas:
        raise ValueError("merge_metadata needs at least one dataset path")
    first = metadatas[0]
    for path, meta in zip(paths[1:], metadatas[1:]):
        for field in MERGE_MUST_AGREE:
            if getattr(meta, field) != getattr(first, field):
                raise DatasetFormatError(
                    f"{path}: {field} = {getattr(meta, field)!r} differs from {getattr(first, field)!r} in "
                    f"{paths[0]}; datasets trained together must agree on {', '.join(MERGE_MUST_AGREE)}"
                )
    total_puzzles = sum(m.total_puzzles for m in metadatas)
    if total_puzzles == 0:
        raise DatasetFormatError(f"{', '.join(paths)}: total_puzzles is 0 (empty dataset)")
    return first.model_copy(
        update=dict(
            num_puzzle_identifiers=sum(m.num_puzzle_identifiers for m in metadatas),
            total_groups=sum(m.total_groups for m in metadatas),
            total_puzzles=total_puzzles,
            mean_puzzle_examples=sum(m.mean_puzzle_examples * m.total_puzzles for m in metadatas) / total_puzzles,
        )
    )
