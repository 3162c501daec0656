"""Evaluation: the eval loop of the original (per-set metrics), the ARC voting evaluator, Sudoku/Maze checks,
re-scoring of saved predictions, HTML reports, and the `trm-eval` command."""

from trm_mlx.evaluation.arc import ARCEvaluator
from trm_mlx.evaluation.evaluators import create_evaluator, default_evaluator_names
from trm_mlx.evaluation.loop import evaluate
from trm_mlx.evaluation.maze import MazeEvaluator
from trm_mlx.evaluation.sudoku import SudokuEvaluator

__all__ = [
    "ARCEvaluator", "MazeEvaluator", "SudokuEvaluator", "create_evaluator", "default_evaluator_names", "evaluate",
]
