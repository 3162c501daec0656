"""The ARC evaluator against the original's algorithm (legacy.evaluators.ARC) and hand-derived votes."""

import hashlib
import json

import numpy as np
import pytest
from arc_helpers import legacy_evaluator, to_torch

from legacy.dataset import common as legacy_common
from trm_mlx.data import grids
from trm_mlx.evaluation.arc import FALLBACK_ATTEMPT, PASS_KS, ARCEvaluator, rank_candidates


def run_legacy(fixture, save_dir):
    evaluator = legacy_evaluator(fixture.data_dir)
    evaluator.begin_eval()
    for batch, outputs in fixture.batches:
        evaluator.update_batch(to_torch(batch), to_torch(outputs))
    save_dir.mkdir()
    result = evaluator.result(str(save_dir), rank=0, world_size=1)
    return result, json.loads((save_dir / "submission.json").read_text())


def run_ours(fixture, save_dir, **kwargs):
    evaluator = ARCEvaluator(fixture.data_dir, **kwargs)
    evaluator.begin_eval()
    for batch, outputs in fixture.batches:
        evaluator.update_batch(batch, outputs)
    result = evaluator.result(save_dir)
    return evaluator, result, json.loads((save_dir / "submission.json").read_text())


def test_pass_at_k_equals_original_evaluator(arc_eval_fixture, tmp_path):
    expected, _ = run_legacy(arc_eval_fixture, tmp_path / "legacy")
    _, result, _ = run_ours(arc_eval_fixture, tmp_path / "ours")
    assert result == expected
    assert list(result) == [f"ARC/pass@{k}" for k in PASS_KS]
    # The fixture must exercise the ranking: right answers outvoted at K=1, but found further down.
    assert 0 < result["ARC/pass@1"] < result["ARC/pass@5"] < 1


def test_submission_has_an_entry_for_every_test_input(arc_eval_fixture, tmp_path):
    _, legacy_submission = run_legacy(arc_eval_fixture, tmp_path / "legacy")
    _, _, submission = run_ours(arc_eval_fixture, tmp_path / "ours")
    assert list(submission) == list(arc_eval_fixture.test_puzzles)
    unvoted_name, unvoted_index = arc_eval_fixture.unvoted_pair
    for name, puzzle in arc_eval_fixture.test_puzzles.items():
        entries = submission[name]
        assert len(entries) == len(puzzle["test"])
        assert all(set(entry) == {"attempt_1", "attempt_2"} for entry in entries)
        voted = [
            entry for i, entry in enumerate(entries)
            if name != arc_eval_fixture.unvoted_puzzle and (name, i) != (unvoted_name, unvoted_index)
        ]  # fmt: skip
        # The original drops pairs without votes, shifting the rest; where it has entries, they agree with ours.
        assert voted == legacy_submission[name]
    assert submission[arc_eval_fixture.unvoted_puzzle] == [{"attempt_1": FALLBACK_ATTEMPT, "attempt_2": FALLBACK_ATTEMPT}]
    assert submission[unvoted_name][unvoted_index]["attempt_1"] == FALLBACK_ATTEMPT
    assert legacy_submission[arc_eval_fixture.unvoted_puzzle] == []
    assert len(legacy_submission[unvoted_name]) == len(arc_eval_fixture.test_puzzles[unvoted_name]["test"]) - 1


def _hand_made_task(tmp_path):
    """One puzzle `p`, one test pair whose answer is [[1, 2]], seen under its own name and a flipped name."""
    data_dir = tmp_path / "hand"
    data_dir.mkdir()
    flipped = "p|||t4|||0123456789"  # tid 4 = left-right mirror, colours unchanged
    (data_dir / "identifiers.json").write_text(json.dumps(["<blank>", "p", flipped]))
    puzzle = {"train": [], "test": [{"input": [[3, 3, 3]], "output": [[1, 2]]}]}
    (data_dir / "test_puzzles.json").write_text(json.dumps({"p": puzzle}))
    return data_dir


def _canvas(grid):
    grid = np.array(grid)
    canvas = np.zeros((30, 30), np.int32)
    canvas[: grid.shape[0], : grid.shape[1]] = grid + 2
    canvas[grid.shape[0], : grid.shape[1]] = 1
    canvas[: grid.shape[0], grid.shape[1]] = 1
    return canvas.ravel()


def test_rank_candidates_by_count_then_mean_q_ties_first_seen():
    votes = [("a", 0.5), ("b", 0.9), ("c", 0.7), ("b", 0.1), ("a", 0.5), ("d", 0.7), ("e", 0.2)]
    # a and b: 2 votes, mean 0.5 each (tie, a seen first); c and d: 1 vote at 0.7 (tie); e: 1 vote at 0.2.
    assert rank_candidates(votes) == ["a", "b", "c", "d", "e"]
    assert rank_candidates([("d", 0.7), ("c", 0.7), ("c", 0.1)]) == ["c", "d"]


def test_votes_of_augmented_predictions_hand_derived(tmp_path):
    evaluator = ARCEvaluator(_hand_made_task(tmp_path), pass_ks=(1, 2, 3))
    right, wrong_a, wrong_b = [[1, 2]], [[5, 5]], [[7]]
    # (puzzle id, prediction in that puzzle's frame, q_halt logit); id 2 is mirrored, so [[2, 1]] means [[1, 2]].
    rows = [
        (1, wrong_b, 3.0),
        (1, wrong_a, 1.0),
        (2, [[2, 1]], 2.0),
        (2, wrong_a, 4.0),
        (1, right, 0.0),
        (1, [[2, 1]], 5.0),  # under the plain name this is a wrong answer
    ]
    batch = {
        "inputs": np.stack([_canvas([[3, 3, 3]])] * len(rows)),
        "puzzle_identifiers": np.array([r[0] for r in rows], np.int32),
    }
    outputs = {
        "preds": np.stack([_canvas(r[1]) for r in rows]),
        "q_halt_logits": np.array([r[2] for r in rows], np.float32),
    }
    evaluator.update_batch(batch, outputs)
    # wrong_a: 2 votes, mean q (s(1) + s(4)) / 2 = 0.857; right: 2 votes, (s(2) + s(0)) / 2 = 0.690;
    # [[2, 1]]: 1 vote, s(5); wrong_b: 1 vote, s(3)  ->  wrong_a, right, [[2, 1]], wrong_b.
    result = evaluator.result(tmp_path / "out")
    assert result == {"ARC/pass@1": 0.0, "ARC/pass@2": 1.0, "ARC/pass@3": 1.0}
    submission = json.loads((tmp_path / "out" / "submission.json").read_text())
    assert submission == {"p": [{"attempt_1": wrong_a, "attempt_2": right}]}


def test_begin_eval_clears_unless_accumulating(arc_eval_fixture, tmp_path):
    for accumulate in (False, True):
        evaluator, first, _ = run_ours(arc_eval_fixture, tmp_path / f"first-{accumulate}", accumulate=accumulate)
        evaluator.begin_eval()
        again = evaluator.result()
        if accumulate:
            assert again == first
        else:
            assert set(again.values()) == {0.0}
            assert evaluator.submission[arc_eval_fixture.unvoted_puzzle][0]["attempt_1"] == FALLBACK_ATTEMPT


def test_grid_helpers_agree_with_the_original(arc_eval_fixture):
    rng = np.random.default_rng(1)
    for _ in range(300):
        canvas = np.zeros((30, 30), np.int32)
        h, w = rng.integers(0, 31, size=2)
        canvas[:h, :w] = rng.integers(2, 12, size=(h, w))
        holes = rng.integers(0, 30, size=(2, rng.integers(0, 6)))
        canvas[holes[0], holes[1]] = rng.integers(0, 2, size=holes.shape[1])
        ours, theirs = grids.crop(canvas.ravel()), legacy_common.crop(canvas.ravel())
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == np.uint8 and (ours == theirs).all()
    assert grids.crop(np.zeros(900, np.int32)).shape == (0, 0)

    grid = rng.integers(0, 10, size=(3, 5)).astype(np.uint8)
    identifiers = json.loads((arc_eval_fixture.data_dir / "identifiers.json").read_text())
    for name in identifiers[1:]:
        ours_name, ours_fn = grids.inverse_aug(name)
        theirs_name, theirs_fn = legacy_common.inverse_aug(name)
        assert ours_name == theirs_name == name.split("|||")[0]
        assert grids.grid_hash(ours_fn(grid)) == legacy_common.grid_hash(theirs_fn(grid))
    for tid in range(8):
        assert (grids.dihedral_transform(grids.dihedral_transform(grid, tid), grids.DIHEDRAL_INVERSE[tid]) == grid).all()

    # SHA-256 of (rows, cols) bytes then the cells, C order.
    assert grids.grid_hash(np.array([[1, 2, 3]], np.uint8)) == hashlib.sha256(bytes([1, 3, 1, 2, 3])).hexdigest()
    puzzle = {"train": [(grid, grid.T.copy())], "test": [(grid[:2].copy(), grid[:1].copy())]}
    swapped = {"test": puzzle["train"], "train": puzzle["test"]}
    assert grids.puzzle_hash(puzzle) == grids.puzzle_hash(swapped) == legacy_common.puzzle_hash(puzzle)


def test_bad_inputs_name_the_problem(arc_eval_fixture, tmp_path):
    with pytest.raises(FileNotFoundError, match="identifiers.json"):
        ARCEvaluator(tmp_path)
    with pytest.raises(ValueError, match="colour map"):
        grids.inverse_aug("x|||t1|||0123456788")
    evaluator = ARCEvaluator(arc_eval_fixture.data_dir)
    batch, outputs = arc_eval_fixture.batches[0]
    bad = dict(batch, puzzle_identifiers=batch["puzzle_identifiers"] + 10_000)
    with pytest.raises(ValueError, match="outside identifiers.json"):
        evaluator.update_batch(bad, outputs)
