"""Shared bookkeeping of the evaluators that check each predicted board on its own (Sudoku, Maze)."""

import mlx.core as mx
import numpy as np

from trm_mlx.evaluation.gather import all_gather_objects


def real_rows(inputs: np.ndarray, pad_id: int) -> np.ndarray:
    """Rows that are examples, not batch padding (padding rows are all `pad_id`; real boards never are)."""
    return ~(np.asarray(inputs) == pad_id).all(axis=1)


class BoardEvaluator:
    """Counts per-board checks (`checks` returns one boolean per board for each name in `check_names`) and exact
    matches with the labels when the batch has them. Keeps the first `keep_examples` boards for the report."""

    name: str
    check_names: tuple[str, ...]
    required_outputs = frozenset({"inputs", "preds"})

    def __init__(self, pad_id: int = 0, keep_examples: int = 0):
        self.pad_id = pad_id
        self.keep_examples = keep_examples
        self.begin_eval()

    def checks(self, inputs: np.ndarray, preds: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def begin_eval(self) -> None:
        self.counts = dict.fromkeys(("count", "labelled", "exact", *self.check_names), 0)
        self.examples: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []

    def update_batch(self, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        keep = real_rows(batch["inputs"], self.pad_id)
        inputs, preds = np.asarray(batch["inputs"])[keep], np.asarray(outputs["preds"])[keep]
        labels = np.asarray(batch["labels"])[keep] if "labels" in batch else None
        self.counts["count"] += len(inputs)
        for key, passed in self.checks(inputs, preds).items():
            self.counts[key] += int(passed.sum())
        if labels is not None:
            scored = labels != -100
            self.counts["labelled"] += len(labels)
            self.counts["exact"] += int(((preds == labels) | ~scored).all(axis=1).sum())
        room = self.keep_examples - len(self.examples)
        for i in range(min(room, len(inputs))):
            self.examples.append((inputs[i], preds[i], None if labels is None else labels[i]))

    def result(self, save_dir=None, group: mx.distributed.Group | None = None) -> dict:
        """Fractions of boards passing each check, and `exact_accuracy` when labels were seen."""
        counts = self.counts
        if group is not None and group.size() > 1:
            counts = {key: sum(c[key] for c in all_gather_objects(counts, group)) for key in counts}
        metrics = {f"{self.name}/{key}": counts[key] / max(counts["count"], 1) for key in self.check_names}
        if counts["labelled"]:
            metrics[f"{self.name}/exact_accuracy"] = counts["exact"] / counts["labelled"]
        metrics[f"{self.name}/count"] = counts["count"]
        return metrics
