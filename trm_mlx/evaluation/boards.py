"""Shared bookkeeping of the evaluators that check each predicted board on its own (Sudoku, Maze)."""

from typing import NamedTuple

import mlx.core as mx
import numpy as np

from trm_mlx.evaluation.gather import all_gather_objects


def real_rows(inputs: np.ndarray, pad_id: int) -> np.ndarray:
    """Rows that are examples, not batch padding (padding rows are all `pad_id`; real boards never are)."""
    return ~(np.asarray(inputs) == pad_id).all(axis=1)


class KeptBoard(NamedTuple):
    """A board kept for the report: its number in the test split, and the ACT steps it used when the outputs say."""

    number: int
    inputs: np.ndarray
    preds: np.ndarray
    labels: np.ndarray | None
    steps: int | None = None


class BoardEvaluator:
    """Counts per-board checks (`checks` returns one boolean per board for each name in `check_names`) and exact
    matches with the labels when the batch has them. Keeps `keep_examples` boards for the report, chosen by
    `keep`: the first ones, the first wrong ones (not exact, or failing a check where there are no labels), or a
    uniform sample of all boards (reservoir sampling, seeded), as `KeptBoard`s in the order of their numbers.

    A board's number is its position among the boards seen, or `batch["numbers"]` where the batch has it: its
    position in the test split when the evaluation hands boards over out of order (`halt=q`, as rows finish)."""

    name: str
    check_names: tuple[str, ...]
    required_outputs = frozenset({"inputs", "preds"})

    def __init__(self, pad_id: int = 0, keep_examples: int = 0, keep: str = "first", seed: int = 0):
        if keep not in ("first", "wrong", "random"):
            raise ValueError(f"keep={keep!r}: expected first, wrong or random")
        self.pad_id = pad_id
        self.keep_examples = keep_examples
        self.keep = keep
        self.seed = seed
        self.begin_eval()

    def checks(self, inputs: np.ndarray, preds: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def begin_eval(self) -> None:
        self.counts = dict.fromkeys(("count", "labelled", "exact", *self.check_names), 0)
        self.examples: list[KeptBoard] = []
        self._sampler = np.random.default_rng(self.seed)

    def update_batch(self, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        keep = real_rows(batch["inputs"], self.pad_id)
        inputs, preds = np.asarray(batch["inputs"])[keep], np.asarray(outputs["preds"])[keep]
        labels = np.asarray(batch["labels"])[keep] if "labels" in batch else None
        steps = np.asarray(outputs["steps"])[keep] if "steps" in outputs else None
        seen = self.counts["count"]
        numbers = np.asarray(batch["numbers"])[keep] if "numbers" in batch else seen + np.arange(len(inputs))
        self.counts["count"] += len(inputs)
        checks = self.checks(inputs, preds)
        for key, passed in checks.items():
            self.counts[key] += int(passed.sum())
        if labels is not None:
            exact = ((preds == labels) | (labels == -100)).all(axis=1)
            self.counts["labelled"] += len(labels)
            self.counts["exact"] += int(exact.sum())
            correct = exact
        else:
            correct = np.logical_and.reduce(list(checks.values())) if checks else np.ones(len(inputs), bool)
        for i in range(len(inputs)):
            example = KeptBoard(int(numbers[i]), inputs[i], preds[i], None if labels is None else labels[i],
                                None if steps is None else int(steps[i]))  # fmt: skip
            self._offer(example, correct[i], seen + i)

    def _offer(self, example: KeptBoard, correct: bool, seen: int) -> None:
        """Consider the `seen`-th board (counting from 0) for the report."""
        if not self.keep_examples or (self.keep == "wrong" and correct):
            return
        if len(self.examples) < self.keep_examples:
            self.examples.append(example)
        elif self.keep == "random":  # reservoir sampling: the n-th board replaces a kept one with probability k / n
            slot = int(self._sampler.integers(seen + 1))
            if slot >= self.keep_examples:
                return
            self.examples[slot] = example
        elif example.number < self.examples[-1].number:  # first, wrong: the lowest numbers
            self.examples[-1] = example
        else:
            return
        self.examples.sort(key=lambda kept: kept.number)

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
