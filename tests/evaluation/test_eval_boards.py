"""Sudoku and Maze checks on hand-made boards, with hand-derived verdicts."""

import numpy as np

from trm_mlx.evaluation.maze import MazeEvaluator, maze_checks
from trm_mlx.evaluation.sudoku import SudokuEvaluator, sudoku_checks, sudoku_wrong_cells

# A valid Sudoku: cell (r, c) holds (3r + r//3 + c) mod 9 + 1.
SOLUTION = np.array([[(3 * r + r // 3 + c) % 9 + 1 for c in range(9)] for r in range(9)])


def tokens(board: np.ndarray) -> np.ndarray:
    return board.reshape(-1) + 1  # digit d -> token d + 1; blank (0) -> 1


def sudoku_cases():
    clues = SOLUTION.copy()
    clues[:, 3:] = 0  # clues: the first three columns
    puzzle = tokens(clues)
    swapped = SOLUTION.copy()
    swapped[0, 4], swapped[0, 5] = swapped[0, 5], swapped[0, 4]  # rows still fine; two columns and boxes are not
    relabelled = np.where(SOLUTION == 1, 2, np.where(SOLUTION == 2, 1, SOLUTION))  # a valid grid, clues broken
    with_blank = SOLUTION.copy()
    with_blank[8, 8] = 0
    empty_puzzle = tokens(np.zeros((9, 9), int))
    return [
        # (inputs, prediction, label, valid, consistent, clues kept, exact)
        (puzzle, tokens(SOLUTION), tokens(SOLUTION), True, True, True, True),
        (puzzle, tokens(swapped), tokens(SOLUTION), False, False, True, False),
        (puzzle, tokens(relabelled), tokens(SOLUTION), False, True, False, False),
        (puzzle, tokens(with_blank), tokens(SOLUTION), False, False, True, False),
        (empty_puzzle, tokens(relabelled), tokens(SOLUTION), True, True, True, False),  # another solution
    ]


def test_sudoku_checks_hand_made_boards():
    cases = sudoku_cases()
    inputs = np.stack([c[0] for c in cases])
    checks = sudoku_checks(inputs, np.stack([c[1] for c in cases]))
    assert checks["valid"].tolist() == [c[3] for c in cases]
    assert checks["consistent"].tolist() == [c[4] for c in cases]
    assert checks["clues_kept"].tolist() == [c[5] for c in cases]

    evaluator = SudokuEvaluator()
    padding = np.zeros((2, 81), int)  # padding rows of a collated batch are skipped
    batch = {
        "inputs": np.concatenate([inputs, padding]),
        "labels": np.concatenate([np.stack([c[2] for c in cases]), np.full((2, 81), -100)]),
    }
    evaluator.update_batch(batch, {"preds": np.concatenate([np.stack([c[1] for c in cases]), padding + 3])})
    assert evaluator.result() == {
        "Sudoku/valid": 2 / 5,
        "Sudoku/consistent": 3 / 5,
        "Sudoku/clues_kept": 4 / 5,
        "Sudoku/exact_accuracy": 1 / 5,
        "Sudoku/count": 5,
    }
    evaluator.begin_eval()
    evaluator.update_batch({"inputs": inputs}, {"preds": np.stack([c[1] for c in cases])})
    assert "Sudoku/exact_accuracy" not in evaluator.result()  # no labels, no exact accuracy


def test_sudoku_wrong_cells():
    puzzle, swapped = sudoku_cases()[1][:2]
    with_label = sudoku_wrong_cells(puzzle, swapped, tokens(SOLUTION))
    assert sorted(zip(*np.nonzero(with_label))) == [(0, 4), (0, 5)]
    # Without a label: the two swapped digits clash in their columns with cells lower down.
    without_label = sudoku_wrong_cells(puzzle, swapped, None)
    assert without_label[0, 4] and without_label[0, 5] and without_label.sum() == 4


MAZE = [
    "S.#.G",
    "..#..",
    ".....",
    "####.",
    ".....",
]


def maze_tokens(rows, path=()):
    codes = {"#": 1, ".": 2, "S": 3, "G": 4}
    board = np.array([[codes[ch] for ch in row] for row in rows])
    for r, c in path:
        board[r, c] = 5
    return board.ravel()


def test_maze_checks_hand_made_boards():
    # Fewest moves S(0,0) -> G(0,4) is 8 (down to row 2 around the wall), so a shortest path marks 7 cells.
    shortest = [(0, 1), (1, 1), (2, 1), (2, 2), (2, 3), (1, 3), (0, 3)]
    other_shortest = [(1, 0), (2, 0), (2, 1), (2, 2), (2, 3), (2, 4), (1, 4)]
    detour = [(0, 1), (1, 1), (1, 0), (2, 0), (2, 1), (2, 2), (2, 3), (1, 3), (0, 3)]
    broken = [cell for cell in shortest if cell != (2, 2)]
    through_wall = [(0, 1), (0, 2), (0, 3)]
    inputs = maze_tokens(MAZE)
    preds = [maze_tokens(MAZE, p) for p in (shortest, other_shortest, detour, broken, through_wall)]
    checks = maze_checks(np.stack([inputs] * 5), np.stack(preds))
    assert checks["valid"].tolist() == [True, True, True, False, False]
    assert checks["shortest"].tolist() == [True, True, False, False, False]

    evaluator = MazeEvaluator()
    label = maze_tokens(MAZE, shortest)
    evaluator.update_batch(
        {"inputs": np.stack([inputs] * 5 + [np.zeros(25, int)]), "labels": np.stack([label] * 6)},
        {"preds": np.stack(preds + [label])},
    )
    assert evaluator.result() == {
        "Maze/valid": 3 / 5,
        "Maze/shortest": 2 / 5,
        "Maze/exact_accuracy": 1 / 5,
        "Maze/count": 5,
    }
