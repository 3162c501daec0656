"""Puzzle datasets in the original TRM format: reader, seeded training sampler, builders."""

from trm_mlx.data.builtin import ensure_builtin_sudoku
from trm_mlx.data.dataset import IGNORE_LABEL_ID, PuzzleDataset, load_identifiers
from trm_mlx.data.metadata import DatasetFormatError, PuzzleDatasetMetadata

__all__ = [
    "IGNORE_LABEL_ID",
    "DatasetFormatError",
    "PuzzleDataset",
    "PuzzleDatasetMetadata",
    "ensure_builtin_sudoku",
    "load_identifiers",
]
