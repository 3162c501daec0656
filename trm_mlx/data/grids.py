"""ARC grid primitives shared by the ARC dataset builder and the ARC evaluator.

A built ARC example is a 30x30 canvas of tokens flattened row-major: 0 = PAD, 1 = EOS, colour c = token c + 2.
Augmented puzzles carry their augmentation in the name (``name|||t<tid>|||<10 digits>``) so the evaluator can
map every prediction back to the original puzzle's orientation and colours before voting.
"""

import hashlib
from collections.abc import Callable

import numpy as np

GRID_SIZE = 30
NAME_SEPARATOR = "|||"

# dihedral_transform(dihedral_transform(x, t), DIHEDRAL_INVERSE[t]) == x
DIHEDRAL_INVERSE = [0, 3, 2, 1, 4, 5, 6, 7]


def dihedral_transform(arr: np.ndarray, tid: int) -> np.ndarray:
    """One of the 8 symmetries of the square, numbered as the original builder numbers them."""
    if tid == 0:
        return arr
    if tid in (1, 2, 3):
        return np.rot90(arr, k=tid)
    if tid == 4:
        return np.fliplr(arr)
    if tid == 5:
        return np.flipud(arr)
    if tid == 6:
        return arr.T
    if tid == 7:
        return np.fliplr(np.rot90(arr, k=1))
    raise ValueError(f"dihedral transform id must be 0..7, got {tid}")


def grid_hash(grid: np.ndarray) -> str:
    """SHA-256 of the grid's shape (one byte per side) and its uint8 cells in C order."""
    if grid.ndim != 2 or grid.dtype != np.uint8:
        raise ValueError(f"grid_hash needs a 2-D uint8 grid, got {grid.ndim}-D {grid.dtype}")
    return hashlib.sha256(bytes(grid.shape) + grid.tobytes()).hexdigest()


def puzzle_hash(puzzle: dict[str, list[tuple[np.ndarray, np.ndarray]]]) -> str:
    """Order-independent hash of all (input, output) pairs of all parts; detects duplicate augmentations."""
    pair_hashes = sorted(
        f"{grid_hash(inp)}|{grid_hash(out)}" for examples in puzzle.values() for inp, out in examples
    )
    return hashlib.sha256("|".join(pair_hashes).encode()).hexdigest()


def _parse_augmentation(name: str) -> tuple[int, np.ndarray]:
    tid_field, mapping_field = name.split(NAME_SEPARATOR)[-2:]
    if len(tid_field) != 2 or tid_field[0] != "t" or tid_field[1] not in "01234567":
        raise ValueError(f"puzzle name {name!r}: transform field {tid_field!r} is not t0..t7")
    if sorted(mapping_field) != list("0123456789"):
        raise ValueError(f"puzzle name {name!r}: colour map {mapping_field!r} is not a permutation of 0..9")
    mapping = np.array([int(c) for c in mapping_field])
    return int(tid_field[1]), np.argsort(mapping).astype(np.uint8)


def inverse_aug(name: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """Original puzzle name and the function mapping an augmented grid back to the original's frame."""
    if NAME_SEPARATOR not in name:
        return name, lambda grid: grid
    tid, inverse_colours = _parse_augmentation(name)
    inverse_tid = DIHEDRAL_INVERSE[tid]
    return name.split(NAME_SEPARATOR)[0], lambda grid: inverse_colours[dihedral_transform(grid, inverse_tid)]


def crop(tokens: np.ndarray) -> np.ndarray:
    """Largest top-left rectangle of colour tokens (2..11) as a uint8 colour grid; may be 0x0.

    Each row's usable width is the running minimum of the rows' colour-run lengths from column 0; the rectangle
    with the largest area wins (the first one on ties), as the original evaluator chooses it.
    """
    if tokens.size != GRID_SIZE * GRID_SIZE:
        raise ValueError(f"crop needs {GRID_SIZE * GRID_SIZE} tokens, got {tokens.size}")
    grid = np.asarray(tokens).reshape(GRID_SIZE, GRID_SIZE)
    is_colour = (grid >= 2) & (grid <= 11)
    run_lengths = np.where(is_colour.all(axis=1), GRID_SIZE, np.argmin(is_colour, axis=1))
    widths = np.minimum.accumulate(run_lengths)
    areas = np.arange(1, GRID_SIZE + 1) * widths
    if areas.max() == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    best_row = int(np.argmax(areas))
    return (grid[: best_row + 1, : widths[best_row]] - 2).astype(np.uint8)
