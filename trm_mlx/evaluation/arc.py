"""ARC evaluator: maps every prediction back to its original puzzle, votes per test input, reports pass@K and
writes an ARC Prize submission.

Voting is the original's (spec §8): candidates ranked by vote count, then by mean sigmoid(q_halt_logits), ties kept
in first-seen order. Differences from the original, on purpose: it works in a single process, every test input gets
a submission entry (pairs without votes get `FALLBACK_ATTEMPT`, so entries stay aligned with test inputs), and
predictions from earlier evaluations are only kept when `accumulate=True`.
"""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np

from trm_mlx.atomic import write_atomically
from trm_mlx.data.grids import crop, grid_hash, inverse_aug
from trm_mlx.evaluation.gather import all_gather_objects

PASS_KS = (1, 2, 5, 10, 100, 1000)
FALLBACK_ATTEMPT = [[0]]


def read_json(path: Path):
    """A JSON file of a built dataset, with an error that says which file is missing or broken."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (is this a built ARC dataset directory?)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def write_json_atomic(path: Path, obj) -> None:
    write_atomically(path, json.dumps(obj))


def _answer_grid(grid: list, where: str) -> np.ndarray:
    arr = np.array(grid)
    if arr.ndim != 2 or max(arr.shape) > 30 or arr.size == 0 or arr.min() < 0 or arr.max() > 9:
        raise ValueError(f"{where}: not an ARC grid (2-D, sides 1..30, colours 0..9)")
    return arr.astype(np.uint8)


def rank_candidates(votes: list[tuple[str, float]]) -> list[str]:
    """Distinct predicted grid hashes, most votes first, then highest mean q; exact ties in first-seen order."""
    counts: dict[str, int] = {}
    q_sums: dict[str, float] = {}
    for grid_key, q in votes:
        counts[grid_key] = counts.get(grid_key, 0) + 1
        q_sums[grid_key] = q_sums.get(grid_key, 0) + q
    return sorted(counts, key=lambda h: (counts[h], q_sums[h] / counts[h]), reverse=True)


def merge_states(states: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """One (grids, votes) state from several ranks' states; votes are concatenated in rank order."""
    grids: dict[str, np.ndarray] = {}
    votes: dict[str, dict[str, list]] = {}
    for rank_grids, rank_votes in states:
        for key, grid in rank_grids.items():
            grids.setdefault(key, grid)
        for name, per_input in rank_votes.items():
            for input_key, entries in per_input.items():
                votes.setdefault(name, {}).setdefault(input_key, []).extend(entries)
    return grids, votes


class ARCEvaluator:
    name = "ARC"
    required_outputs = frozenset({"inputs", "puzzle_identifiers", "preds", "q_halt_logits"})

    def __init__(
        self,
        data_path: str | Path,
        blank_identifier_id: int = 0,
        submission_k: int = 2,
        pass_ks: tuple[int, ...] = PASS_KS,
        accumulate: bool = False,
    ):
        data_path = Path(data_path)
        self.identifiers: list[str] = read_json(data_path / "identifiers.json")
        self.test_puzzles: dict = read_json(data_path / "test_puzzles.json")
        self.test_pairs = {
            name: [
                (
                    grid_hash(_answer_grid(pair["input"], f"{data_path / 'test_puzzles.json'}: {name} test {i} input")),
                    grid_hash(_answer_grid(pair["output"], f"{data_path / 'test_puzzles.json'}: {name} test {i} output")),
                )
                for i, pair in enumerate(puzzle["test"])
            ]
            for name, puzzle in self.test_puzzles.items()
        }
        self.blank_identifier_id = blank_identifier_id
        self.submission_k = submission_k
        self.pass_ks = tuple(pass_ks)
        self.accumulate = accumulate
        self.grids: dict[str, np.ndarray] = {}  # prediction hash -> grid (original frame)
        self.votes: dict[str, dict[str, list[tuple[str, float]]]] = {}  # puzzle -> input hash -> [(hash, q)]
        self.submission: dict | None = None

    def begin_eval(self) -> None:
        if not self.accumulate:
            self.grids, self.votes = {}, {}

    def update_batch(self, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Record one vote per non-padding row: its cropped, de-augmented prediction and sigmoid(q_halt)."""
        identifiers = np.asarray(batch["puzzle_identifiers"])
        keep = identifiers != self.blank_identifier_id
        if identifiers.size and identifiers.max() >= len(self.identifiers):
            raise ValueError(
                f"puzzle identifier {identifiers.max()} is outside identifiers.json ({len(self.identifiers)} names)"
            )
        logits = np.asarray(outputs["q_halt_logits"], dtype=np.float64)[keep]
        q_values = 1.0 / (1.0 + np.exp(-logits))
        rows = zip(identifiers[keep], np.asarray(batch["inputs"])[keep], np.asarray(outputs["preds"])[keep], q_values)
        for identifier, inputs, preds, q in rows:
            original_name, to_original = inverse_aug(self.identifiers[identifier])
            input_key = grid_hash(to_original(crop(inputs)))
            grid = to_original(crop(preds))
            grid_key = grid_hash(grid)
            self.grids[grid_key] = grid
            self.votes.setdefault(original_name, {}).setdefault(input_key, []).append((grid_key, float(q)))

    def result(self, save_dir: str | Path | None = None, group: mx.distributed.Group | None = None) -> dict:
        """pass@K over all test puzzles; rank 0 writes `save_dir/submission.json`. Collective when `group` has
        more than one process (every rank must call it)."""
        grids, votes = self.grids, self.votes
        rank = 0
        if group is not None and group.size() > 1:
            rank = group.rank()
            grids, votes = merge_states(all_gather_objects((self.grids, self.votes), group))

        submission = {}
        pass_totals = [0.0] * len(self.pass_ks)
        for name, pairs in self.test_pairs.items():
            entries = []
            pairs_correct = [0] * len(self.pass_ks)
            for input_key, label_key in pairs:
                ranked = rank_candidates(votes.get(name, {}).get(input_key, []))
                for i, k in enumerate(self.pass_ks):
                    pairs_correct[i] += label_key in ranked[:k]
                attempts = [grids[h].tolist() for h in ranked[: self.submission_k]] or [FALLBACK_ATTEMPT]
                attempts += [attempts[0]] * (self.submission_k - len(attempts))
                entries.append({f"attempt_{i + 1}": grid for i, grid in enumerate(attempts)})
            submission[name] = entries
            for i in range(len(self.pass_ks)):
                pass_totals[i] += pairs_correct[i] / len(pairs)

        self.submission = submission
        if save_dir is not None and rank == 0:
            write_json_atomic(Path(save_dir) / "submission.json", submission)
        return {f"ARC/pass@{k}": pass_totals[i] / len(self.test_pairs) for i, k in enumerate(self.pass_ks)}
