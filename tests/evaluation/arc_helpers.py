"""A small ARC evaluation fixture from real ARC-AGI-1 evaluation tasks, with fake model outputs.

It writes what an ARC build gives the evaluator (`identifiers.json`, `test_puzzles.json`) for a few tasks, each
under its own name and three augmented names, and collated eval batches (with padding rows) whose predictions mix
right answers, near misses, other grids and empty canvases, all drawn in the augmented frame.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from legacy.dataset.common import PuzzleDatasetMetadata
from legacy.evaluators.arc import ARC
from trm_mlx.data.grids import dihedral_transform

BATCH_SIZE = 16
PUZZLES_WITH_ONE_TEST = 9
PUZZLES_WITH_TWO_TESTS = 3


def encode_canvas(grid: np.ndarray) -> np.ndarray:
    """A grid as the builder stores a test-split example: top-left, EOS after its last row and column."""
    h, w = grid.shape
    canvas = np.zeros((30, 30), dtype=np.uint8)
    canvas[:h, :w] = grid + 2
    if h < 30:
        canvas[h, :w] = 1
    if w < 30:
        canvas[:h, w] = 1
    return canvas.ravel()


def augment(grid: np.ndarray, tid: int, mapping: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(dihedral_transform(mapping[grid], tid))


@dataclass
class ArcEvalFixture:
    data_dir: Path
    test_puzzles: dict
    batches: list  # [(batch, outputs)] as NumPy dicts, as the eval loop hands them to evaluators
    unvoted_pair: tuple[str, int]  # a test pair that gets no rows at all
    unvoted_puzzle: str  # a test puzzle that gets no rows at all

    def rows(self) -> dict[str, np.ndarray]:
        """All batches concatenated, as an original `step_N_all_preds.0` file holds them."""
        keys = ("inputs", "labels", "puzzle_identifiers")
        rows = {k: np.concatenate([b[k] for b, _ in self.batches]) for k in keys}
        rows.update({k: np.concatenate([o[k] for _, o in self.batches]) for k in ("preds", "q_halt_logits")})
        return rows


def _candidates(rng, grid_in: np.ndarray, grid_out: np.ndarray) -> list[np.ndarray | None]:
    near_miss = grid_out.copy()
    r, c = rng.integers(0, near_miss.shape[0]), rng.integers(0, near_miss.shape[1])
    near_miss[r, c] = (near_miss[r, c] + 1) % 10
    other = rng.integers(0, 10, size=(rng.integers(1, 6), rng.integers(1, 6)), dtype=np.uint8)
    return [grid_out, near_miss, grid_in, other, None]  # None: an all-PAD canvas (crops to 0x0)


def build_arc_eval_fixture(arc_dir: Path, out_dir: Path, seed: int = 0) -> ArcEvalFixture:
    rng = np.random.default_rng(seed)
    challenges = json.loads((arc_dir / "arc-agi_evaluation_challenges.json").read_text())
    solutions = json.loads((arc_dir / "arc-agi_evaluation_solutions.json").read_text())
    names = sorted(challenges)
    singles = [n for n in names if len(challenges[n]["test"]) == 1][:PUZZLES_WITH_ONE_TEST + 1]
    doubles = [n for n in names if len(challenges[n]["test"]) == 2][:PUZZLES_WITH_TWO_TESTS]
    chosen = singles + doubles
    rng.shuffle(chosen)

    test_puzzles = {}
    for name in chosen:
        puzzle = json.loads(json.dumps(challenges[name]))
        for pair, solution in zip(puzzle["test"], solutions[name]):
            pair["output"] = solution
        test_puzzles[name] = puzzle

    unvoted_puzzle = singles[-1]
    unvoted_pair = (doubles[0], 0)
    versions = {}  # augmented name -> (original name, tid, colour mapping)
    for name in chosen:
        versions[name] = (name, 0, np.arange(10, dtype=np.uint8))
        for _ in range(3):
            tid = int(rng.integers(0, 8))
            mapping = np.concatenate([[0], rng.permutation(np.arange(1, 10))]).astype(np.uint8)
            versions[f"{name}|||t{tid}|||{''.join(map(str, mapping))}"] = (name, tid, mapping)
    identifiers = ["<blank>"] + [str(n) for n in rng.permutation(list(versions))]
    ids = {name: i for i, name in enumerate(identifiers)}

    inputs, preds, puzzle_ids, q_logits = [], [], [], []
    for aug_name, (name, tid, mapping) in versions.items():
        if name == unvoted_puzzle:
            continue
        for test_index, pair in enumerate(test_puzzles[name]["test"]):
            if (name, test_index) == unvoted_pair:
                continue
            grid_in = np.array(pair["input"], dtype=np.uint8)
            grid_out = np.array(pair["output"], dtype=np.uint8)
            options = _candidates(rng, grid_in, grid_out)
            for _ in range(int(rng.integers(1, 4))):
                choice = options[rng.choice(len(options), p=[0.35, 0.3, 0.15, 0.1, 0.1])]
                pred = np.zeros(900, np.uint8) if choice is None else encode_canvas(augment(choice, tid, mapping))
                if choice is not None and rng.random() < 0.5:  # junk past the EOS border must be cropped away
                    canvas = pred.reshape(30, 30)
                    h, w = augment(choice, tid, mapping).shape
                    canvas[h + 1 :, :] = rng.integers(0, 12, size=canvas[h + 1 :, :].shape)
                    canvas[:h, w + 1 :] = rng.integers(0, 12, size=canvas[:h, w + 1 :].shape)
                inputs.append(encode_canvas(augment(grid_in, tid, mapping)))
                preds.append(pred)
                puzzle_ids.append(ids[aug_name])
                q_logits.append(rng.choice([-3.0, -1.5, 0.0, 0.5, 2.0, 4.0]))

    order = rng.permutation(len(inputs))
    batches = []
    for start in range(0, len(order), BATCH_SIZE):
        rows = order[start : start + BATCH_SIZE]
        pad = BATCH_SIZE - len(rows)
        batch = {
            "inputs": np.concatenate([np.stack([inputs[i] for i in rows]), np.zeros((pad, 900), np.uint8)]),
            "puzzle_identifiers": np.array([puzzle_ids[i] for i in rows] + [0] * pad),
        }
        batch = {k: v.astype(np.int32) for k, v in batch.items()}
        batch["labels"] = np.full((BATCH_SIZE, 900), -100, dtype=np.int32)  # ARC voting never reads labels
        outputs = {
            "preds": np.concatenate([np.stack([preds[i] for i in rows]), rng.integers(0, 12, (pad, 900))]).astype(
                np.int64
            ),
            "q_halt_logits": np.array([q_logits[i] for i in rows] + list(rng.normal(size=pad)), dtype=np.float32),
        }
        batches.append((batch, outputs))

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "identifiers.json").write_text(json.dumps(identifiers))
    (out_dir / "test_puzzles.json").write_text(json.dumps(test_puzzles))
    return ArcEvalFixture(out_dir, test_puzzles, batches, unvoted_pair, unvoted_puzzle)


def legacy_evaluator(data_dir) -> ARC:
    identifiers = json.loads((data_dir / "identifiers.json").read_text())
    metadata = PuzzleDatasetMetadata(
        pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=12, seq_len=900,
        num_puzzle_identifiers=len(identifiers), total_groups=1, mean_puzzle_examples=1.0, total_puzzles=1,
        sets=["all"],
    )  # fmt: skip
    return ARC(str(data_dir), metadata)


def to_torch(arrays: dict) -> dict:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
