"""A tiny dataset in the original on-disk format (spec §6.1-6.2) and a tiny TRM, for fast training tests."""

import json
from pathlib import Path

import numpy as np

# Small enough for a CPU step in milliseconds, big enough to exercise every part (2 H cycles, ACT, puzzle table).
TINY_ARCH = [
    "arch.hidden_size=16",
    "arch.num_heads=2",
    "arch.H_cycles=2",
    "arch.L_cycles=1",
    "arch.L_layers=1",
    "arch.halt_max_steps=3",
    "arch.forward_dtype=float32",
]
BATCH = 4
SEQ_LEN = 6
VOCAB = 5


def write_split(root: Path, split: str, inputs, labels, puzzle_ids, puzzle_indices, group_indices, num_ids: int,
                vocab_size: int = VOCAB):
    directory = root / split
    directory.mkdir(parents=True)
    arrays = {
        "inputs": inputs,
        "labels": labels,
        "puzzle_identifiers": np.asarray(puzzle_ids, np.int32),
        "puzzle_indices": np.asarray(puzzle_indices, np.int32),
        "group_indices": np.asarray(group_indices, np.int32),
    }
    for name, array in arrays.items():
        np.save(directory / f"all__{name}.npy", array)
    metadata = {
        "pad_id": 0,
        "ignore_label_id": 0,
        "blank_identifier_id": 0,
        "vocab_size": vocab_size,
        "seq_len": inputs.shape[1],
        "num_puzzle_identifiers": num_ids,
        "total_groups": len(group_indices) - 1,
        "mean_puzzle_examples": len(inputs) / (len(puzzle_indices) - 1),
        "total_puzzles": len(puzzle_indices) - 1,
        "sets": ["all"],
    }
    (directory / "dataset.json").write_text(json.dumps(metadata))


def write_tiny_dataset(root: Path) -> Path:
    """Train: 8 groups of one puzzle (ids 1..8) with 2 examples each; labels = inputs reversed. Test: 4 examples."""
    rng = np.random.default_rng(0)
    inputs = rng.integers(1, VOCAB, (16, SEQ_LEN)).astype(np.uint8)
    labels = inputs[:, ::-1].copy()
    write_split(root, "train", inputs, labels, np.arange(1, 9), np.arange(0, 17, 2), np.arange(0, 9), num_ids=9)
    write_split(root, "test", inputs[:4], labels[:4], [1, 2], [0, 2, 4], [0, 1, 2], num_ids=9)
    return root
