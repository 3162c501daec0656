"""Sudoku evaluator: exact accuracy against labels, plus checks that need no labels.

Tokens (spec §7.2): 0 = PAD (padding rows only), 1 = blank cell, 2..10 = digits 1..9. A prediction is `valid`
when every row, column and 3x3 box holds each digit once (`consistent`) and every given clue is kept
(`clues_kept`); a valid board need not equal the label when a puzzle has several solutions.
"""

import numpy as np

from trm_mlx.evaluation.boards import BoardEvaluator


def sudoku_checks(inputs: np.ndarray, preds: np.ndarray) -> dict[str, np.ndarray]:
    """Per-board booleans `valid`, `consistent`, `clues_kept` for `[N, 81]` token arrays."""
    inputs, preds = np.asarray(inputs), np.asarray(preds)
    one_hot = (preds.reshape(-1, 9, 9) - 1)[..., None] == np.arange(1, 10)  # [N, row, col, digit]
    rows_ok = (one_hot.sum(axis=2) == 1).all(axis=(1, 2))
    cols_ok = (one_hot.sum(axis=1) == 1).all(axis=(1, 2))
    boxes_ok = (one_hot.reshape(-1, 3, 3, 3, 3, 9).sum(axis=(2, 4)) == 1).all(axis=(1, 2, 3))
    consistent = rows_ok & cols_ok & boxes_ok
    clues_kept = ((inputs < 2) | (inputs == preds)).all(axis=1)
    return {"valid": consistent & clues_kept, "consistent": consistent, "clues_kept": clues_kept}


def sudoku_wrong_cells(inputs: np.ndarray, preds: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """`[9, 9]` cells to mark: those differing from the label, or without one: blanks, clashes, overwritten clues."""
    if labels is not None:
        return (preds != labels).reshape(9, 9)
    board = preds.reshape(9, 9)
    boxes = board.reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(3, 3, 9)
    wrong = np.zeros((9, 9), dtype=bool)
    for r in range(9):
        for c in range(9):
            digit = board[r, c]
            clashes = (board[r] == digit).sum() + (board[:, c] == digit).sum() + (boxes[r // 3, c // 3] == digit).sum()
            wrong[r, c] = digit < 2 or clashes > 3  # the cell itself is counted once in each of the three
    return wrong | ((inputs >= 2) & (inputs != preds)).reshape(9, 9)


class SudokuEvaluator(BoardEvaluator):
    name = "Sudoku"
    check_names = ("valid", "consistent", "clues_kept")

    def checks(self, inputs: np.ndarray, preds: np.ndarray) -> dict[str, np.ndarray]:
        return sudoku_checks(inputs, preds)
