"""Training throughput of trm-train's compiled step on one process or a data-parallel group, to see how a run scales
with ranks before spending days on it.

    python -m trm_mlx.training.throughput --preset arc1                        # one process, 192 rows
    mlx.launch -n 2 -- python -m trm_mlx.training.throughput --preset arc1     # two ranks, 192 rows each

Each rank runs the step trm-train runs (forward, backward, the gradient all-reduce, the gathered sign-SGD, the
metric sum) on synthetic batches of the preset's data shapes, reading each step's metrics while the next one runs,
as the training loop does. Rank 0 prints one JSON line (``--out FILE`` appends it to FILE too). Scaling efficiency
of N ranks = examples/s with N ranks / (N x examples/s with one), at the same rows per rank.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from trm_mlx.data.metadata import PuzzleDatasetMetadata
from trm_mlx.device import describe
from trm_mlx.training.config import compose, from_hydra
from trm_mlx.training.state import create_train_state, num_params
from trm_mlx.training.trainer import make_train_step, reduce_train_metrics, train_batch

# (seq_len, vocab_size, num_puzzle_identifiers) of each preset's dataset as the builders write it; arc1's table is
# arc1concept-aug-1000's: 960 groups x (1 + 1000 augmentations) + the blank id.
DATA_SHAPES = {
    "demo": (81, 11, 1),
    "sudoku_mlp": (81, 11, 1),
    "sudoku_att": (81, 11, 1),
    "maze": (900, 6, 1),
    "arc1": (900, 12, 960_961),
}


def synthetic_metadata(preset: str) -> PuzzleDatasetMetadata:
    """The preset's shapes; the counts only size the LR schedule, far beyond the measured steps."""
    seq_len, vocab_size, num_ids = DATA_SHAPES[preset]
    return PuzzleDatasetMetadata(
        pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=vocab_size, seq_len=seq_len,
        num_puzzle_identifiers=num_ids, total_groups=10**7, mean_puzzle_examples=1.0, total_puzzles=10**7,
        sets=["all"],
    )  # fmt: skip


def rank_batches(metadata, global_batch: int, count: int, rank: int, world_size: int) -> list[dict[str, np.ndarray]]:
    """This rank's rows of ``count`` seeded global batches (every rank draws the same ones, as the loader does)."""
    rng = np.random.default_rng(0)
    rows = slice(rank * global_batch // world_size, (rank + 1) * global_batch // world_size)
    batches = []
    for _ in range(count):
        shape = (global_batch, metadata.seq_len)
        batch = {
            "inputs": rng.integers(1, metadata.vocab_size, shape, dtype=np.int32),
            "labels": rng.integers(1, metadata.vocab_size, shape, dtype=np.int32),
            "puzzle_identifiers": rng.integers(0, metadata.num_puzzle_identifiers, global_batch, dtype=np.int32),
        }
        batches.append({key: value[rows] for key, value in batch.items()})
    return batches


def say(group: mx.distributed.Group, line: str) -> None:
    """Progress on stderr (rank 0): a run stopped by a time limit still tells where its time went."""
    if group.rank() == 0:
        print(line, file=sys.stderr, flush=True)


def measure(preset: str, rows_per_rank: int, warmup: int, steps: int, overrides: list[str]) -> dict | None:
    """Seconds per step and examples/s over ``steps`` steps after ``warmup``; the result on rank 0, else None."""
    group = mx.distributed.init()
    world_size = group.size()
    global_batch = rows_per_rank * world_size
    config = from_hydra(compose([f"preset={preset}", f"global_batch_size={global_batch}", "ema=False",
                                 "evaluators=[]", *overrides]))  # fmt: skip
    metadata = synthetic_metadata(preset)
    start = time.perf_counter()
    state = create_train_state(config, metadata, group)
    step_fn, compiled_state = make_train_step(state, config, group)
    batches = rank_batches(metadata, global_batch, 4, group.rank(), world_size)
    setup_s = time.perf_counter() - start
    say(group, f"{world_size} rank(s): set-up {setup_s:.1f} s; compiling the first step")
    pending = []

    def step(i: int) -> None:
        queued = train_batch(config, state, step_fn, compiled_state, batches[i % len(batches)])
        if pending:
            reduce_train_metrics(pending.pop(), global_batch, 0.0)
        pending.append(queued[0])

    start = time.perf_counter()
    step(0)
    mx.eval(state.carry, compiled_state)
    first_step_s = time.perf_counter() - start
    say(group, f"first step {first_step_s:.1f} s; {warmup - 1} more warm-up and {steps} timed steps")
    for i in range(1, warmup):
        step(i)
    mx.eval(state.carry, compiled_state)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    mx.eval(state.carry, compiled_state)
    step_s = (time.perf_counter() - start) / steps
    if group.rank() != 0:
        return None
    return {
        "preset": preset,
        "ranks": world_size,
        "rows_per_rank": rows_per_rank,
        "global_batch": global_batch,
        "dtype": config.arch.model_extra.get("forward_dtype"),
        "steps": steps,
        "step_s": round(step_s, 5),
        "examples_per_s": round(global_batch / step_s, 1),
        "setup_s": round(setup_s, 2),
        "first_step_s": round(first_step_s, 2),
        "allreduce_mib_per_step": round(4 * num_params(state.head) / 2**20, 1),
        "device": f"{describe()} [mlx {mx.__version__}]",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="arc1", choices=sorted(DATA_SHAPES))
    parser.add_argument("--rows-per-rank", type=int, default=192, help="rows of each global batch per rank")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first one compiles)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--out", type=Path, help="append the JSON line to this file too")
    parser.add_argument("overrides", nargs="*", help="trm-train config overrides, e.g. arch.forward_dtype=float32")
    args = parser.parse_args()
    result = measure(args.preset, args.rows_per_rank, args.warmup, args.steps, args.overrides)
    if result is not None:
        line = json.dumps(result)
        print(line, flush=True)
        if args.out is not None:
            with args.out.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
