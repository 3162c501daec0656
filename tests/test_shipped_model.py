"""The Sudoku-Extreme solver shipped in models/: on the first puzzles of the stand-in test split (CPU, fp32, halting
where its Q head says so) it solves the puzzles it was measured to solve, and checks that need no labels (givens
kept, the rules of Sudoku) pass on exactly the answers that are solutions."""

from pathlib import Path

import numpy as np

import trm_mlx
from trm_mlx.data.builders.sudoku import read_sudoku_csv
from trm_mlx.evaluation.sudoku import sudoku_checks

MODEL = Path(__file__).resolve().parents[1] / "models" / "sudoku-extreme-mlp-t"
PUZZLES = 16
# Measured with this test's settings on an x86-64 CPU with OpenBLAS (models/sudoku-extreme-mlp-t/README.md). The fp32
# recursion amplifies rounding over its 16 ACT steps, so two late solutions depend on the BLAS kernels: with
# OpenBLAS's Haswell kernels puzzles 1, 4, 5, 8, 10, 11, 12, 13 and 14 are solved, with its Sandybridge kernels not 11,
# with its Cooperlake kernels not 11 but 0. The others are solved by all three and are asserted; 0 and 11 may go either
# way.
SOLVED = {1, 4, 5, 8, 10, 12, 13, 14}
EITHER_WAY = {0, 11}


def test_shipped_sudoku_model_solves_the_puzzles_it_was_measured_to_solve(shared_data, runtime):
    boards, solutions = read_sudoku_csv(shared_data / "sudoku-hard-test" / "test.csv", None)
    boards, solutions = boards[:PUZZLES].reshape(PUZZLES, 81), solutions[:PUZZLES].reshape(PUZZLES, 81)
    inputs = boards.astype(np.int64) + 1  # tokens: 1 blank, 2..10 the digits
    model = trm_mlx.load(MODEL, forward_dtype="float32", runtime=runtime)
    out = model.predict({"inputs": inputs, "puzzle_identifiers": np.zeros(PUZZLES, np.int32)}, halt="q")
    answers = out["preds"].astype(np.int64) - 1
    solved = np.flatnonzero((answers == solutions).all(axis=1)).tolist()
    assert SOLVED <= set(solved) <= SOLVED | EITHER_WAY, f"solved {solved}"
    # Judged without the labels, an answer is a Sudoku keeping the givens exactly where it equals the label (these
    # puzzles have one solution each), so the checks find the solved ones and no others.
    valid = sudoku_checks(inputs, answers + 1)["valid"]
    assert valid.tolist() == (answers == solutions).all(axis=1).tolist()
    assert (out["steps"][solved] < 16).all()  # the Q head said halt on every puzzle it solved
