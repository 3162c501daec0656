"""Dataset metadata and ARC grid helpers, as the original keeps them in dataset/common.py and
dataset/build_arc_dataset.py (plus the evaluator's crop). Written loop-for-loop after spec §6.2, §7.1 and §8."""

import hashlib
from typing import List, Optional

import numpy as np
import pydantic

ARC_MAX_GRID_SIZE = 30

DIHEDRAL_INVERSE = [0, 3, 2, 1, 4, 5, 6, 7]


class PuzzleDatasetMetadata(pydantic.BaseModel):
    pad_id: int
    ignore_label_id: Optional[int]
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    total_puzzles: int
    sets: List[str]


def dihedral_transform(arr: np.ndarray, tid: int) -> np.ndarray:
    if tid == 0:
        return arr
    elif tid == 1:
        return np.rot90(arr, k=1)
    elif tid == 2:
        return np.rot90(arr, k=2)
    elif tid == 3:
        return np.rot90(arr, k=3)
    elif tid == 4:
        return np.fliplr(arr)
    elif tid == 5:
        return np.flipud(arr)
    elif tid == 6:
        return arr.T
    elif tid == 7:
        return np.fliplr(np.rot90(arr, k=1))
    else:
        return arr


def inverse_dihedral_transform(arr: np.ndarray, tid: int) -> np.ndarray:
    return dihedral_transform(arr, DIHEDRAL_INVERSE[tid])


def arc_grid_to_np(grid: List[List[int]]) -> np.ndarray:
    arr = np.array(grid)
    assert arr.ndim == 2
    assert arr.shape[0] <= ARC_MAX_GRID_SIZE and arr.shape[1] <= ARC_MAX_GRID_SIZE
    assert np.all((arr >= 0) & (arr <= 9))
    return arr.astype(np.uint8)


def grid_hash(grid: np.ndarray) -> str:
    assert grid.ndim == 2
    assert grid.dtype == np.uint8
    buffer = [x.to_bytes(1, byteorder="big") for x in grid.shape]
    buffer.append(grid.tobytes())
    return hashlib.sha256(b"".join(buffer)).hexdigest()


def puzzle_hash(puzzle: dict) -> str:
    """puzzle: part name -> list of (input, output) uint8 grids."""
    hashes = []
    for _part, examples in puzzle.items():
        for inp, out in examples:
            hashes.append(f"{grid_hash(inp)}|{grid_hash(out)}")
    hashes.sort()
    return hashlib.sha256("|".join(hashes).encode()).hexdigest()


def inverse_aug(name: str):
    if "|||" not in name:
        return name, lambda x: x

    trans_id, perm = name.split("|||")[-2:]
    trans_id = int(trans_id[1:])
    inv_perm = np.argsort(list(perm)).astype(np.uint8)

    def _map_grid(grid: np.ndarray):
        return inv_perm[inverse_dihedral_transform(grid, trans_id)]

    return name.split("|||")[0], _map_grid


def crop(grid: np.ndarray) -> np.ndarray:
    grid = grid.reshape(30, 30)

    max_area = 0
    max_size = (0, 0)
    nr, nc = grid.shape

    num_c = nc
    for num_r in range(1, nr + 1):
        for c in range(1, num_c + 1):
            x = grid[num_r - 1, c - 1]
            if (x < 2) | (x > 11):
                num_c = c - 1
                break

        area = num_r * num_c
        if area > max_area:
            max_area = area
            max_size = (num_r, num_c)

    return (grid[: max_size[0], : max_size[1]] - 2).astype(np.uint8)
