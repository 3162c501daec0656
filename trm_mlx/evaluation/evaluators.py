"""Evaluators by name, as configs list them (`evaluators: [{name: arc@ARC, ...}]`), and the default for a dataset."""

from pathlib import Path

from trm_mlx.data.metadata import PuzzleDatasetMetadata
from trm_mlx.evaluation.arc import ARCEvaluator
from trm_mlx.evaluation.maze import MazeEvaluator
from trm_mlx.evaluation.sudoku import SudokuEvaluator

EVALUATORS = {"arc@ARC": ARCEvaluator, "sudoku@Sudoku": SudokuEvaluator, "maze@Maze": MazeEvaluator}
SHORT_NAMES = {cls.name: locator for locator, cls in EVALUATORS.items()}  # "ARC" -> "arc@ARC"

# The original ARC evaluator's keyword names -> ours. Its `aggregated_voting` kept votes across evaluations.
ORIGINAL_ARC_KWARGS = {"submission_K": "submission_k", "pass_Ks": "pass_ks", "aggregated_voting": "accumulate"}


def default_evaluator_names(data_path: str | Path, metadata: PuzzleDatasetMetadata) -> list[str]:
    """ARC builds (they have test_puzzles.json) get the ARC evaluator, Sudoku and Maze builds theirs."""
    if (Path(data_path) / "test_puzzles.json").is_file():
        return ["arc@ARC"]
    if metadata.vocab_size == 11 and metadata.seq_len == 81:
        return ["sudoku@Sudoku"]
    if metadata.vocab_size == 6:
        return ["maze@Maze"]
    return []


def create_evaluator(
    spec: str | dict, data_paths: list[str], metadata: PuzzleDatasetMetadata, keep_examples: int = 0,
    keep: str = "first",
):
    """One evaluator from `name` or `{name: ..., **kwargs}`; names are locators (`arc@ARC`) or short (`ARC`).
    Board evaluators keep `keep_examples` boards for the report, chosen by `keep` (first, wrong or random)."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    locator = SHORT_NAMES.get(name, name)
    if locator not in EVALUATORS:
        raise ValueError(f"unknown evaluator {name!r}; known: {sorted(EVALUATORS)} (or {sorted(SHORT_NAMES)})")
    if locator == "arc@ARC":
        kwargs = {ORIGINAL_ARC_KWARGS.get(k, k): v for k, v in spec.items()}
        arc_paths = [p for p in data_paths if (Path(p) / "test_puzzles.json").is_file()]
        if not arc_paths:
            raise ValueError(f"the ARC evaluator needs an ARC build with test_puzzles.json; none in {data_paths}")
        return _construct(ARCEvaluator, name, arc_paths[0], blank_identifier_id=metadata.blank_identifier_id, **kwargs)
    return _construct(EVALUATORS[locator], name, pad_id=metadata.pad_id, keep_examples=keep_examples, keep=keep,
                      **spec)  # fmt: skip


def _construct(cls, name, *args, **kwargs):
    try:
        return cls(*args, **kwargs)
    except TypeError as e:
        raise ValueError(f"evaluator {name!r}: bad arguments {sorted(kwargs)} ({e})") from None
