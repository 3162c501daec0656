"""One rank of a 2-process ARC evaluation, run as a script by test_eval_preds.py.

    rank_worker.py legacy DATA_DIR PREDS_DIR OUT_DIR RANK PORT   # original evaluator over torch.distributed (gloo)
    rank_worker.py mlx DATA_DIR PREDS_DIR OUT_DIR                # ours over mx.distributed (launched by mlx.launch)

Rank R reads PREDS_DIR/step_1_all_preds.R and writes OUT_DIR/result.R.json (OUT_DIR is also the save dir).
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def run_legacy(data_dir: str, preds_dir: Path, out_dir: Path, rank: int, port: int) -> None:
    import torch
    import torch.distributed as dist

    from legacy.dataset.common import PuzzleDatasetMetadata
    from legacy.evaluators.arc import ARC

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    rows = torch.load(preds_dir / f"step_1_all_preds.{rank}")
    num_ids = len(json.loads((Path(data_dir) / "identifiers.json").read_text()))
    metadata = PuzzleDatasetMetadata(
        pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=12, seq_len=900,
        num_puzzle_identifiers=num_ids, total_groups=1, mean_puzzle_examples=1.0, total_puzzles=1, sets=["all"],
    )  # fmt: skip
    evaluator = ARC(data_dir, metadata)
    evaluator.update_batch(
        {k: rows[k] for k in ("inputs", "puzzle_identifiers")}, {k: rows[k] for k in ("preds", "q_halt_logits")}
    )
    result = evaluator.result(str(out_dir), rank=rank, world_size=2)
    (out_dir / f"result.{rank}.json").write_text(json.dumps(result))
    dist.barrier()  # neither rank tears the group down while the other still uses it
    dist.destroy_process_group()
    os._exit(0)  # no interpreter teardown: gloo's threads can abort a process there (SIGABRT) after the work is done


def run_mlx(data_dir: str, preds_dir: Path, out_dir: Path) -> None:
    import mlx.core as mx

    from trm_mlx.evaluation.arc import ARCEvaluator
    from trm_mlx.evaluation.preds import read_predictions_file

    group = mx.distributed.init(strict=True, backend="ring")
    rows = read_predictions_file(preds_dir / f"step_1_all_preds.{group.rank()}")
    evaluator = ARCEvaluator(data_dir)
    evaluator.update_batch(rows, rows)
    result = evaluator.result(out_dir, group=group)
    (out_dir / f"result.{group.rank()}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    mode, data_dir, preds_dir, out_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    if mode == "legacy":
        run_legacy(data_dir, preds_dir, out_dir, int(sys.argv[5]), int(sys.argv[6]))
    else:
        run_mlx(data_dir, preds_dir, out_dir)
