"""A browsable HTML report of an evaluation: the run's metrics, a legend, and the puzzles drawn as inline SVG.

ARC: each test input beside its true output and the submitted attempts, in the ARC palette. Sudoku: input,
prediction and label boards, digits as text (clues black, filled-in digits blue, wrong cells red). Maze: the same
boards in colours, wrong cells outlined in red. Which examples appear is chosen by ``select``: the first ones, the
wrong ones, or a random sample (seeded).
"""

import random
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np

from trm_mlx.atomic import write_atomically
from trm_mlx.evaluation.boards import KeptBoard
from trm_mlx.evaluation.maze import GOAL, OPEN, PATH, START, WALL, maze_wrong_cells
from trm_mlx.evaluation.sudoku import sudoku_wrong_cells

SELECTIONS = ("first", "wrong", "random")

# The ARC viewer's colours for 0..9: black, blue, red, green, yellow, grey, magenta, orange, azure, maroon.
ARC_PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00", "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF",
               "#870C25")  # fmt: skip
WHITE = "#FFFFFF"
WRONG = "#FF0000"
WRONG_FILL = "#FFC8C8"
INK = "#101010"
PREDICTED_INK = "#1F4FD0"
MAZE_COLOURS = {WALL: "#303030", OPEN: "#FFFFFF", START: "#2ECC40", GOAL: "#0074D9", PATH: "#FF851B"}
LEGENDS = {
    "Sudoku": [(WHITE, INK, "clue"), (WHITE, PREDICTED_INK, "filled in"), (WRONG_FILL, PREDICTED_INK, "wrong"),
               (WHITE, None, "blank")],  # fmt: skip
    "Maze": [(MAZE_COLOURS[WALL], None, "wall"), (MAZE_COLOURS[OPEN], None, "open"), (MAZE_COLOURS[START], None, "start"),
             (MAZE_COLOURS[GOAL], None, "goal"), (MAZE_COLOURS[PATH], None, "path"), (WRONG, None, "wrong (outlined)")],
    "ARC": [(colour, None, str(i)) for i, colour in enumerate(ARC_PALETTE)],
}  # fmt: skip


@dataclass
class Cell:
    fill: str
    text: str = ""
    ink: str = INK
    outlined: bool = False  # wrong cell of a colour board: a red outline


@dataclass
class Board:
    caption: str
    cells: list[list[Cell]]
    cell_px: int
    box: int = 0  # thick lines every `box` cells (Sudoku's 3x3 boxes)


@dataclass
class Row:
    heading: str
    boards: list[Board]
    wrong: bool  # not solved: what `select=wrong` keeps


@dataclass
class Section:
    name: str
    rows: list[Row] = field(default_factory=list)


def arc_board(caption: str, grid, cell_px: int = 14) -> Board:
    grid = np.asarray(grid, dtype=np.int64).reshape(len(grid), -1) if len(grid) else np.zeros((0, 0), np.int64)
    return Board(caption, [[Cell(ARC_PALETTE[v]) for v in row] for row in grid.tolist()], cell_px)


def sudoku_board(caption: str, inputs: np.ndarray, board: np.ndarray, wrong: np.ndarray | None = None) -> Board:
    """A 9x9 board of tokens (1 blank, 2..10 digits 1..9)."""
    tokens, clues = np.asarray(board).reshape(9, 9), np.asarray(inputs).reshape(9, 9) >= 2
    wrong = np.zeros((9, 9), bool) if wrong is None else wrong
    cells = [[Cell(WRONG_FILL if wrong[r, c] else WHITE, str(int(tokens[r, c]) - 1) if tokens[r, c] >= 2 else "",
                   INK if clues[r, c] else PREDICTED_INK) for c in range(9)] for r in range(9)]  # fmt: skip
    return Board(caption, cells, 26, box=3)


def maze_board(caption: str, board: np.ndarray, wrong: np.ndarray | None = None) -> Board:
    side = int(round(np.asarray(board).size ** 0.5))
    tokens = np.asarray(board).reshape(side, side)
    wrong = np.zeros((side, side), bool) if wrong is None else wrong
    cells = [[Cell(MAZE_COLOURS.get(int(tokens[r, c]), WHITE), outlined=bool(wrong[r, c])) for c in range(side)]
             for r in range(side)]  # fmt: skip
    return Board(caption, cells, 10)


def select_items(items: list, select: str, limit: int, is_wrong, seed: int = 0) -> list:
    """The first ``limit`` items, the first ``limit`` wrong ones, or ``limit`` at random (seeded, in order)."""
    if select not in SELECTIONS:
        raise ValueError(f"render_select={select!r}: expected one of {', '.join(SELECTIONS)}")
    if select == "wrong":
        items = [item for item in items if is_wrong(item)]
    elif select == "random" and len(items) > limit:
        items = [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), limit))]
    return items[:limit]


def arc_rows(test_puzzles: dict, submission: dict, limit: int, select: str = "first") -> list[Row]:
    """One row per test input: input, true output, attempts (marked right or wrong); ``limit`` puzzles chosen by
    ``select`` (a puzzle counts as wrong when one of its test inputs is not solved)."""
    puzzles = []  # the rows of each puzzle
    for name in test_puzzles:
        entries, rows = submission.get(name, []), []
        for i, pair in enumerate(test_puzzles[name]["test"]):
            entry = entries[i] if i < len(entries) else {}
            boards = [arc_board("input", pair["input"]), arc_board("true output", pair["output"])]
            solved = False
            for key in sorted(entry):
                correct = entry[key] == pair["output"]
                solved |= correct
                boards.append(arc_board(f"{key.replace('_', ' ')} {'✓' if correct else '✗'}", entry[key]))
            rows.append(Row(f"{name} · test {i} · {'solved' if solved else 'not solved'}", boards, not solved))
        puzzles.append(rows)
    chosen = select_items(puzzles, select, limit, is_wrong=lambda rows: any(row.wrong for row in rows))
    return [row for rows in chosen for row in rows]


def board_rows(kind: str, examples: list[KeptBoard]) -> list[Row]:
    """One row per kept Sudoku or Maze example (the evaluator chose them): input, prediction with its wrong cells
    marked, and the label when known; the heading gives the ACT steps the example used when they are known."""
    rows = []
    for number, inputs, preds, labels, steps in examples:
        if kind == "Sudoku":
            wrong = sudoku_wrong_cells(inputs, preds, labels)
            boards = [sudoku_board("input", inputs, inputs), sudoku_board("prediction", inputs, preds, wrong)]
            if labels is not None:
                boards.append(sudoku_board("label", inputs, labels))
        elif kind == "Maze":
            wrong = maze_wrong_cells(inputs, preds, labels)
            boards = [maze_board("input", inputs), maze_board("prediction", preds, wrong)]
            if labels is not None:
                boards.append(maze_board("label", labels))
        else:
            raise ValueError(f"no board pictures for {kind!r} (Sudoku or Maze)")
        count = int(wrong.sum())
        heading = f"{kind} example {number} · {count} wrong cell{'s' * (count != 1)}"
        if steps is not None:
            heading += f" · {steps} ACT step{'s' * (steps != 1)}"
        rows.append(Row(heading, boards, count > 0))
    return rows


def metric_rows(metrics: dict) -> list[tuple[str, str]]:
    """(name, value) lines of the run's metrics: each set's accuracies and ACT steps, then the evaluators'."""
    lines = []
    for name, value in metrics.items():
        if name == "act_steps":
            lines.append(("examples by ACT steps used", ", ".join(f"{steps}: {count}" for steps, count in value.items())))
        elif isinstance(value, dict):
            for key in ("accuracy", "exact_accuracy", "steps", "q_halt_accuracy"):
                if key in value:
                    lines.append((f"{name} · {key.replace('_', ' ')}", f"{value[key]:.4g}"))
        elif isinstance(value, float):
            lines.append((name, f"{value:.4g}"))
        elif isinstance(value, int):
            lines.append((name, str(value)))
    return lines


_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("trm_mlx.evaluation", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def write_report(report_dir: str | Path, title: str, sections: list[Section], metrics: dict | None = None,
                 selection: str = "") -> Path:  # fmt: skip
    """Write ``report_dir/index.html`` (one self-contained file) atomically; returns its path."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    page = _TEMPLATES.get_template("report.html.j2").render(
        title=title, sections=sections, metrics=metric_rows(metrics or {}), legends=LEGENDS, selection=selection
    )
    return write_atomically(report_dir / "index.html", page)
