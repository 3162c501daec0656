"""A generated Sudoku dataset, so the default training job has real puzzles on a fresh machine without network.
Its puzzles have few enough blanks that a small model learns to solve them whole within minutes on a CPU. It is
written in the original format by the Sudoku builder (same augmentation, same files)."""

import json
import random
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trm_mlx.data.builders.common import atomic_output_dir, write_json
from trm_mlx.data.builders.sudoku import write_sudoku_splits
from trm_mlx.data.sudoku_generator import generate_puzzle

SETTINGS_FILE = "builtin_sudoku.json"
GENERATOR_VERSION = 2  # bump when generated puzzles change for the same settings
DEFAULT_PATH = "data/builtin-sudoku"
DEFAULT_NUM_TRAIN, DEFAULT_NUM_TEST, DEFAULT_NUM_AUG, DEFAULT_SEED = 1000, 128, 3, 0
DEFAULT_BLANKS = (10, 30)


def generate_split(
    rng: random.Random, count: int, blanks: tuple[int, int], desc: str
) -> tuple[np.ndarray, np.ndarray]:
    """`count` unique-solution puzzles, each with a number of blanks drawn uniformly from `blanks` (low, high), and
    their solutions as `[count, 9, 9]` uint8 boards (0 = blank)."""
    pairs = [generate_puzzle(rng, rng.randint(*blanks)) for _ in tqdm(range(count), desc=desc, unit="puzzle")]
    boards = np.array([p for p, _ in pairs], dtype=np.uint8).reshape(count, 9, 9)
    solutions = np.array([s for _, s in pairs], dtype=np.uint8).reshape(count, 9, 9)
    return boards, solutions


def ensure_builtin_sudoku(
    path: str | Path = DEFAULT_PATH,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_test: int = DEFAULT_NUM_TEST,
    num_aug: int = DEFAULT_NUM_AUG,
    seed: int = DEFAULT_SEED,
    blanks: tuple[int, int] = DEFAULT_BLANKS,
) -> Path:
    """Build the generated Sudoku dataset at `path` unless one with these settings is already there.

    Puzzles come from a `random.Random(seed)` generator (train first, then test); augmentation draws from
    `RandomState(seed)` exactly as `trm-build-data sudoku --seed` does. `blanks` (low, high): each puzzle's blank
    cells, fewer where no further clue can be removed (81, 81: minimal puzzles, 22-26 clues). With the defaults:
    1,000 train puzzles x 4 variants, 128 test puzzles, 10 to 30 blanks each, a few seconds to generate.
    """
    if num_train < 1 or num_test < 1 or num_aug < 0:
        raise ValueError(f"need num_train >= 1, num_test >= 1, num_aug >= 0; got {num_train}, {num_test}, {num_aug}")
    low, high = blanks
    if not 1 <= low <= high <= 81:
        raise ValueError(f"blanks {low}, {high}: need 1 <= low <= high <= 81")
    path = Path(path)
    settings = dict(generator=GENERATOR_VERSION, num_train=num_train, num_test=num_test, num_aug=num_aug, seed=seed,
                    blanks=[low, high])  # fmt: skip
    settings_path = path / SETTINGS_FILE
    if settings_path.is_file():
        if json.loads(settings_path.read_text()) == settings:
            return path
    elif path.exists() and any(path.iterdir()):
        raise FileExistsError(
            f"{path}: exists and is not a built-in Sudoku dataset (no {SETTINGS_FILE}); not replacing it"
        )

    rng = random.Random(seed)
    splits = {
        "train": generate_split(rng, num_train, (low, high), "generate train sudoku"),
        "test": generate_split(rng, num_test, (low, high), "generate test sudoku"),
    }
    with atomic_output_dir(path) as out:
        write_sudoku_splits(out, splits, num_aug, None, seed)
        write_json(out / SETTINGS_FILE, settings)
    return path
