"""Evaluation: the eval loop of the original (per-set metrics), the ARC voting evaluator, Sudoku/Maze checks,
re-scoring of saved predictions, HTML reports, and the `trm-eval` command."""
