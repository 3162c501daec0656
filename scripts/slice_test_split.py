"""A built dataset whose test split is cut to its first groups, for evaluations that fit a short run.

An ARC test split built with 1,000 augmentations holds about 370,000 examples (an hour of evaluation on one GPU),
so a run of a few thousand steps cannot evaluate on it often. This writes a dataset folder that links the
original's training split and identifiers and holds the first ``--groups`` groups of each test set (a group is a
task with all its augmented puzzles, so the ARC evaluator still votes over every augmentation), with
``test_puzzles.json`` cut to the tasks kept. Both trm-train and the original's loader read it unchanged.

    python -m scripts.slice_test_split --data data/arc1concept-aug-1000 --out data/arc1concept-aug-1000-test4 --groups 4
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np

from trm_mlx.data.builders.common import atomic_output_dir, save_split, write_json
from trm_mlx.data.grids import inverse_aug
from trm_mlx.data.metadata import load_metadata

ARC_TASKS_FILE = "test_puzzles.json"


def _slice_set(test: Path, name: str, groups: int) -> dict[str, np.ndarray]:
    group_indices = np.load(test / f"{name}__group_indices.npy")
    if groups >= len(group_indices) - 1:
        raise ValueError(f"{test}: set {name!r} has {len(group_indices) - 1} groups; --groups must be fewer")
    puzzles = int(group_indices[groups])
    puzzle_indices = np.load(test / f"{name}__puzzle_indices.npy")[: puzzles + 1]
    examples = int(puzzle_indices[-1])
    rows = {field: np.load(test / f"{name}__{field}.npy", mmap_mode="r")[:examples] for field in ("inputs", "labels")}
    return {
        **{field: np.array(array) for field, array in rows.items()},
        "puzzle_identifiers": np.load(test / f"{name}__puzzle_identifiers.npy")[:puzzles],
        "puzzle_indices": puzzle_indices,
        "group_indices": group_indices[: groups + 1],
    }


def slice_test_split(data: str | Path, out: str | Path, groups: int) -> Path:
    data = Path(data).absolute()
    metadata = load_metadata(data, "test")
    with atomic_output_dir(out) as tmp:
        for name in ("train", "identifiers.json"):
            if (data / name).exists():
                os.symlink(data / name, tmp / name)
        kept_identifiers = set()
        for set_name in metadata.sets:
            arrays = _slice_set(data / "test", set_name, groups)
            kept_identifiers.update(arrays["puzzle_identifiers"].tolist())
            puzzles, examples = len(arrays["puzzle_identifiers"]), len(arrays["inputs"])
            sliced = metadata.model_copy(update={"total_groups": groups, "total_puzzles": puzzles,
                                                 "mean_puzzle_examples": examples / puzzles})  # fmt: skip
            save_split(tmp / "test", arrays, sliced, set_name)
        if (data / ARC_TASKS_FILE).exists():
            names = json.loads((data / "identifiers.json").read_text())
            tasks = {inverse_aug(names[i])[0] for i in kept_identifiers}  # the task each puzzle votes for
            all_tasks = json.loads((data / ARC_TASKS_FILE).read_text())
            write_json(tmp / ARC_TASKS_FILE, {task: puzzle for task, puzzle in all_tasks.items() if task in tasks})
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a built dataset folder")
    parser.add_argument("--out", required=True, help="the new dataset folder")
    parser.add_argument("--groups", type=int, required=True, help="test groups to keep (ARC: tasks), from the first")
    args = parser.parse_args(argv)
    if args.groups < 1:
        parser.error("--groups must be at least 1")
    out = slice_test_split(args.data, args.out, args.groups)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
