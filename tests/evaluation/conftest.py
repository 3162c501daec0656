"""Fixtures of the evaluation tests: the ARC voting fixture (arc_helpers.py) and small real dataset builds."""

import json
from pathlib import Path

import pytest
from arc_helpers import ArcEvalFixture, build_arc_eval_fixture

from trm_mlx.data.builders.arc import ARCBuildConfig, build_arc
from trm_mlx.data.builders.maze import MazeBuildConfig, build_maze
from trm_mlx.data.builders.sudoku import SudokuBuildConfig, build_sudoku


@pytest.fixture
def arc_eval_fixture(shared_data, tmp_path) -> ArcEvalFixture:
    return build_arc_eval_fixture(shared_data / "arc", tmp_path / "arc-eval")


SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _shared(*parts) -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not found (real ARC/Sudoku/Maze data is optional)")
    return SHARED_DATA.joinpath(*parts)


def _csv_head(source: Path, target: Path, rows: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(source) as f:
        target.write_text("".join(f.readline() for _ in range(rows + 1)))


@pytest.fixture(scope="session")
def sudoku_build(tmp_path_factory) -> Path:
    """16 real training puzzles (+1 augmentation each) and 24 puzzles of the hard test set, built by our builder."""
    root = tmp_path_factory.mktemp("sudoku")
    _csv_head(_shared("sudoku-extreme-1k", "train.csv"), root / "src" / "train.csv", 16)
    _csv_head(_shared("sudoku-hard-test", "test.csv"), root / "src" / "test.csv", 24)
    return build_sudoku(SudokuBuildConfig(source_repo=str(root / "src"), output_dir=str(root / "data"), num_aug=1, seed=0))


@pytest.fixture(scope="session")
def maze_build(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("maze")
    _csv_head(_shared("maze-30x30-hard-1k", "train.csv"), root / "src" / "train.csv", 4)
    _csv_head(_shared("maze-30x30-hard-1k", "test.csv"), root / "src" / "test.csv", 10)
    return build_maze(MazeBuildConfig(source_repo=str(root / "src"), output_dir=str(root / "data")))


@pytest.fixture(scope="session")
def arc_build(tmp_path_factory) -> Path:
    """1 training and 3 evaluation tasks of ARC-AGI-1 (one with two test inputs), one augmentation each."""
    root = tmp_path_factory.mktemp("arc")
    for subset, count in (("training", 1), ("evaluation", 3)):
        challenges = json.loads(_shared("arc", f"arc-agi_{subset}_challenges.json").read_text())
        solutions = json.loads(_shared("arc", f"arc-agi_{subset}_solutions.json").read_text())
        names = sorted(challenges)
        doubles = [n for n in names if len(challenges[n]["test"]) == 2][:1]
        chosen = (doubles + [n for n in names if n not in doubles])[:count]
        for kind, source in (("challenges", challenges), ("solutions", solutions)):
            path = root / "src" / f"arc-agi_{subset}_{kind}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({n: source[n] for n in chosen}))
    config = ARCBuildConfig(
        input_file_prefix=str(root / "src" / "arc-agi"), output_dir=str(root / "data"),
        subsets=["training", "evaluation"], test_set_name="evaluation", num_aug=1,
    )  # fmt: skip
    return build_arc(config)
