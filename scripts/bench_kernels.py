"""Time each fused kernel against its reference, then a whole compiled train step fused vs reference.

    python scripts/bench_kernels.py                     # kernels, blocks and both presets' steps; table last
    python scripts/bench_kernels.py --part kernels      # only the per-kernel and per-block timings
    python scripts/bench_kernels.py --json results.json

Per kernel: the op alone (forward, and forward + VJP) at the presets' shapes, bf16, each compiled, median of
repeated runs after warm-up, with the fused kernel's achieved bandwidth (bytes it must read and write / time).
Per block: one Block forward + backward under each kernel mode. Whole step: forward of one ACT step, loss,
gradients and an Adam update of every parameter, `mx.compile`d with the model, optimizer and random state as
implicit inputs/outputs; each (preset, mode) runs in its own process so peak memory is its own and an
out-of-memory failure costs only that entry (it is retried at half the batch).
"""

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from functools import cache, partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trm_mlx.blas import load_fast_blas  # noqa: E402

load_fast_blas()  # before MLX loads

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
import mlx.optimizers as optim  # noqa: E402
import numpy as np  # noqa: E402

from trm_mlx import kernels  # noqa: E402
from trm_mlx.kernels import rope  # noqa: E402
from trm_mlx.model import ACTLossHead, architecture, create_model  # noqa: E402
from trm_mlx.model.config import swiglu_intermediate_size  # noqa: E402
from trm_mlx.model.layers import Block  # noqa: E402
from trm_mlx.runtime import Runtime  # noqa: E402
from trm_mlx.training.config import model_arch_config, preset_run  # noqa: E402

BF16 = mx.bfloat16

# This script's names for the presets it times (configs/preset/), with their labels in the kernel table:
# Sudoku-Extreme with the MLP-t block and ARC-AGI-1 with attention, each at one GPU's share of its batch.
PRESETS = {"sudoku_mlp_t": ("sudoku_mlp", "Sudoku"), "arc_attention": ("arc1", "ARC")}
PUZZLE_ROWS = 1000  # a small puzzle table: the steps time the kernels, not ARC's 2 GB table


@cache
def preset_arch(name: str) -> dict:
    """The model config of a preset, from configs/preset/ (batch_size: one GPU's share of the recipe's)."""
    config, metadata = preset_run(PRESETS[name][0])
    return model_arch_config(config, metadata.model_copy(update={"num_puzzle_identifiers": PUZZLE_ROWS}))


def sizes(name: str) -> tuple[int, int, int, int, int]:
    """(batch, positions with the puzzle prefix, hidden size, SwiGLU width, token-mixing SwiGLU width)."""
    config = architecture(preset_arch(name))[1]
    positions = config.seq_len + config.puzzle_prefix_len
    width = swiglu_intermediate_size(config.expansion, config.hidden_size)
    mixing_width = swiglu_intermediate_size(config.expansion, positions)
    return config.batch_size, positions, config.hidden_size, width, mixing_width


def shape_label(shape) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def timed(fn, args, reps: int, warmup: int = 3) -> float:
    """Median wall time in ms of fn(*args) evaluated (mx.eval blocks until the GPU is done)."""
    for _ in range(warmup):
        mx.eval(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        mx.eval(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def with_vjp(fn, static, cotangents):
    def run(*arrays):
        return mx.vjp(lambda *a: as_list(fn(*a, **static)), list(arrays), cotangents)

    return run


def as_list(out):
    return list(out) if isinstance(out, tuple) else [out]


def normal(shape, seed, scale=1.0):
    return (scale * mx.random.normal(shape, key=mx.random.key(seed))).astype(BF16)


def kernel_cases():
    """(op name, label, arrays, static kwargs) at the presets' shapes."""
    cases = {name: [] for name in ("add_rms_norm", "add_rms_norm_seq", "swiglu", "rope_split", "inject_add")}
    for name, (_, label) in PRESETS.items():
        arch = preset_arch(name)
        batch, positions, hidden, width, mixing_width = sizes(name)
        h = (batch, positions, hidden)
        h_label = f"{label} h {shape_label(h)}"
        norm_inputs = (normal(h, 1), normal(h, 2, 0.5))
        cases["add_rms_norm"].append((h_label, norm_inputs, {"eps": 1e-5}))
        mlp = (batch, positions, 2 * width)
        cases["swiglu"].append((f"{label} mlp {shape_label(mlp)}", (normal(mlp, 3, 2.0),), {}))
        if arch["mlp_t"]:
            cases["add_rms_norm_seq"].append((h_label, norm_inputs, {"eps": 1e-5}))
            # The token mixing's gate/up blocks, [2I, D] per example, as kernels.mix_tokens hands them over.
            mixing = (batch, 2 * mixing_width * hidden)
            mixing_label = f"{label} mlp_t [{batch},2x{mixing_width}x{hidden}]"
            cases["swiglu"].append((mixing_label, (normal(mixing, 3, 2.0),), {}))
        if arch["pos_encodings"] == "rope":
            heads = arch["num_heads"]
            qkv = (batch, positions, 3 * hidden)
            static = {"rotary": rope.rotary_tables(positions, hidden // heads), "num_heads": heads}
            cases["rope_split"].append((f"{label} qkv {shape_label(qkv)}", (normal(qkv, 4),), static))
        cases["inject_add"].append((h_label, (normal(h, 5), normal(h, 6)), {}))
    return [(op, *case) for op, op_cases in cases.items() for case in op_cases]


def bench_kernels(reps: int) -> list[dict]:
    rows = []
    for name, label, arrays, static in kernel_cases():
        op = kernels.OPS[name]
        outs = as_list(op.reference(*arrays, **static))
        cots = [normal(o.shape, 7 + i) for i, o in enumerate(outs)]
        row = {"kernel": name, "shape": label}
        for impl_name, impl in (("reference", op.reference), ("fused", op.fused)):
            forward = mx.compile(partial(impl, **static))
            both = mx.compile(with_vjp(impl, static, cots))
            row[f"{impl_name}_fwd_ms"] = timed(forward, arrays, reps)
            row[f"{impl_name}_fwd_bwd_ms"] = timed(both, arrays, reps)
        moved = sum(a.nbytes for a in arrays) + sum(o.nbytes for o in outs)
        row["fused_fwd_GBps"] = moved / row["fused_fwd_ms"] / 1e6
        rows.append(row)
        print_kernel_row(row, flush=True)
    return rows


def bench_blocks(reps: int) -> list[dict]:
    """One Block forward + backward (input and weight gradients) per mode, bf16, at each preset's size."""
    rows = []
    for preset in PRESETS:
        arch = preset_arch(preset)
        batch, positions, hidden = sizes(preset)[:3]
        shape, heads = (batch, positions, hidden), arch["num_heads"]
        rotary = None if arch["mlp_t"] else rope.rotary_tables(positions, hidden // heads)
        h, cot = normal(shape, 11), normal(shape, 12)
        row = {"block": preset, "shape": str(list(shape))}
        for mode in ("reference", "fused"):
            mx.random.seed(0)
            execution = mode_runtime(mode).execution
            block = Block(hidden, heads, arch["expansion"], 1e-5, execution, positions if arch["mlp_t"] else 0)

            def loss(h):
                return (block(h, rotary).astype(mx.float32) * cot.astype(mx.float32)).sum()

            row[f"{mode}_ms"] = timed(mx.compile(nn.value_and_grad(block, loss)), (h,), reps)
        rows.append(row)
        print(f"block {preset:<14} reference {row['reference_ms']:8.2f} ms  fused {row['fused_ms']:8.2f} ms", flush=True)
    return rows


def make_batch(arch: dict, batch_size: int) -> dict:
    rng = np.random.default_rng(0)
    vocab, seq = arch["vocab_size"], arch["seq_len"]
    return {
        "inputs": mx.array(rng.integers(1, vocab, (batch_size, seq)), dtype=mx.int32),
        "labels": mx.array(rng.integers(1, vocab, (batch_size, seq)), dtype=mx.int32),
        "puzzle_identifiers": mx.array(rng.integers(0, PUZZLE_ROWS, (batch_size,)), dtype=mx.int32),
    }


def mode_runtime(mode: str, recompute: str = "auto", memory_limit: float | None = None) -> Runtime:
    """`reference`, `auto`, `fused`, or `only:OP[+OP...]`: `auto` with just those kernels on (what each one costs)."""
    settings = dict(recompute=recompute_setting(recompute), memory_limit=memory_limit)
    if not mode.startswith("only:"):
        return Runtime.create(kernels=mode, **settings)
    ops = frozenset(mode.removeprefix("only:").split("+"))
    if not ops <= set(kernels.OPS):
        raise SystemExit(f"bench_kernels: unknown kernels in {mode!r}; known: {', '.join(sorted(kernels.OPS))}")
    runtime = Runtime.create(kernels="fused", **settings)
    return dataclasses.replace(runtime, kernel_mode="auto", fused_kernels=runtime.fused_kernels & ops)


def recompute_setting(text: str):
    """`auto`, `blocks`, `none`, or a share such as `0.6` (what trm-train's `recompute=` takes)."""
    return text if text in ("auto", "blocks", "none") else float(text)


def run_step(preset_name: str, mode: str, batch_size: int, steps: int, recompute: str,
             memory_limit: float | None = None) -> dict:
    """Time the compiled train step of one preset under one kernel mode (in this process)."""
    runtime = mode_runtime(mode, recompute, memory_limit)
    arch = preset_arch(preset_name)
    mx.random.seed(0)
    head = ACTLossHead(create_model(arch, runtime.execution))
    optimizer = optim.Adam(learning_rate=1e-4)
    optimizer.init(head.trainable_parameters())
    state = [head.state, optimizer.state, mx.random.state]

    def loss_fn(carry, batch):
        step = head.model(head.model.reset_halted(carry, batch))
        return head.loss_and_metrics(step)[0], step.carry

    grad_fn = nn.value_and_grad(head, loss_fn)

    @partial(mx.compile, inputs=state, outputs=state)
    def step(carry, batch):
        (loss, carry), grads = grad_fn(carry, batch)
        optimizer.update(head, grads)
        return loss, carry

    batch = make_batch(arch, batch_size)
    carry = head.model.initial_carry(batch)
    mx.eval(carry, state)
    mx.clear_cache()
    mx.reset_peak_memory()
    times = []
    for i in range(steps + 2):  # the first two: compile, then a step from the reset carry
        start = time.perf_counter()
        loss, carry = step(carry, batch)
        mx.eval(loss, carry, state)
        if i >= 2:
            times.append(time.perf_counter() - start)
    used = sorted(runtime.fused_kernels)
    return {
        "preset": preset_name,
        "mode": mode,
        "recompute": recompute,
        "memory_limit_GiB": memory_limit,
        "batch": batch_size,
        "step_ms": 1e3 * statistics.median(times),
        "step_ms_spread": [1e3 * min(times), 1e3 * max(times)],
        "peak_GiB": mx.get_peak_memory() / 2**30,
        "fused_ops": used,
        "loss": loss.item(),
    }


def bench_steps(batches: dict[str, int], modes: list[str], steps: int, timeout: int, recompute: str,
                memory_limit: float | None) -> list[dict]:  # fmt: skip
    """Each (preset, mode) at ``batches[preset]`` in a fresh process; on failure retry once at half the batch."""
    rows = []
    for preset_name, full_batch in batches.items():
        for mode in modes:
            batch = full_batch
            while batch >= full_batch // 2:
                cmd = [sys.executable, __file__, "--step", preset_name, mode, str(batch), "--steps", str(steps),
                       "--recompute", recompute] + (["--memory-limit", str(memory_limit)] if memory_limit else [])
                try:
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
                    failure = None if done.returncode == 0 and lines else (done.stderr or done.stdout)[-600:]
                except subprocess.TimeoutExpired:
                    failure, lines = f"timed out after {timeout} s", []
                if failure is None:
                    row = json.loads(lines[-1])
                    rows.append(row)
                    print(
                        f"step {preset_name:<14} {mode:<9} batch {batch:4d}: {row['step_ms']:8.1f} ms, "
                        f"peak {row['peak_GiB']:.1f} GiB, fused {','.join(row['fused_ops']) or '-'}",
                        flush=True,
                    )
                    break
                print(f"step {preset_name} {mode} batch {batch} failed: {failure.strip()}", flush=True)
                batch //= 2
    return rows


def print_kernel_row(row: dict, flush: bool = False) -> None:
    f, r = row["fused_fwd_bwd_ms"], row["reference_fwd_bwd_ms"]
    print(
        f"{row['kernel']:<17} {row['shape']:<28} fwd {row['reference_fwd_ms']:7.3f} -> {row['fused_fwd_ms']:7.3f} ms"
        f"  fwd+bwd {r:7.3f} -> {f:7.3f} ms ({r / f:4.2f}x)  fused fwd {row['fused_fwd_GBps']:6.0f} GB/s",
        flush=flush,
    )


def winners(kernel_rows: list[dict]) -> list[str]:
    """Kernels faster than their reference (fwd + bwd, by over 3%) at every shape measured; inject_add has no
    backward kernel, so its forward decides."""
    verdict = {}
    for row in kernel_rows:
        key = "fwd_ms" if row["kernel"] == "inject_add" else "fwd_bwd_ms"
        wins = row[f"fused_{key}"] < 0.97 * row[f"reference_{key}"]
        verdict[row["kernel"]] = verdict.get(row["kernel"], True) and wins
    return sorted(name for name, ok in verdict.items() if ok)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "kernels", "steps"), default="all")
    parser.add_argument("--reps", type=int, default=20, help="timed runs per kernel (median reported)")
    parser.add_argument("--steps", type=int, default=5, help="timed train steps per entry (median reported)")
    parser.add_argument("--step-timeout", type=int, default=300, help="seconds for one (preset, mode) process")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument(
        "--batch", action="append", default=[], metavar="PRESET=N", help="train-step batch size for a preset"
    )
    parser.add_argument(
        "--modes", default="reference,fused",
        help="kernel modes of the train-step entries, comma-separated: reference, auto, fused, only:OP[+OP...]",
    )
    parser.add_argument(
        "--recompute", default="auto",
        help="block recomputation in the steps: auto, blocks, none, or the share of blocks (0.6)",
    )
    parser.add_argument("--memory-limit", type=float, help="MLX's memory limit in GiB in the steps (trm-train's "
                        "memory_limit=); default: MLX's")
    parser.add_argument("--step", nargs=3, metavar=("PRESET", "MODE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.step:
        print(json.dumps(run_step(args.step[0], args.step[1], int(args.step[2]), args.steps, args.recompute,
                                  args.memory_limit)))
        return 0
    runtime = Runtime.create()
    if runtime.backend == "cpu":
        print("bench_kernels: needs a CUDA or Metal GPU (MLX has no custom kernels on the CPU)", file=sys.stderr)
        return 2

    print(f"backend: {runtime.describe_backend()}, mlx {mx.__version__}")
    failed = {name: r.detail for name, r in kernels.check_all(runtime.backend).items() if not r.ok}
    if failed:
        print(f"self-check failures (these run their reference): {failed}")
    results = {"backend": runtime.describe_backend(), "mlx": mx.__version__, "self_check_failures": failed}
    if args.part in ("all", "kernels"):
        results["kernels"] = bench_kernels(args.reps)
        results["blocks"] = bench_blocks(args.reps // 2)
        results["winners"] = winners(results["kernels"])
        print(f"faster than their reference: {', '.join(results['winners']) or 'none'}")
    if args.part in ("all", "steps"):
        batches = {name: preset_arch(name)["batch_size"] for name in PRESETS}
        for item in args.batch:
            name, size = item.split("=")
            batches[name] = int(size)
        results["steps"] = bench_steps(batches, args.modes.split(","), args.steps, args.step_timeout, args.recompute,
                                       args.memory_limit)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))

    print("\n== summary ==")
    for row in results.get("kernels", []):
        print_kernel_row(row)
    for row in results.get("blocks", []):
        print(f"block {row['block']:<14} {row['reference_ms']:8.2f} -> {row['fused_ms']:8.2f} ms "
              f"({row['reference_ms'] / row['fused_ms']:.2f}x)")
    by_key = {(r["preset"], r["mode"]): r for r in results.get("steps", [])}
    for preset in PRESETS:
        ref = by_key.get((preset, "reference"))
        for mode in args.modes.split(","):
            fused = by_key.get((preset, mode))
            if mode == "reference" or not ref or not fused:
                continue
            print(
                f"step {preset:<14} {mode:<6} batch {ref['batch']}/{fused['batch']}: {ref['step_ms']:.1f} -> "
                f"{fused['step_ms']:.1f} ms ({ref['step_ms'] / fused['step_ms']:.2f}x), peak "
                f"{ref['peak_GiB']:.1f} -> {fused['peak_GiB']:.1f} GiB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
