"""The HTML report, rendered by a real headless browser and checked on the screenshot's pixels."""

import shutil
import subprocess
import zlib

import numpy as np
import pytest
from png_reader import decode_png
from test_eval_boards import MAZE, SOLUTION, maze_tokens, sudoku_cases, tokens

from trm_mlx.evaluation import render
from trm_mlx.evaluation.arc import ARCEvaluator

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
    return decode_png(out_png.read_bytes())[..., :3]


def colour_pixels(image: np.ndarray, colour) -> int:
    return int((image == np.asarray(colour, dtype=np.uint8)).all(axis=-1).sum())


def test_png_encoder_round_trip():
    image = np.random.default_rng(0).integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    png = render.encode_png(image)
    assert (decode_png(png) == image).all()
    # The pixel data is one zlib stream of rows, each prefixed by filter type 0.
    idat = png[png.index(b"IDAT") + 4 : png.index(b"IEND") - 8]
    assert zlib.decompress(idat) == b"".join(b"\x00" + row.tobytes() for row in image)


def test_arc_report_in_headless_chromium(arc_eval_fixture, tmp_path):
    evaluator = ARCEvaluator(arc_eval_fixture.data_dir)
    for batch, outputs in arc_eval_fixture.batches:
        evaluator.update_batch(batch, outputs)
    evaluator.result()
    rows = render.arc_rows(arc_eval_fixture.test_puzzles, evaluator.submission, limit=4)
    assert [caption for caption, _ in rows[0][1]][:2] == ["input", "true output"]
    assert all(len(panels) == 4 for _, panels in rows)  # input, true output, attempt 1, attempt 2
    page = render.write_report(tmp_path / "report", "ARC check", {"ARC": rows})
    assert len(list((tmp_path / "report" / "img").glob("*.png"))) == sum(len(p) for _, p in rows)

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
    sections = {
        "Sudoku": render.board_rows("Sudoku", [(puzzle, swapped, tokens(SOLUTION))], limit=1),
        "Maze": render.board_rows("Maze", [(maze_tokens(MAZE), maze_pred, maze_tokens(MAZE, shortest))], limit=1),
    }
    assert sections["Sudoku"][0][0].endswith("2 wrong cells")
    page = render.write_report(tmp_path / "report", "boards", sections)

    shot = screenshot(page, tmp_path / "boards.png")
    # Sudoku: two wrong cells filled light red; clue digits in black ink, predicted digits in blue.
    cell = 27
    assert colour_pixels(shot, render.WRONG_FILL) > 2 * 0.5 * cell * cell
    assert colour_pixels(shot, render.PREDICTED_INK) > 50 and colour_pixels(shot, render.INK) > 500
    # Maze: walls, start, goal and path in their colours; wrong cells outlined in red.
    for token in (1, 3, 4, 5):
        assert colour_pixels(shot, render.MAZE_COLOURS[token]) > 9 * 9 // 2, token
    wrong = int((maze_pred != maze_tokens(MAZE, shortest)).sum())
    assert colour_pixels(shot, render.WRONG) >= wrong * 4 * 2 * (9 - 2)
