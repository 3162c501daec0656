"""The exact Sudoku solver/generator and the built-in dataset the default training job uses."""

import json
import random

import numpy as np
import pytest

from trm_mlx.data import PuzzleDataset, ensure_builtin_sudoku
from trm_mlx.data.cli import main as build_data
from trm_mlx.data.sudoku_generator import count_solutions, generate_puzzle, solve

# Wikipedia's example puzzle and its unique solution.
PUZZLE = [0 if c == "." else int(c) for c in
          "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"]
SOLUTION = [int(c) for c in "534678912672195348198342567859761423426853791713924856961537284287419635345286179"]


def is_valid_solution(board):
    grid = np.asarray(board).reshape(9, 9)
    units = list(grid) + list(grid.T) + [grid[r:r + 3, c:c + 3].ravel() for r in (0, 3, 6) for c in (0, 3, 6)]
    return all(sorted(u) == list(range(1, 10)) for u in units)


def test_solver_on_a_known_puzzle():
    assert solve(PUZZLE) == SOLUTION
    assert count_solutions(PUZZLE, limit=5) == 1
    assert count_solutions([0] * 81, limit=3) == 3
    contradiction = list(PUZZLE)
    contradiction[2] = 5  # a second 5 in the first row
    assert count_solutions(contradiction) == 0 and solve(contradiction) is None


def test_generated_puzzles_are_unique_minimal_and_seeded():
    puzzle, solution = generate_puzzle(random.Random(11))
    assert (puzzle, solution) == generate_puzzle(random.Random(11))
    assert puzzle != generate_puzzle(random.Random(12))[0]
    assert is_valid_solution(solution)
    assert all(p in (0, s) for p, s in zip(puzzle, solution))
    assert count_solutions(puzzle, limit=3) == 1 and solve(puzzle) == solution
    for cell in (i for i, v in enumerate(puzzle) if v):  # minimal: every clue is needed
        weaker = list(puzzle)
        weaker[cell] = 0
        assert count_solutions(weaker, limit=2) == 2


@pytest.mark.parametrize("blanks", [1, 5, 20, 40])
def test_generated_puzzles_have_the_blanks_asked_for(blanks):
    puzzle, solution = generate_puzzle(random.Random(blanks), blanks)
    assert puzzle.count(0) == blanks and all(p in (0, s) for p, s in zip(puzzle, solution))
    assert is_valid_solution(solution) and count_solutions(puzzle, limit=3) == 1


def test_builtin_dataset(tmp_path):
    path = tmp_path / "builtin"
    assert ensure_builtin_sudoku(path, num_train=3, num_test=2, num_aug=3, seed=5) == path
    train = PuzzleDataset([str(path)], "train", 1)
    assert (train.metadata.seq_len, train.metadata.vocab_size, train.metadata.total_groups) == (81, 11, 3)
    inputs = np.load(path / "train" / "all__inputs.npy")
    labels = np.load(path / "train" / "all__labels.npy")
    assert inputs.shape == (12, 81)
    for x, y in zip(inputs - 1, labels - 1):
        assert is_valid_solution(y) and count_solutions(list(x), limit=2) == 1
        assert 10 <= (x == 0).sum() <= 30  # the default blanks
    batches = list(train.iter_train())
    assert len(batches) == 3 and all(b["inputs"].shape == (1, 81) for _, b, _ in batches)  # one puzzle per group
    assert len(list(PuzzleDataset([str(path)], "test", 4).iter_test())) == 1

    stamp = (path / "train" / "all__inputs.npy").stat().st_mtime_ns
    ensure_builtin_sudoku(path, num_train=3, num_test=2, num_aug=3, seed=5)  # already there: kept
    assert (path / "train" / "all__inputs.npy").stat().st_mtime_ns == stamp
    ensure_builtin_sudoku(path, num_train=3, num_test=2, num_aug=1, seed=5)  # other settings: rebuilt
    assert np.load(path / "train" / "all__inputs.npy").shape == (6, 81)
    assert json.loads((path / "builtin_sudoku.json").read_text())["num_aug"] == 1
    np.testing.assert_array_equal(np.load(path / "train" / "all__inputs.npy")[::2], inputs[::4])  # same puzzles

    ensure_builtin_sudoku(path, num_train=3, num_test=2, num_aug=1, seed=5, blanks=(81, 81))  # minimal puzzles
    assert 55 <= (np.load(path / "test" / "all__inputs.npy") == 1).sum(axis=1).min()  # 26 clues at most
    with pytest.raises(ValueError, match="blanks 9, 8"):
        ensure_builtin_sudoku(path, blanks=(9, 8))

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x").write_text("")
    with pytest.raises(FileExistsError, match="not a built-in Sudoku dataset"):
        ensure_builtin_sudoku(tmp_path / "mine")


def test_build_data_command(tmp_path, capsys):
    build_data(["builtin-sudoku", "--output-dir", str(tmp_path / "b"), "--num-train", "2", "--num-test", "1",
                "--num-aug", "0", "--blanks", "7", "7"])  # fmt: skip
    assert (np.load(tmp_path / "b" / "train" / "all__inputs.npy") == 1).sum(axis=1).tolist() == [7, 7]
    with pytest.raises(SystemExit):
        build_data(["builtin-sudoku", "--output-dir", str(tmp_path / "c"), "--blanks", "9", "8"])
    assert "--blanks 9 8: need LOW <= HIGH <= 81" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
