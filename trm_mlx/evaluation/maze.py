"""Maze evaluator: exact accuracy against labels, plus checks that need no labels.

Tokens (spec §7.3): 1 = wall '#', 2 = open ' ', 3 = start 'S', 4 = goal 'G', 5 = path 'o'. A prediction is
`valid` when it keeps the maze (path marks only on open cells, everything else unchanged) and its path cells
connect S to G (4-neighbour moves); `shortest` when it is valid and uses exactly as many path cells as a
shortest route needs (the datasets' labels are shortest routes).
"""

import numpy as np

from trm_mlx.evaluation.boards import BoardEvaluator

WALL, OPEN, START, GOAL, PATH = 1, 2, 3, 4, 5


def _grow(reached: np.ndarray) -> np.ndarray:
    """`reached` plus its 4-neighbours, for a stack of boards `[N, n, n]`."""
    grown = reached.copy()
    grown[:, 1:] |= reached[:, :-1]
    grown[:, :-1] |= reached[:, 1:]
    grown[:, :, 1:] |= reached[:, :, :-1]
    grown[:, :, :-1] |= reached[:, :, 1:]
    return grown


def _steps_to_goal(start: np.ndarray, passable: np.ndarray, goal: np.ndarray) -> np.ndarray:
    """Fewest moves from start to goal through passable cells, per board; -1 where the goal is unreachable."""
    steps = np.full(len(start), -1)
    reached = start.copy()
    steps[(reached & goal).any(axis=(1, 2))] = 0
    for move in range(1, start[0].size + 1):
        grown = _grow(reached) & passable
        arrived = (grown & goal).any(axis=(1, 2)) & (steps < 0)
        steps[arrived] = move
        if (grown == reached).all():
            break
        reached = grown
    return steps


def maze_checks(inputs: np.ndarray, preds: np.ndarray) -> dict[str, np.ndarray]:
    """Per-board booleans `valid`, `shortest` for `[N, n*n]` token arrays."""
    inputs, preds = np.asarray(inputs), np.asarray(preds)
    side = int(round(inputs.shape[1] ** 0.5))
    layout_kept = np.where(inputs == OPEN, (preds == OPEN) | (preds == PATH), preds == inputs).all(axis=1)
    boards, maze = preds.reshape(-1, side, side), inputs.reshape(-1, side, side)
    start, goal = maze == START, maze == GOAL
    path_steps = _steps_to_goal(start, (boards == PATH) | goal, goal)
    valid = layout_kept & (path_steps > 0)
    fewest_steps = _steps_to_goal(start, maze != WALL, goal)
    shortest = valid & ((preds == PATH).sum(axis=1) == fewest_steps - 1)
    return {"valid": valid, "shortest": shortest}


def maze_wrong_cells(inputs: np.ndarray, preds: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """`[n, n]` cells to mark: those differing from the label, or without one: cells that change the maze."""
    side = int(round(inputs.size**0.5))
    if labels is not None:
        return (preds != labels).reshape(side, side)
    changed = np.where(inputs == OPEN, (preds != OPEN) & (preds != PATH), preds != inputs)
    return changed.reshape(side, side)


class MazeEvaluator(BoardEvaluator):
    name = "Maze"
    check_names = ("valid", "shortest")

    def checks(self, inputs: np.ndarray, preds: np.ndarray) -> dict[str, np.ndarray]:
        return maze_checks(inputs, preds)
