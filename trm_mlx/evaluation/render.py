"""A browsable HTML report of evaluated puzzles, with boards drawn as PNG files (pure NumPy + zlib).

ARC: each test input beside its true output and the two submitted attempts, in the ARC palette. Sudoku and Maze:
input, prediction and label boards, with wrong cells marked in red.
"""

import html
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from trm_mlx.evaluation.maze import GOAL, OPEN, PATH, START, WALL, maze_wrong_cells
from trm_mlx.evaluation.sudoku import sudoku_wrong_cells

# The ARC viewer's colours for 0..9: black, blue, red, green, yellow, grey, magenta, orange, azure, maroon.
ARC_PALETTE = np.array(
    [
        [0x00, 0x00, 0x00],
        [0x00, 0x74, 0xD9],
        [0xFF, 0x41, 0x36],
        [0x2E, 0xCC, 0x40],
        [0xFF, 0xDC, 0x00],
        [0xAA, 0xAA, 0xAA],
        [0xF0, 0x12, 0xBE],
        [0xFF, 0x85, 0x1B],
        [0x7F, 0xDB, 0xFF],
        [0x87, 0x0C, 0x25],
    ],
    dtype=np.uint8,
)
GRID_LINE = np.array([0x55, 0x55, 0x55], dtype=np.uint8)
WRONG = np.array([0xFF, 0x00, 0x00], dtype=np.uint8)
WRONG_FILL = np.array([0xFF, 0xC8, 0xC8], dtype=np.uint8)
INK = np.array([0x10, 0x10, 0x10], dtype=np.uint8)
PREDICTED_INK = np.array([0x1F, 0x4F, 0xD0], dtype=np.uint8)
WHITE = np.array([0xFF, 0xFF, 0xFF], dtype=np.uint8)
MAZE_COLOURS = {
    WALL: [0x30, 0x30, 0x30],
    OPEN: [0xFF, 0xFF, 0xFF],
    START: [0x2E, 0xCC, 0x40],
    GOAL: [0x00, 0x74, 0xD9],
    PATH: [0xFF, 0x85, 0x1B],
}

# 3x5 bitmaps of the digits 1..9 for Sudoku boards.
_DIGIT_GLYPHS = {
    1: (".#.", "##.", ".#.", ".#.", "###"),
    2: ("##.", "..#", ".#.", "#..", "###"),
    3: ("##.", "..#", ".#.", "..#", "##."),
    4: ("#.#", "#.#", "###", "..#", "..#"),
    5: ("###", "#..", "##.", "..#", "##."),
    6: (".##", "#..", "###", "#.#", "###"),
    7: ("###", "..#", ".#.", ".#.", ".#."),
    8: ("###", "#.#", "###", "#.#", "###"),
    9: ("###", "#.#", "###", "..#", "##."),
}


def encode_png(rgb: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of an `[H, W, 3]` uint8 image (no row filters, zlib-compressed)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"encode_png needs an [H, W, 3] uint8 image, got {rgb.shape} {rgb.dtype}")
    height, width = rgb.shape[:2]
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rgb.reshape(height, width * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def _cells_image(colours: np.ndarray, cell: int, line: np.ndarray = GRID_LINE) -> np.ndarray:
    """`[h, w, 3]` cell colours drawn as `cell`-pixel squares separated by 1-pixel lines."""
    h, w = colours.shape[:2]
    image = np.empty((h * (cell + 1) + 1, w * (cell + 1) + 1, 3), dtype=np.uint8)
    image[:] = line
    for r in range(h):
        for c in range(w):
            y, x = r * (cell + 1) + 1, c * (cell + 1) + 1
            image[y : y + cell, x : x + cell] = colours[r, c]
    return image


def _outline_cells(image: np.ndarray, mask: np.ndarray, cell: int, width: int) -> None:
    for r, c in zip(*np.nonzero(mask)):
        y, x = r * (cell + 1) + 1, c * (cell + 1) + 1
        image[y : y + width, x : x + cell] = WRONG
        image[y + cell - width : y + cell, x : x + cell] = WRONG
        image[y : y + cell, x : x + width] = WRONG
        image[y : y + cell, x + cell - width : x + cell] = WRONG


def arc_image(grid, cell: int = 14) -> np.ndarray:
    grid = np.asarray(grid, dtype=np.uint8)
    if grid.size == 0:
        return np.full((cell, cell, 3), GRID_LINE, dtype=np.uint8)
    return _cells_image(ARC_PALETTE[grid], cell)


def sudoku_image(inputs: np.ndarray, board: np.ndarray, wrong: np.ndarray | None = None, cell: int = 27) -> np.ndarray:
    """A 9x9 board of tokens (1 blank, 2..10 digits); clues in black, other digits in blue, wrong cells red."""
    wrong = np.zeros((9, 9), dtype=bool) if wrong is None else wrong
    fill = np.where(wrong[..., None], WRONG_FILL, WHITE)
    image = _cells_image(fill, cell, line=np.array([0xB0, 0xB0, 0xB0], dtype=np.uint8))
    scale = cell // 7
    tokens, clues = board.reshape(9, 9), inputs.reshape(9, 9) >= 2
    for r in range(9):
        for c in range(9):
            digit = int(tokens[r, c]) - 1
            if digit not in _DIGIT_GLYPHS:
                continue
            glyph = np.array([[ch == "#" for ch in row] for row in _DIGIT_GLYPHS[digit]])
            pixels = np.kron(glyph, np.ones((scale, scale), dtype=bool))
            y = r * (cell + 1) + 1 + (cell - pixels.shape[0]) // 2
            x = c * (cell + 1) + 1 + (cell - pixels.shape[1]) // 2
            patch = image[y : y + pixels.shape[0], x : x + pixels.shape[1]]
            patch[pixels] = INK if clues[r, c] else PREDICTED_INK
    for k in (0, 3, 6, 9):  # thick box borders
        p = k * (cell + 1)
        image[max(p - 1, 0) : p + 2, :] = INK
        image[:, max(p - 1, 0) : p + 2] = INK
    return image


def maze_image(board: np.ndarray, wrong: np.ndarray | None = None, cell: int = 9) -> np.ndarray:
    side = int(round(board.size**0.5))
    tokens = board.reshape(side, side)
    colours = np.zeros((side, side, 3), dtype=np.uint8)
    for token, colour in MAZE_COLOURS.items():
        colours[tokens == token] = colour
    image = _cells_image(colours, cell, line=np.array([0xD0, 0xD0, 0xD0], dtype=np.uint8))
    if wrong is not None:
        _outline_cells(image, wrong, cell, width=max(cell // 4, 1))
    return image


Panel = tuple[str, np.ndarray]  # caption, image
Row = tuple[str, list[Panel]]  # heading, panels side by side


def arc_rows(test_puzzles: dict, submission: dict, limit: int) -> list[Row]:
    """One row per test input of the first `limit` puzzles: input, true output, attempts (marked right/wrong)."""
    rows = []
    for name in list(test_puzzles)[:limit]:
        entries = submission.get(name, [])
        for i, pair in enumerate(test_puzzles[name]["test"]):
            entry = entries[i] if i < len(entries) else {}
            panels = [("input", arc_image(pair["input"])), ("true output", arc_image(pair["output"]))]
            solved = False
            for key in sorted(entry):
                correct = entry[key] == pair["output"]
                solved |= correct
                panels.append((f"{key.replace('_', ' ')} {'✓' if correct else '✗'}", arc_image(entry[key])))
            rows.append((f"{name} · test {i} · {'solved' if solved else 'not solved'}", panels))
    return rows


def board_rows(kind: str, examples: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], limit: int) -> list[Row]:
    """One row per kept Sudoku or Maze example: input, prediction with wrong cells marked, label when known."""
    rows = []
    for n, (inputs, preds, labels) in enumerate(examples[:limit]):
        if kind == "Sudoku":
            wrong = sudoku_wrong_cells(inputs, preds, labels)
            panels = [("input", sudoku_image(inputs, inputs)), ("prediction", sudoku_image(inputs, preds, wrong))]
            if labels is not None:
                panels.append(("label", sudoku_image(inputs, labels)))
        elif kind == "Maze":
            wrong = maze_wrong_cells(inputs, preds, labels)
            panels = [("input", maze_image(inputs)), ("prediction", maze_image(preds, wrong))]
            if labels is not None:
                panels.append(("label", maze_image(labels)))
        else:
            raise ValueError(f"no board pictures for {kind!r} (Sudoku or Maze)")
        rows.append((f"{kind} example {n} · {int(wrong.sum())} wrong cells", panels))
    return rows


_STYLE = """
body { font-family: sans-serif; background: #f4f4f4; margin: 16px; }
section { margin-bottom: 32px; }
.row { background: #fff; border: 1px solid #ddd; padding: 8px; margin: 8px 0; }
.panels { display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap; }
figure { margin: 0; text-align: center; font-size: 12px; }
img { image-rendering: pixelated; display: block; }
"""


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_report(report_dir: str | Path, title: str, sections: dict[str, list[Row]]) -> Path:
    """Write `report_dir/index.html` and its PNGs under `report_dir/img/`; returns the HTML path."""
    report_dir = Path(report_dir)
    (report_dir / "img").mkdir(parents=True, exist_ok=True)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    parts.append(f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>")
    image_number = 0
    for section, rows in sections.items():
        parts.append(f"<section><h2>{html.escape(section)}</h2>")
        for heading, panels in rows:
            parts.append(f"<div class='row'><h3>{html.escape(heading)}</h3><div class='panels'>")
            for caption, image in panels:
                file_name = f"img/{image_number:05d}.png"
                _write_atomic(report_dir / file_name, encode_png(image))
                image_number += 1
                parts.append(
                    f"<figure><img src='{file_name}' width='{image.shape[1]}' height='{image.shape[0]}' "
                    f"alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"
                )
            parts.append("</div></div>")
        parts.append("</section>")
    parts.append("</body></html>")
    path = report_dir / "index.html"
    _write_atomic(path, "".join(parts).encode())
    return path
