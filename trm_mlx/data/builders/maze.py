"""Maze builder (§7.3): the original `build_maze_dataset.py`, plus an optional seed for the train subsample.

Tokens: 0 = PAD, then '#' wall, ' ' open, 'S' start, 'G' goal, 'o' path = 1..5. With `aug`, every training maze
becomes a group of its 8 dihedral transforms.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trm_mlx.data.builders.common import (
    atomic_output_dir,
    legacy_rng,
    read_puzzle_csv,
    save_split,
    source_csv_path,
    write_json,
)
from trm_mlx.data.grids import dihedral_transform
from trm_mlx.data.metadata import DatasetFormatError, PuzzleDatasetMetadata

CHARSET = "# SGo"


@dataclass
class MazeBuildConfig:
    source_repo: str = "sapientinc/maze-30x30-hard-1k"
    output_dir: str = "data/maze-30x30-hard-1k"
    subsample_size: int | None = None
    aug: bool = False
    seed: int | None = None  # None: unseeded, as the original


def read_maze_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Mazes and solved mazes `[n, side, side]` of ASCII codes; the side comes from the first row."""
    questions, answers, side = [], [], None
    for line, question, answer, _rating in read_puzzle_csv(path):
        if side is None:
            side = math.isqrt(len(question))
        if len(question) != side * side or len(answer) != side * side:
            raise DatasetFormatError(
                f"{path}:{line}: question and answer must be {side}x{side}={side * side} characters "
                f"(the first row's size), got {len(question)} and {len(answer)}"
            )
        bad = set(question + answer) - set(CHARSET)
        if bad:
            raise DatasetFormatError(f"{path}:{line}: characters {sorted(bad)} are not in the maze charset {CHARSET!r}")
        questions.append(question)
        answers.append(answer)
    if side is None:
        raise DatasetFormatError(f"{path}: no mazes")

    def to_grids(rows: list[str]) -> np.ndarray:
        return np.frombuffer("".join(rows).encode("ascii"), dtype=np.uint8).reshape(len(rows), side, side)

    return to_grids(questions), to_grids(answers)


def convert_split(mazes: np.ndarray, solutions: np.ndarray, aug: bool, subsample_size: int | None, rng):
    if subsample_size is not None and subsample_size < len(mazes):
        chosen = rng.choice(len(mazes), subsample_size, replace=False)
        mazes, solutions = mazes[chosen], solutions[chosen]
    n, side = len(mazes), mazes.shape[1]
    transforms = range(8) if aug else range(1)
    token_of = np.zeros(256, np.uint8)
    token_of[[ord(c) for c in CHARSET]] = np.arange(1, len(CHARSET) + 1)

    def tokens(grids: np.ndarray) -> np.ndarray:
        variants = [np.stack([dihedral_transform(g, tid) for tid in transforms]) for g in grids]
        return token_of[np.stack(variants).reshape(n * len(transforms), side * side)]

    n_puzzles = n * len(transforms)
    arrays = dict(
        inputs=tokens(mazes),
        labels=tokens(solutions),
        puzzle_identifiers=np.zeros(n_puzzles, np.int32),
        puzzle_indices=np.arange(n_puzzles + 1, dtype=np.int32),
        group_indices=np.arange(0, n_puzzles + 1, len(transforms), dtype=np.int32),
    )
    metadata = PuzzleDatasetMetadata(
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        vocab_size=len(CHARSET) + 1,
        seq_len=side * side,
        num_puzzle_identifiers=1,
        total_groups=n,
        mean_puzzle_examples=1.0,
        total_puzzles=n,
        sets=["all"],
    )
    return arrays, metadata


def build_maze(config: MazeBuildConfig) -> Path:
    splits = {split: read_maze_csv(source_csv_path(config.source_repo, split)) for split in ("train", "test")}
    rng = legacy_rng(config.seed)
    with atomic_output_dir(config.output_dir) as out:
        for split, (mazes, solutions) in splits.items():
            train = split == "train"
            arrays, metadata = convert_split(
                mazes, solutions, config.aug and train, config.subsample_size if train else None, rng
            )
            save_split(out / split, arrays, metadata)
        write_json(out / "identifiers.json", ["<blank>"])
    return Path(config.output_dir)
