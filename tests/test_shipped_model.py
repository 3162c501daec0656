"""The Sudoku-Extreme solver shipped in models/: on the first puzzles of the stand-in test split (CPU, fp32, halting
where its Q head says so) it solves the puzzles it was measured to solve, and each answer keeps the givens and obeys
the rules of Sudoku (checked without the labels)."""

from pathlib import Path

import numpy as np

import trm_mlx
from trm_mlx.data.builders.sudoku import read_sudoku_csv

MODEL = Path(__file__).resolve().parents[1] / "models" / "sudoku-extreme-mlp-t"
PUZZLES = 16
# Measured with this test's settings on an x86-64 CPU with OpenBLAS (models/sudoku-extreme-mlp-t/README.md). The fp32
# recursion amplifies rounding over its 16 ACT steps, so two late solutions depend on the BLAS kernels: with
# OpenBLAS's Haswell kernels puzzles 1, 4, 5, 8, 10, 11, 12, 13 and 14 are solved, with its Sandybridge kernels not 11,
# with its Cooperlake kernels not 11 but 0. The others are solved by all three and are asserted; 0 and 11 may go either
# way.
SOLVED = {1, 4, 5, 8, 10, 12, 13, 14}
EITHER_WAY = {0, 11}


def obeys_sudoku(board: np.ndarray) -> bool:
    digits = set(range(1, 10))
    boxes = board.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)
    return all(set(line) == digits for group in (board, board.T, boxes) for line in group)


def test_obeys_sudoku_rejects_a_broken_box():
    solved = (np.add.outer(3 * (np.arange(9) % 3) + np.arange(9) // 3, np.arange(9)) % 9) + 1
    assert obeys_sudoku(solved)
    shifted = np.roll(solved, 1, axis=0)  # rows and columns still hold 1..9, the boxes no longer do
    assert not obeys_sudoku(shifted)


def test_shipped_sudoku_model_solves_the_puzzles_it_was_measured_to_solve(shared_data, runtime):
    boards, solutions = read_sudoku_csv(shared_data / "sudoku-hard-test" / "test.csv", None)
    boards, solutions = boards[:PUZZLES].reshape(PUZZLES, 81), solutions[:PUZZLES].reshape(PUZZLES, 81)
    model = trm_mlx.load(MODEL, forward_dtype="float32", runtime=runtime)
    out = model.predict({"inputs": boards + 1, "puzzle_identifiers": np.zeros(PUZZLES, np.int32)}, halt="q")
    answers = out["preds"].astype(np.int64) - 1
    solved = np.flatnonzero((answers == solutions).all(axis=1)).tolist()
    assert SOLVED <= set(solved) <= SOLVED | EITHER_WAY, f"solved {solved}"
    for i in solved:  # a solution found, not only one matching the label
        given = boards[i] > 0
        assert (answers[i][given] == boards[i][given]).all() and obeys_sudoku(answers[i].reshape(9, 9))
    assert (out["steps"][solved] < 16).all()  # the Q head said halt on every puzzle it solved
