"""scripts/sudoku_difficulty.py: the solver's guesses on puzzles whose search is known by hand, and exact accuracy by
difficulty reweighted to a reference mix."""

import csv

import numpy as np
import pytest

from scripts.sudoku_difficulty import accuracy_by_difficulty, bucket_of, sample_by_difficulty, solve

# A solved grid (a Sudoku-Extreme answer). Cells (0,0)=8, (0,7)=3, (1,0)=3, (1,7)=8 form a rectangle over two boxes:
# swapping 3 and 8 there gives a second valid grid.
GRID = "846712935372695184195483267984237651517964823263851749728549316439126578651378492"
RECTANGLE = (0, 7, 9, 16)


def _with(grid: str, changes: dict[int, str]) -> str:
    return "".join(changes.get(i, ch) for i, ch in enumerate(grid))


def _valid(grid: str) -> bool:
    rows = [grid[r * 9:(r + 1) * 9] for r in range(9)]
    cols = ["".join(row[c] for row in rows) for c in range(9)]
    boxes = ["".join(rows[br + r][bc + c] for r in range(3) for c in range(3)) for br in (0, 3, 6) for bc in (0, 3, 6)]
    return all(sorted(unit) == list("123456789") for unit in rows + cols + boxes)


def test_singles_alone_solve_a_grid_with_scattered_blanks_without_a_guess():
    puzzle = _with(GRID, {i: "." for i in range(0, 81, 7)})  # one blank in most rows: naked singles
    assert solve(puzzle) == (GRID, 0)


def test_the_rectangle_takes_one_guess_and_the_smaller_digit_first():
    assert _valid(GRID) and _valid(_with(GRID, {0: "3", 7: "8", 9: "8", 16: "3"}))
    puzzle = _with(GRID, {i: "." for i in RECTANGLE})  # every blank has candidates {3, 8}: no single applies
    solution, guesses = solve(puzzle)
    assert guesses == 1
    assert solution == _with(GRID, {0: "3", 7: "8", 9: "8", 16: "3"})  # 3 tried first at cell 0, the first blank


def test_a_contradictory_puzzle_has_no_solution():
    assert solve("11" + "." * 79) == (None, 0)


def test_buckets_include_both_ends():
    assert [bucket_of(g) for g in (0, 15, 16, 63, 64, 255, 256, 5000)] == [
        "0-15", "0-15", "16-63", "16-63", "64-255", "64-255", "256+", "256+"]  # fmt: skip


def test_accuracy_is_reweighted_to_the_reference_mix():
    def tokens(question):
        return [1 if ch == "." else int(ch) + 1 for ch in question]

    # test puzzles: two easy (one right), two hard (both right); the reference: three easy, one hard
    questions = [_with(GRID, {i: "."}) for i in range(4)]
    records = [{"source": "test", "question": q, "guesses": g} for q, g in zip(questions, (0, 3, 100, 200))]
    records += [{"source": "ref", "question": f"r{i}", "guesses": g} for i, g in enumerate((1, 2, 5, 70))]
    labels = np.array([tokens(GRID)] * 4 + [[0] * 81])  # and one padding row
    preds = labels.copy()
    preds[1, 0] = 2  # the second easy puzzle is wrong
    inputs = np.array([tokens(q) for q in questions] + [[0] * 81])

    result = accuracy_by_difficulty(records, {"inputs": inputs, "labels": labels, "preds": preds}, "ref")
    groups = result["groups"]
    assert groups["all"] == {"puzzles": 4, "exact_accuracy": 0.75}
    assert groups["0-15"]["exact_accuracy"] == 0.5 and groups["64-255"]["exact_accuracy"] == 1.0
    assert result["reweighted_exact_accuracy"] == pytest.approx(0.75 * 0.5 + 0.25 * 1.0)


def test_accuracy_needs_test_puzzles_in_every_bucket_the_reference_has():
    records = [{"source": "test", "question": GRID, "guesses": 0}, {"source": "ref", "question": "r", "guesses": 300}]
    row = [int(ch) + 1 for ch in GRID]
    arrays = {"inputs": np.array([row]), "labels": np.array([row]), "preds": np.array([row])}
    with pytest.raises(ValueError, match="256\\+"):
        accuracy_by_difficulty(records, arrays, "ref")


def test_the_solver_reproduces_real_answers(shared_data):
    with open(shared_data / "sudoku-hard-test" / "test.csv", newline="") as f:
        rows = [row for _, row in zip(range(20), csv.DictReader(f))]
    for row in rows:
        solution, guesses = solve(row["question"])
        assert solution == row["answer"] and guesses >= 0


def test_a_sample_takes_as_many_puzzles_from_each_bucket(tmp_path):
    puzzles = [_with(GRID, {i: "."}) for i in range(6)]
    records = [{"source": "s", "question": q, "guesses": g} for q, g in zip(puzzles, (0, 1, 2, 20, 30, 300))]
    path = tmp_path / "test.csv"
    path.write_text("source,question,answer,rating\n" + "".join(f"s,{q},{GRID},0\n" for q in puzzles))

    rows = sample_by_difficulty(records, str(path), per_bucket=2, seed=0)
    picked = sorted(puzzles.index(row["question"]) for row in rows)
    assert len(picked) == 5 and {3, 4, 5} <= set(picked)  # 2 of the 3 easy ones, both of 16-63, the one 256+
    assert rows == sample_by_difficulty(records, str(path), per_bucket=2, seed=0)
