"""The HTML report: which examples it shows, and what a real headless browser draws of it (checked on the
screenshot's pixels)."""

import shutil
import subprocess

import matplotlib.image
import numpy as np
import pytest
from test_eval_boards import MAZE, SOLUTION, maze_tokens, sudoku_cases, tokens

from trm_mlx.evaluation import render
from trm_mlx.evaluation.boards import KeptBoard
from trm_mlx.evaluation.arc import ARCEvaluator
from trm_mlx.evaluation.sudoku import SudokuEvaluator

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def screenshot(page, out_png, size=(1000, 1400)) -> np.ndarray:
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={out_png.parent / 'chromium-profile'}", "--force-device-scale-factor=1",
        "--force-color-profile=srgb", "--hide-scrollbars", f"--window-size={size[0]},{size[1]}",
        f"--screenshot={out_png}",
    ]  # fmt: skip
    subprocess.run([browser, *flags, page.as_uri()], check=True, capture_output=True, timeout=120)
    return np.round(matplotlib.image.imread(out_png)[..., :3] * 255).astype(np.int16)


def rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)


def colour_pixels(image: np.ndarray, colour: str, tolerance: int = 0) -> int:
    return int((np.abs(image - rgb(colour)) <= tolerance).all(axis=-1).sum())


def test_arc_report_in_headless_chromium(arc_eval_fixture, tmp_path):
    evaluator = ARCEvaluator(arc_eval_fixture.data_dir)
    for batch, outputs in arc_eval_fixture.batches:
        evaluator.update_batch(batch, outputs)
    metrics = evaluator.result()
    rows = render.arc_rows(arc_eval_fixture.test_puzzles, evaluator.submission, limit=4)
    assert [board.caption for board in rows[0].boards][:2] == ["input", "true output"]
    assert all(len(row.boards) == 4 for row in rows)  # input, true output, attempt 1, attempt 2
    page = render.write_report(tmp_path / "report", "ARC check", [render.Section("ARC", rows)], metrics)
    text = page.read_text()
    assert text.count("<svg") == sum(len(row.boards) for row in rows)
    assert "ARC/pass@2" in text and f"{metrics['ARC/pass@2']:.4g}" in text  # the metrics at the top

    shot = screenshot(page, tmp_path / "arc.png")
    # The first puzzles' grids use most of the palette; every colour shown must be an exact palette colour.
    shown = [colour_pixels(shot, c) for c in render.ARC_PALETTE]
    used = set(np.concatenate([np.ravel(pair["input"]) for p in list(arc_eval_fixture.test_puzzles.values())[:2]
                               for pair in p["test"]]).tolist())  # fmt: skip
    assert all(shown[c] >= 50 for c in used), (used, shown)
    assert sum(shown) > 0.1 * shot.shape[0] * shot.shape[1]


def test_board_report_marks_wrong_cells_in_headless_chromium(tmp_path):
    puzzle, swapped = sudoku_cases()[1][:2]
    shortest = [(0, 1), (1, 1), (2, 1), (2, 2), (2, 3), (1, 3), (0, 3)]
    maze_pred = maze_tokens(MAZE, shortest[:3] + [(2, 4), (1, 4)])  # wrong: cells (2,4), (1,4) and missing ones
    sections = [
        render.Section("Sudoku", render.board_rows("Sudoku", [KeptBoard(0, puzzle, swapped, tokens(SOLUTION))])),
        render.Section("Maze", render.board_rows("Maze", [KeptBoard(0, maze_tokens(MAZE), maze_pred,
                                                                    maze_tokens(MAZE, shortest))])),
    ]  # fmt: skip
    assert sections[0].rows[0].heading == "Sudoku example 0 · 2 wrong cells"
    metrics = {"all": {"accuracy": 0.5, "exact_accuracy": 0.25, "steps": 16.0}}
    page = render.write_report(tmp_path / "report", "boards", sections, metrics, selection="Showing the first 1.")
    text = page.read_text()
    for words in ("all · accuracy", "0.25", "clue", "filled in", "wrong", "blank", "wall", "goal", "Showing the first"):
        assert words in text, words

    shot = screenshot(page, tmp_path / "boards.png")
    cell = 26
    # Sudoku: two wrong cells filled light red; clue digits in black ink, filled-in digits in blue, as text.
    assert colour_pixels(shot, render.WRONG_FILL) > 2 * 0.5 * cell * cell
    assert colour_pixels(shot, render.PREDICTED_INK, tolerance=40) > 60
    assert colour_pixels(shot, render.INK, tolerance=40) > 500
    # Maze: walls, start, goal and path in their colours; wrong cells outlined in red.
    for token in (1, 3, 4, 5):
        assert colour_pixels(shot, render.MAZE_COLOURS[token]) > 10 * 10 // 2, token
    wrong = int((maze_pred != maze_tokens(MAZE, shortest)).sum())
    assert colour_pixels(shot, render.WRONG) >= wrong * 4 * 2 * (10 - 4)


def test_the_report_shows_the_first_the_wrong_or_a_random_sample():
    cases = sudoku_cases()  # exact, then four boards that are not
    batch = {"inputs": np.stack([c[0] for c in cases] * 4), "labels": np.stack([c[2] for c in cases] * 4)}
    outputs = {"preds": np.stack([c[1] for c in cases] * 4)}

    def kept(keep, seed=0):
        evaluator = SudokuEvaluator(keep_examples=3, keep=keep, seed=seed)
        evaluator.update_batch(batch, outputs)
        return [number for number, *_ in evaluator.examples]

    assert kept("first") == [0, 1, 2]
    assert kept("wrong") == [1, 2, 3]  # board 0 (and 5, 10, 15) is solved
    samples = [kept("random", seed) for seed in range(40)]
    assert all(len(s) == 3 and s == sorted(s) and len(set(s)) == 3 for s in samples)
    assert len({n for s in samples for n in s}) > 15  # every board can be drawn, not only the first ones
    with pytest.raises(ValueError, match="keep='worst'"):
        SudokuEvaluator(keep="worst")

    rows = render.board_rows("Sudoku", [KeptBoard(n, c[0], c[1], c[2]) for n, c in enumerate(cases)])
    assert [row.wrong for row in rows] == [False, True, True, True, True]
    assert all("ACT step" not in row.heading for row in rows)  # no steps in the outputs: none in the headings
    assert render.select_items(rows, "wrong", 2, is_wrong=lambda row: row.wrong) == rows[1:3]
    with pytest.raises(ValueError, match="render_select='all'"):
        render.select_items(rows, "all", 2, is_wrong=lambda row: row.wrong)


def test_a_kept_board_shows_the_act_steps_it_used():
    """Under halt=q each example's steps come with its outputs; the report's heading gives them."""
    cases = sudoku_cases()
    batch = {"inputs": np.stack([c[0] for c in cases]), "labels": np.stack([c[2] for c in cases])}
    outputs = {"preds": np.stack([c[1] for c in cases]), "steps": np.array([3, 16, 1, 7, 9])}
    evaluator = SudokuEvaluator(keep_examples=2, keep="wrong")
    evaluator.update_batch(batch, outputs)
    assert [(kept.number, kept.steps) for kept in evaluator.examples] == [(1, 16), (2, 1)]
    headings = [row.heading for row in render.board_rows("Sudoku", evaluator.examples)]
    assert headings[0].endswith(" · 16 ACT steps") and headings[1].endswith(" · 1 ACT step")
