"""Re-scoring saved predictions: original `step_N_all_preds.R` files give the original evaluator's numbers."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from arc_helpers import legacy_evaluator, to_torch

from trm_mlx.evaluation.arc import ARCEvaluator
from trm_mlx.evaluation.preds import load_predictions, read_predictions_file, save_predictions

WORKER = Path(__file__).with_name("rank_worker.py")
ORIGINAL_DTYPES = {
    "inputs": torch.int32, "labels": torch.int32, "puzzle_identifiers": torch.int32,
    "preds": torch.int64, "q_halt_logits": torch.float32,
}  # fmt: skip


def rank_rows(fixture, world_size: int) -> list[dict]:
    """What each rank of the original collects: its slice of every global batch, concatenated."""
    per_rank = []
    for rank in range(world_size):
        parts = []
        for batch, outputs in fixture.batches:
            local = len(batch["inputs"]) // world_size
            rows = slice(rank * local, (rank + 1) * local)
            parts.append({k: v[rows] for k, v in {**batch, **outputs}.items()})
        per_rank.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return per_rank


def write_original_files(fixture, directory: Path, world_size: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, rows in enumerate(rank_rows(fixture, world_size)):
        path = directory / f"step_1_all_preds.{rank}"
        torch.save({k: torch.from_numpy(v).to(ORIGINAL_DTYPES[k]) for k, v in rows.items()}, path)
        paths.append(path)
    return paths


def rescore(data_dir, paths, save_dir=None) -> dict:
    rows = load_predictions(paths, required=ARCEvaluator.required_outputs)
    evaluator = ARCEvaluator(data_dir)
    evaluator.update_batch(rows, rows)
    return evaluator.result(save_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rescoring_an_original_file_equals_the_original_evaluator(arc_eval_fixture, tmp_path):
    (path,) = write_original_files(arc_eval_fixture, tmp_path / "run", world_size=1)
    legacy = legacy_evaluator(arc_eval_fixture.data_dir)
    legacy.update_batch(to_torch(arc_eval_fixture.rows()), to_torch(arc_eval_fixture.rows()))
    expected = legacy.result(None, rank=0, world_size=1)
    assert rescore(arc_eval_fixture.data_dir, [path], tmp_path / "out") == expected
    assert (tmp_path / "out" / "submission.json").is_file()


def test_rescoring_rank_files_equals_a_two_process_original_run(arc_eval_fixture, tmp_path):
    paths = write_original_files(arc_eval_fixture, tmp_path / "run", world_size=2)
    data_dir, legacy_out, mlx_out = str(arc_eval_fixture.data_dir), tmp_path / "legacy", tmp_path / "mlx"
    legacy_out.mkdir()
    mlx_out.mkdir()
    port = free_port()
    workers = [
        subprocess.Popen([sys.executable, WORKER, "legacy", data_dir, paths[0].parent, legacy_out, str(r), str(port)])
        for r in range(2)
    ]
    assert [w.wait(timeout=300) for w in workers] == [0, 0]
    expected = json.loads((legacy_out / "result.0.json").read_text())

    # Rank files given in any order are voted in rank order, as the original gathers them.
    assert rescore(arc_eval_fixture.data_dir, [paths[1], paths[0]]) == expected
    assert rescore(arc_eval_fixture.data_dir, paths) != rescore(arc_eval_fixture.data_dir, paths[:1])

    launcher = Path(sys.executable).with_name("mlx.launch")
    command = [launcher, "-n", "2", "--backend", "ring", "--starting-port", str(free_port()), "--python", sys.executable]
    subprocess.run([*command, WORKER, "mlx", data_dir, paths[0].parent, mlx_out], check=True, timeout=300)
    for rank in range(2):
        assert json.loads((mlx_out / f"result.{rank}.json").read_text()) == expected
    legacy_submission = json.loads((legacy_out / "submission.json").read_text())
    ours_submission = json.loads((mlx_out / "submission.json").read_text())
    unvoted_name, unvoted_index = arc_eval_fixture.unvoted_pair
    del ours_submission[unvoted_name][unvoted_index]
    ours_submission[arc_eval_fixture.unvoted_puzzle] = []
    assert ours_submission == legacy_submission


def test_native_predictions_round_trip_and_errors(arc_eval_fixture, tmp_path):
    rows = arc_eval_fixture.rows()
    path = save_predictions(tmp_path / "all_preds.0.npz", rows)
    loaded = read_predictions_file(path)
    assert loaded.keys() == rows.keys() and all((loaded[k] == rows[k]).all() for k in rows)
    assert rescore(arc_eval_fixture.data_dir, [path]) == rescore(
        arc_eval_fixture.data_dir, write_original_files(arc_eval_fixture, tmp_path / "run", world_size=1)
    )

    partial = save_predictions(tmp_path / "partial.npz", {k: v for k, v in rows.items() if k != "q_halt_logits"})
    with pytest.raises(ValueError, match=r"partial\.npz.*q_halt_logits"):
        load_predictions([partial], required=ARCEvaluator.required_outputs)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_predictions([tmp_path / "missing"])
    (tmp_path / "garbage.0").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="garbage"):
        load_predictions([tmp_path / "garbage.0"])
