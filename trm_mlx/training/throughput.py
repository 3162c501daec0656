"""Training throughput of trm-train's compiled step on one process or a data-parallel group, to see how a run scales
with ranks before spending days on it.

    python -m trm_mlx.training.throughput --preset arc1                        # one process, 192 rows
    mlx.launch -n 2 -- python -m trm_mlx.training.throughput --preset arc1     # two ranks, 192 rows each

Each rank runs the step trm-train runs (forward, backward, the gradient all-reduce, the gathered sign-SGD, the
metric sum) on synthetic batches of the preset's data shapes, reading each step's metrics while the next one runs,
as the training loop does. Rank 0 prints its progress on stderr as it goes and one JSON line at the end (``--out
FILE`` appends it to FILE too), also when ``--max-seconds`` stopped the run early. Scaling efficiency of N ranks =
examples/s with N ranks / (N x examples/s with one), at the same rows per rank (``--summarize FILE``).
"""

import argparse
import json
import sys
import time
from pathlib import Path

from trm_mlx.blas import load_fast_blas

load_fast_blas()  # an entry module: the CPU BLAS loads before MLX does

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402

from trm_mlx.training.config import preset_run  # noqa: E402
from trm_mlx.training.state import create_train_state, num_params  # noqa: E402
from trm_mlx.training.trainer import make_train_step, reduce_train_metrics, train_batch, training_runtime  # noqa: E402


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


def measure(preset: str, rows_per_rank: int, warmup: int, steps: int, overrides: list[str],
            max_seconds: float | None = None, ranks: int | None = None) -> dict | None:  # fmt: skip
    """Seconds per step and examples/s over ``steps`` steps after ``warmup``; the result on rank 0, else None.

    Past ``max_seconds`` after the start no rank queues another step, and the result covers the timed steps done.
    Ranks must run the same number of steps (each step's collectives wait for all of them), so each step carries a
    one-number all-reduce of "out of time" that every rank reads with the step's metrics, one step later.
    ``ranks``, when given, is the group size the caller launched: a launcher whose backend this MLX lacks leaves
    each process a group of one, which would otherwise measure one process N times.
    """
    started = time.perf_counter()
    group = mx.distributed.init()
    world_size = group.size()
    if ranks is not None and world_size != ranks:
        raise SystemExit(f"throughput: expected {ranks} rank(s), found a group of {world_size} (is MLX's backend for "
                         "this launcher available here?)")  # fmt: skip
    global_batch = rows_per_rank * world_size
    say(group, f"{world_size} rank(s) ready after {time.perf_counter() - started:.1f} s")
    if world_size > 1:  # a first collective on its own: a backend that hangs shows here, not in the first step
        start = time.perf_counter()
        mx.eval(mx.distributed.all_sum(mx.ones(1), group=group))
        say(group, f"first all-reduce {time.perf_counter() - start:.2f} s")
    say(group, f"building the {preset} model")
    config, metadata = preset_run(preset, overrides, global_batch)
    start = time.perf_counter()
    runtime = training_runtime(config, group)
    state = create_train_state(config, metadata, runtime)
    step_fn, compiled_state = make_train_step(state, config, runtime)
    batches = rank_batches(metadata, global_batch, 4, group.rank(), world_size)
    setup_s = time.perf_counter() - start
    say(group, f"set-up {setup_s:.1f} s; compiling and running the first step")

    def any_rank_out_of_time() -> mx.array:
        out = max_seconds is not None and time.perf_counter() - started > max_seconds
        return mx.distributed.all_sum(mx.array(int(out), dtype=mx.int32), group=group)

    pending = []  # the previous step's metrics and out-of-time vote

    def step(i: int) -> bool:
        """Queue step ``i``, then wait for step ``i - 1``; True when a rank was out of time as it queued that."""
        metrics, _ = train_batch(config, state, step_fn, compiled_state, batches[i % len(batches)])
        vote = any_rank_out_of_time()
        mx.async_eval(vote)
        pending.append((metrics, vote))
        if len(pending) == 1:
            return False
        metrics, vote = pending.pop(0)
        reduce_train_metrics(metrics, global_batch, 0.0)
        return vote.item() > 0

    start = time.perf_counter()
    step(0)
    mx.eval(state.carry, compiled_state)
    first_step_s = time.perf_counter() - start
    say(group, f"first step {first_step_s:.1f} s; {warmup - 1} more warm-up and {steps} timed steps")
    stop = any_rank_out_of_time().item() > 0  # outside the timing, so it may wait
    i, timed_start = 1, None
    while not stop and i < warmup + steps:
        if i == warmup:
            mx.eval(state.carry, compiled_state)
            timed_start = time.perf_counter()
        before = time.perf_counter()
        stop = step(i)
        label = f"step {i - warmup + 1}/{steps}" if i >= warmup else f"warm-up step {i + 1}/{warmup}"
        say(group, f"{label}: {time.perf_counter() - before:.3f} s")
        i += 1
    mx.eval(state.carry, compiled_state, pending)  # no collective may be left running when the ranks exit
    timed_steps = max(i - warmup, 0)
    step_s = (time.perf_counter() - timed_start) / timed_steps if timed_steps else None
    if stop:
        say(group, f"stopped by --max-seconds {max_seconds:g} after {timed_steps} timed steps")
    if group.rank() != 0:
        return None
    return {
        "preset": preset,
        "ranks": world_size,
        "rows_per_rank": rows_per_rank,
        "global_batch": global_batch,
        "dtype": config.arch.model_extra.get("forward_dtype"),
        "steps": timed_steps,
        "stopped_early": timed_steps < steps,
        "step_s": None if step_s is None else round(step_s, 5),
        "examples_per_s": None if step_s is None else round(global_batch / step_s, 1),
        "setup_s": round(setup_s, 2),
        "first_step_s": round(first_step_s, 2),
        "wall_s": round(time.perf_counter() - started, 1),
        "allreduce_mib_per_step": round(4 * num_params(state.head) / 2**20, 1),
        "device": f"{runtime.describe_backend()} [mlx {mx.__version__}]",
    }


def scaling_summary(results: list[dict]) -> str:
    """One line: examples/s of 1 and of N ranks and the scaling efficiency, from the last result of each number of
    ranks at the last result's preset and rows per rank."""
    if not results:
        return "scaling: no results"
    preset, rows = results[-1]["preset"], results[-1]["rows_per_rank"]
    speeds = {r["ranks"]: r["examples_per_s"] for r in results if (r["preset"], r["rows_per_rank"]) == (preset, rows)}
    one = speeds.get(1)
    parts = []
    for ranks in sorted(set(speeds) | {1}):
        speed = speeds.get(ranks)
        if speed is None:
            parts.append(f"{ranks} rank(s): {'no timed steps' if ranks in speeds else 'no result'}")
        elif ranks > 1 and one is not None:
            parts.append(f"{ranks} rank(s) {speed} examples/s = {100 * speed / (ranks * one):.1f}% efficiency")
        else:
            parts.append(f"{ranks} rank(s) {speed} examples/s")
    if max(speeds) == 1:
        parts.append("no result with more ranks")
    return f"scaling {preset}, {rows} rows per rank: " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="arc1", help="a configs/preset/ name with a `benchmark` key")
    parser.add_argument("--rows-per-rank", type=int, default=192, help="rows of each global batch per rank")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, at least 1 (the first compiles)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--max-seconds", type=float, help="queue no step past this many seconds after the start; "
                        "the result covers the timed steps done")  # fmt: skip
    parser.add_argument("--ranks", type=int, help="fail at once unless the group has this many ranks")
    parser.add_argument("--out", type=Path, help="append the JSON line to this file too")
    parser.add_argument("--summarize", type=Path, metavar="FILE",
                        help="only print the scaling efficiency of the JSON lines in FILE")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="trm-train config overrides, e.g. arch.forward_dtype=float32")
    args = parser.parse_args()
    if args.summarize is not None:
        print(scaling_summary([json.loads(line) for line in args.summarize.read_text().splitlines() if line]))
        return
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: the first step compiles")
    result = measure(args.preset, args.rows_per_rank, args.warmup, args.steps, args.overrides, args.max_seconds,
                     args.ranks)  # fmt: skip
    if result is not None:
        line = json.dumps(result)
        print(line, flush=True)
        if args.out is not None:
            with args.out.open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
