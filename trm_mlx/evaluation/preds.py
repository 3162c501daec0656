"""Saved evaluation outputs, for re-scoring without a model.

The original writes `step_N_all_preds.R` (one per rank R): a torch-saved dict of the batch and output tensors named
in `eval_save_outputs`, concatenated over its eval batches, padding rows included. Our equivalent is an `.npz` file
with the same keys. Several rank files concatenate in rank order, which reproduces the original's vote order.
"""

import re
from pathlib import Path

import numpy as np

from trm_mlx.atomic import atomic_file
from trm_mlx.checkpoint import torch_file

_RANK_SUFFIX = re.compile(r"\.(\d+)(\.npz)?$")


def _rank_order(path: Path) -> int:
    match = _RANK_SUFFIX.search(path.name)
    return int(match.group(1)) if match else 0


def read_predictions_file(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such predictions file")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        except (ValueError, OSError) as e:
            raise ValueError(f"{path}: not a readable .npz predictions file ({e})") from None
    return dict(torch_file.load(path))


def load_predictions(paths: list[str | Path], required: set[str] = frozenset()) -> dict[str, np.ndarray]:
    """One dict of arrays from one or more rank files (sorted by their `.R` suffix), rows concatenated."""
    if not paths:
        raise ValueError("no predictions files given")
    files = sorted((Path(p) for p in paths), key=_rank_order)
    parts = [read_predictions_file(path) for path in files]
    for path, part in zip(files, parts):
        missing = sorted(set(required) - part.keys())
        if missing:
            raise ValueError(f"{path}: predictions file lacks {missing} (it has {sorted(part)})")
        lengths = {key: len(value) for key, value in part.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{path}: arrays have different numbers of rows: {lengths}")
    keys = set.intersection(*(set(part) for part in parts))
    return {key: np.concatenate([part[key] for part in parts]) for key in sorted(keys)}


def save_predictions(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write the arrays as an `.npz` file that appears complete or not at all."""
    path = Path(path)
    with atomic_file(path, suffix=".npz") as tmp:  # NumPy adds .npz to a name without it
        np.savez(tmp, **arrays)
    return path
