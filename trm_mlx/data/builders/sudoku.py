"""Sudoku builder (§7.2): the original `build_sudoku_dataset.py`, plus an optional seed for reproducible output.

Tokens: 0 = PAD (padding only), 1 = blank cell, 2..10 = digits 1..9. Every variant is a puzzle of one example with
identifier 0; an original puzzle and its augmented variants form one group.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trm_mlx.data.builders.common import (
    atomic_output_dir,
    legacy_rng,
    read_puzzle_csv,
    save_split,
    source_csv_path,
    write_json,
)
from trm_mlx.data.metadata import DatasetFormatError, PuzzleDatasetMetadata

QUESTION = re.compile(r"[0-9.]{81}")
ANSWER = re.compile(r"[0-9]{81}")


@dataclass
class SudokuBuildConfig:
    source_repo: str = "sapientinc/sudoku-extreme"
    output_dir: str = "data/sudoku-extreme-full"
    subsample_size: int | None = None
    min_difficulty: int | None = None
    num_aug: int = 0
    seed: int | None = None  # None: unseeded, as the original


def read_sudoku_csv(path: Path, min_difficulty: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Boards and solutions `[n, 9, 9]` uint8 (0 = blank), rows with rating >= min_difficulty."""
    questions, answers = [], []
    for line, question, answer, rating in read_puzzle_csv(path):
        if min_difficulty is not None:
            try:
                if int(rating) < min_difficulty:
                    continue
            except ValueError:
                raise DatasetFormatError(f"{path}:{line}: rating {rating!r} is not an integer") from None
        if not QUESTION.fullmatch(question):
            raise DatasetFormatError(f"{path}:{line}: question must be 81 characters of 0-9 or '.', got {question!r}")
        if not ANSWER.fullmatch(answer):
            raise DatasetFormatError(f"{path}:{line}: answer must be 81 digits 0-9, got {answer!r}")
        questions.append(question)
        answers.append(answer)
    if not questions:  # checked before anything is written, so an existing dataset at the output stays
        kept = "" if min_difficulty is None else f" with rating >= {min_difficulty}"
        raise DatasetFormatError(f"{path}: no puzzles{kept}")

    def to_boards(rows: list[str]) -> np.ndarray:
        text = "".join(rows).replace(".", "0").encode()
        return (np.frombuffer(text, dtype=np.uint8) - ord("0")).reshape(len(rows), 9, 9)

    return to_boards(questions), to_boards(answers)


@dataclass
class SudokuShuffle:
    digit_map: np.ndarray  # [10] int64, 0 (blank) fixed
    transpose: bool
    row_perm: np.ndarray  # [9]: new row i is old row row_perm[i]
    col_perm: np.ndarray  # [9]


def draw_shuffle(rng: np.random.RandomState) -> SudokuShuffle:
    """A validity-preserving Sudoku symmetry; the draws and their order are the original's."""
    digit_map = np.concatenate([np.zeros(1, np.int64), rng.permutation(np.arange(1, 10, dtype=np.int64))])
    transpose = rng.rand() < 0.5
    bands = rng.permutation(3)
    row_perm = np.concatenate([band * 3 + rng.permutation(3) for band in bands])
    stacks = rng.permutation(3)
    col_perm = np.concatenate([stack * 3 + rng.permutation(3) for stack in stacks])
    return SudokuShuffle(digit_map, bool(transpose), row_perm, col_perm)


def apply_shuffle(board: np.ndarray, shuffle: SudokuShuffle) -> np.ndarray:
    if shuffle.transpose:
        board = board.T
    return shuffle.digit_map[board[np.ix_(shuffle.row_perm, shuffle.col_perm)]]


def convert_split(
    boards: np.ndarray, solutions: np.ndarray, num_aug: int, subsample_size: int | None, rng, desc: str
) -> tuple[dict[str, np.ndarray], PuzzleDatasetMetadata]:
    if subsample_size is not None and subsample_size < len(boards):
        chosen = rng.choice(len(boards), subsample_size, replace=False)
        boards, solutions = boards[chosen], solutions[chosen]
    n, variants = len(boards), 1 + num_aug
    # uint8 without augmentation, int64 with it: the dtypes NumPy's promotion gives the original
    dtype = np.uint8 if num_aug == 0 else np.int64
    inputs = np.zeros((n, variants, 9, 9), dtype)
    labels = np.zeros((n, variants, 9, 9), dtype)
    inputs[:, 0], labels[:, 0] = boards, solutions
    if num_aug:
        for i in tqdm(range(n), desc=desc, unit="puzzle"):
            for v in range(1, variants):
                shuffle = draw_shuffle(rng)
                inputs[i, v] = apply_shuffle(boards[i], shuffle)
                labels[i, v] = apply_shuffle(solutions[i], shuffle)
    arrays = dict(
        inputs=inputs.reshape(n * variants, 81) + 1,
        labels=labels.reshape(n * variants, 81) + 1,
        puzzle_identifiers=np.zeros(n * variants, np.int32),
        puzzle_indices=np.arange(n * variants + 1, dtype=np.int32),
        group_indices=np.arange(0, n * variants + 1, variants, dtype=np.int32),
    )
    metadata = PuzzleDatasetMetadata(
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        vocab_size=10 + 1,
        seq_len=81,
        num_puzzle_identifiers=1,
        total_groups=n,
        mean_puzzle_examples=1.0,
        total_puzzles=n,
        sets=["all"],
    )
    return arrays, metadata


def write_sudoku_splits(
    out: Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    num_aug: int,
    subsample_size: int | None,
    seed: int | None,
) -> None:
    """Into folder `out`: train (subsampled, augmented) then test from `split -> (boards, solutions)`, drawing from
    one legacy RNG stream seeded once before the train split."""
    rng = legacy_rng(seed)
    for split, (boards, solutions) in splits.items():
        train = split == "train"
        arrays, metadata = convert_split(
            boards, solutions, num_aug if train else 0, subsample_size if train else None, rng, f"augment {split}"
        )
        save_split(out / split, arrays, metadata)
    write_json(out / "identifiers.json", ["<blank>"])


def build_sudoku(config: SudokuBuildConfig) -> Path:
    splits = {
        split: read_sudoku_csv(source_csv_path(config.source_repo, split), config.min_difficulty)
        for split in ("train", "test")
    }
    with atomic_output_dir(config.output_dir) as out:
        write_sudoku_splits(out, splits, config.num_aug, config.subsample_size, config.seed)
    return Path(config.output_dir)
