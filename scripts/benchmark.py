"""Training-step and evaluation speed of trm_mlx next to the original PyTorch code (legacy/), on one machine.

    python -m scripts.benchmark --preset sudoku_mlp                  # trm_mlx, torch eager (+ torch.compile on CUDA)
    python -m scripts.benchmark --preset tiny --batch 16 --impl mlx torch

One training step is what the original's ``train_batch`` does: one ACT step (the whole H x (L + 1) recursion)
forward, backward, AdamATan2 and the puzzle-table sign-SGD. trm_mlx runs its trainer's compiled step
(``make_train_step`` + ``train_batch``, reading each step's metrics while the next one runs, as ``trm-train``
does); PyTorch runs ``legacy.pretrain.train_batch``, eager or under ``torch.compile`` as the original. Evaluation
is the full ACT loop of the original's ``evaluate`` (``halt_max_steps`` steps from a fresh carry) per batch.

Both sides see the same synthetic batches of the preset's shapes and start from the same weights (the legacy
model's initial state, saved once as an original checkpoint and loaded by each side; without torch, trm_mlx's own
seeded init). Each implementation runs in its own process, so its peak memory is its own: device memory on a GPU
(``mx.get_peak_memory``, ``torch.cuda.max_memory_allocated``), peak resident set size on the CPU. Prints one JSON
line per implementation, then one with the ratios (trm_mlx over each other: >1 means trm_mlx is faster, or uses
more memory); ``--out FILE`` appends the same lines to FILE.
"""

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
from tqdm import tqdm

GIB = 2**30
IMPLS = ("mlx", "torch", "torch_compile")
EVAL_KEYS = ("preds", "q_halt_logits")


# The benchmark's names (its command lines and recorded figures use them) for the presets of configs/preset/ it
# runs: the README recipe's model on synthetic batches of its dataset's shapes, one GPU's share of its batch.
PRESETS = {
    "tiny": "demo", "sudoku_mlp": "sudoku_mlp", "sudoku_att": "sudoku_att", "maze_att": "maze", "arc_att": "arc1",
}  # fmt: skip
# `tiny` is a small attention model for CPUs (attention being what CPUs run worst): the demo's sizes with attention.
PRESET_OVERRIDES = {
    "tiny": ["arch.mlp_t=False", "arch.pos_encodings=rope", "arch.L_cycles=3", "global_batch_size=64"],
}


# ---------------------------------------------------------------------------------------------------------------
# The run description shared by the parent and the workers (plain JSON: a torch worker never imports MLX)
# ---------------------------------------------------------------------------------------------------------------


def resolve_run(preset: str, batch_size: int | None, dtype: str | None, overrides: list[str]) -> tuple[dict, dict]:
    """The training config and dataset metadata (as dicts) of the preset's recipe, without EMA or evaluators."""
    from trm_mlx.training.config import preset_run

    extra = [f"arch.forward_dtype={dtype}"] if dtype else []
    recipe = [*PRESET_OVERRIDES.get(preset, []), *extra, *overrides]
    config, metadata = preset_run(PRESETS[preset], recipe, batch_size)
    return config.model_dump(), metadata.model_dump()


def synthetic_batches(metadata: dict, batch_size: int, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Batches as the data loader yields them (int32): random tokens and labels, random puzzle ids."""
    rng = np.random.default_rng(seed)
    shape, vocab_size = (batch_size, metadata["seq_len"]), metadata["vocab_size"]
    return [
        {
            "inputs": rng.integers(1, vocab_size, shape, dtype=np.int32),
            "labels": rng.integers(1, vocab_size, shape, dtype=np.int32),
            "puzzle_identifiers": rng.integers(0, metadata["num_puzzle_identifiers"], (batch_size,), dtype=np.int32),
        }
        for _ in range(count)
    ]


def write_initial_weights(config: dict, metadata: dict, path: Path) -> None:
    """The legacy model's seeded initial state as an original checkpoint, with a one-row puzzle table.

    Both sides widen a table of another size to the run's by the original's rule (every row = the mean of the
    saved rows), so a one-row table of zeros becomes the full zero table without writing gigabytes of zeros.
    """
    import torch

    import legacy.pretrain as lp
    from legacy.dataset.common import PuzzleDatasetMetadata

    small = PuzzleDatasetMetadata(**{**metadata, "num_puzzle_identifiers": 1})
    torch.manual_seed(config["seed"])
    model, _, _ = lp.create_model(lp.PretrainConfig(**config), small, rank=0, world_size=1, device=torch.device("cpu"))
    torch.save(lp.checkpoint_state_dict(model), path)


# ---------------------------------------------------------------------------------------------------------------
# Timing loops
# ---------------------------------------------------------------------------------------------------------------


class Progress:
    """A worker's result so far, rewritten after every phase: a worker stopped by ``--worker-timeout`` still says
    how far it got (set-up time, first step with compilation, ...), which is what a slow start needs explaining."""

    def __init__(self, path: Path):
        self.path, self.values = path, {}

    def __call__(self, **values) -> None:
        self.values.update(values)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.values))
        os.replace(tmp, self.path)


def timed_loop(step, sync, warmup: int, steps: int, desc: str, progress: Progress, prefix: str = ""):
    """Seconds per step over ``steps`` timed steps, after ``warmup`` untimed ones; reports the first step's time
    (compilation included) as ``<prefix>first_step_s`` and the mean as ``<prefix>step_s``."""
    start = time.perf_counter()
    step(0)
    sync()
    progress(**{f"{prefix}first_step_s": time.perf_counter() - start})
    for i in range(1, warmup):
        step(i)
    sync()
    start = time.perf_counter()
    for i in tqdm(range(steps), desc=desc, unit="step", leave=False):
        step(warmup + i)
        progress(**{f"{prefix}timed_steps_done": i + 1, f"{prefix}timed_elapsed_s": time.perf_counter() - start})
    sync()
    seconds = (time.perf_counter() - start) / steps
    progress(**{f"{prefix}step_s": seconds})
    return seconds


def peak_rss_gib() -> float:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / GIB if sys.platform == "darwin" else peak * 1024 / GIB


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{os.cpu_count()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()}"


def run_mlx(run: dict, progress: Progress) -> None:
    from trm_mlx.blas import load_fast_blas

    load_fast_blas()  # first: the CPU BLAS loads before MLX does
    import mlx.core as mx

    from trm_mlx.data.metadata import PuzzleDatasetMetadata
    from trm_mlx.evaluation.loop import compiled_eval_step, eval_memory_cap
    from trm_mlx.training.config import PretrainConfig
    from trm_mlx.training.state import create_train_state
    from trm_mlx.training.trainer import make_train_step, reduce_train_metrics, train_batch, training_runtime

    start = time.perf_counter()
    config = PretrainConfig(**{**run["config"], "load_checkpoint": run["initial_weights"]})
    runtime = training_runtime(config)
    batch_size = config.global_batch_size
    state = create_train_state(config, PuzzleDatasetMetadata(**run["metadata"]), runtime)
    progress(execution=runtime.summary())
    on_cpu = mx.default_device() == mx.cpu
    name = cpu_name() if on_cpu else str(mx.device_info().get("device_name", "GPU"))
    progress(device=f"{name} [mlx {mx.__version__}, {runtime.describe_backend()}]",
             memory="peak RSS" if on_cpu else "device", setup_s=time.perf_counter() - start)
    step_fn, compiled_state = make_train_step(state, config, runtime)
    batches = synthetic_batches(run["metadata"], batch_size, run["num_batches"])
    pending = []

    def train_step(i):  # as trm-train's loop: queue this step, then read the previous step's metrics
        queued = train_batch(config, state, step_fn, compiled_state, batches[i % len(batches)])
        if pending:
            reduce_train_metrics(pending.pop(), batch_size, 0.0)
        pending.append(queued[0])

    def train_sync():
        mx.eval(state.carry, compiled_state)

    timed_loop(train_step, train_sync, run["warmup"], run["steps"], "mlx train", progress)
    progress(peak_memory_gib=peak_rss_gib() if on_cpu else mx.get_peak_memory() / GIB,
             last_lm_loss=reduce_train_metrics(pending.pop(), batch_size, 0.0)["train/lm_loss"])
    trace_kernels("mlx", run, train_step, train_sync, progress)

    if run["eval_batches"]:
        head = state.head
        head.model.eval()
        eval_step = compiled_eval_step(head, runtime.cpu_lanes)
        mx.reset_peak_memory()

        def eval_batch(i):  # as trm_mlx.evaluation.loop.evaluate
            arrays = {key: mx.array(value) for key, value in batches[i % len(batches)].items()}
            carry = head.model.initial_carry(arrays)
            for _ in range(head.model.config.halt_max_steps):
                carry, metrics, outputs = eval_step(carry, arrays)
                mx.eval(carry, metrics, outputs)
            np.array(outputs["preds"])

        first = {key: mx.array(value) for key, value in batches[0].items()}
        with eval_memory_cap(runtime, head.model.initial_carry(first)):
            timed_loop(eval_batch, lambda: None, 1, run["eval_batches"], "mlx eval", progress, prefix="eval_")
        if not on_cpu:
            progress(eval_peak_memory_gib=mx.get_peak_memory() / GIB)


def run_torch(run: dict, compiled: bool, progress: Progress) -> None:
    import torch

    import legacy.pretrain as lp
    from legacy.dataset.common import PuzzleDatasetMetadata

    if compiled:
        os.environ["TRM_LEGACY_COMPILE"] = "1"  # read by legacy.pretrain.create_model
    start = time.perf_counter()
    device = torch.device("cpu") if run["config"].get("device") == "cpu" else lp.default_device()
    cuda = device.type == "cuda"
    config = lp.PretrainConfig(**{**run["config"], "load_checkpoint": run["initial_weights"]})
    batch_size = config.global_batch_size
    torch.manual_seed(config.seed)
    state = lp.init_train_state(config, PuzzleDatasetMetadata(**run["metadata"]), rank=0, world_size=1, device=device)
    state.model.train()
    batches = [
        {key: torch.from_numpy(value).pin_memory() if cuda else torch.from_numpy(value) for key, value in b.items()}
        for b in synthetic_batches(run["metadata"], batch_size, run["num_batches"])
    ]
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    where = torch.cuda.get_device_name() if cuda else f"{cpu_name()}, {torch.get_num_threads()} threads"
    progress(device=f"{where} [torch {torch.__version__}]", memory="device" if cuda else "peak RSS",
             setup_s=time.perf_counter() - start)

    last = {}

    def train_step(i):
        last["metrics"] = lp.train_batch(config, state, batches[i % len(batches)], batch_size, rank=0, world_size=1)

    name = "torch.compile" if compiled else "torch"
    timed_loop(train_step, sync, run["warmup"], run["steps"], f"{name} train", progress)
    progress(peak_memory_gib=torch.cuda.max_memory_allocated() / GIB if cuda else peak_rss_gib(),
             last_lm_loss=float(last["metrics"]["train/lm_loss"]))
    trace_kernels("torch_compile" if compiled else "torch", run, train_step, sync, progress)

    if run["eval_batches"]:
        model = state.model
        model.eval()
        if cuda:
            torch.cuda.reset_peak_memory_stats()

        def eval_batch(i):  # as legacy.pretrain.evaluate
            with torch.inference_mode():
                batch = {key: value.to(device) for key, value in batches[i % len(batches)].items()}
                with torch.device(device):
                    carry = model.initial_carry(batch)
                while True:
                    carry, _, _, preds, all_finish = model(carry=carry, batch=batch, return_keys=set(EVAL_KEYS))
                    if all_finish:
                        break
                preds["preds"].cpu()

        timed_loop(eval_batch, sync, 1, run["eval_batches"], f"{name} eval", progress, prefix="eval_")
        if cuda:
            progress(eval_peak_memory_gib=torch.cuda.max_memory_allocated() / GIB)


def trace_kernels(impl: str, run: dict, step, sync, progress: Progress) -> None:
    """With ``--trace N``: N more training steps with their CUDA kernels recorded (scripts/kernel_trace.py)."""
    if not run["trace_steps"]:
        return
    from scripts import kernel_trace

    path = Path(run["trace_dir"]) / f"{impl}-{run['preset']}-trace.json"
    kernel_trace.record(step, sync, run["trace_steps"], path)
    progress(kernels=kernel_trace.summarize(path, run["trace_steps"]))


def worker_main(impl: str, run_file: Path, result_file: Path) -> None:
    run = json.loads(run_file.read_text())
    progress = Progress(result_file)
    if impl == "mlx":
        run_mlx(run, progress)
    else:
        run_torch(run, compiled=impl == "torch_compile", progress=progress)
    progress(done=True)


# ---------------------------------------------------------------------------------------------------------------
# The parent: one process per implementation, then the report
# ---------------------------------------------------------------------------------------------------------------


def summarise(impl: str, run: dict, raw: dict) -> dict:
    """The reported line of one implementation: per-step time, examples/s, peak memory, device."""
    batch_size = run["config"]["global_batch_size"]
    line = {
        "impl": impl,
        "preset": run["preset"],
        "batch": batch_size,
        "dtype": run["config"]["arch"]["forward_dtype"],
        "steps": run["steps"],
        "step_s": round(raw["step_s"], 5),
        "train_examples_per_s": round(batch_size / raw["step_s"], 1),
        "setup_s": round(raw["setup_s"], 2),
        "first_step_s": round(raw["first_step_s"], 2),
        "peak_memory_gib": round(raw["peak_memory_gib"], 3),
        "memory": raw["memory"],
        "last_lm_loss": round(raw["last_lm_loss"], 4),  # a finite value: the timed steps computed real numbers
        "device": raw["device"],
    }
    if "execution" in raw:
        line["execution"] = raw["execution"]
    if "kernels" in raw:
        line["kernels"] = raw["kernels"]
    if "eval_step_s" in raw:
        line["eval_batch_s"] = round(raw["eval_step_s"], 5)
        line["eval_examples_per_s"] = round(batch_size / raw["eval_step_s"], 1)
        if "eval_peak_memory_gib" in raw:
            line["eval_peak_memory_gib"] = round(raw["eval_peak_memory_gib"], 3)
    return line


def ratios(lines: dict[str, dict]) -> dict:
    """trm_mlx over each other implementation: speed (>1 = trm_mlx faster) and peak memory (<1 = trm_mlx smaller)."""
    ours = lines.get("mlx")
    out = {}
    if ours is None or "error" in ours:
        return out
    for impl, theirs in lines.items():
        if impl == "mlx" or "error" in theirs:
            continue
        entry = {
            "train_speed": round(ours["train_examples_per_s"] / theirs["train_examples_per_s"], 3),
            "peak_memory": round(ours["peak_memory_gib"] / theirs["peak_memory_gib"], 3),
        }
        if "eval_examples_per_s" in ours and "eval_examples_per_s" in theirs:
            entry["eval_speed"] = round(ours["eval_examples_per_s"] / theirs["eval_examples_per_s"], 3)
        out[f"mlx_vs_{impl}"] = entry
    return out


def run_worker(impl: str, run: dict, work_dir: Path, timeout: float | None) -> dict:
    run_file, result_file = work_dir / "run.json", work_dir / f"{impl}.json"
    run_file.write_text(json.dumps(run))
    command = [sys.executable, "-m", "scripts.benchmark", "--worker", impl, str(run_file), str(result_file)]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    try:  # the worker's stderr (progress bars, errors) goes straight to ours
        status = subprocess.run(command, cwd=root, env=env, timeout=timeout, stdout=subprocess.DEVNULL).returncode
        error = None if status == 0 else f"exit status {status} (its error is printed above)"
    except subprocess.TimeoutExpired:
        error = f"stopped after --worker-timeout {timeout:g} s"
    reached = json.loads(result_file.read_text()) if result_file.exists() else {}
    if error is None and reached.get("done"):
        return summarise(impl, run, reached)
    reached = {key: round(value, 3) if isinstance(value, float) else value for key, value in reached.items()}
    return {"impl": impl, "preset": run["preset"], "error": error or "no result written", "reached": reached}


def torch_cuda() -> bool | None:
    """Whether PyTorch sees a CUDA GPU; None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.is_available()


def default_impls() -> list[str]:
    """trm_mlx and eager PyTorch, plus torch.compile where it is practical (CUDA); trm_mlx alone without torch."""
    cuda = torch_cuda()
    if cuda is None:
        return ["mlx"]
    return list(IMPLS) if cuda else ["mlx", "torch"]


def benchmark(args) -> list[dict]:
    config, metadata = resolve_run(args.preset, args.batch, args.dtype, args.overrides)
    batch_size = config["global_batch_size"]
    run = {
        "preset": args.preset,
        "config": config,
        "metadata": metadata,
        "warmup": args.warmup,
        "steps": args.steps,
        "eval_batches": args.eval_batches,
        "num_batches": 4,
        "initial_weights": None,
        "trace_steps": args.trace,
        "trace_dir": None,
    }
    impls = args.impl or default_impls()
    lines: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="trm-bench-") as tmp:
        work_dir = Path(tmp)
        run["trace_dir"] = str(args.trace_dir or work_dir)
        if any(impl != "mlx" for impl in impls):
            run["initial_weights"] = str(work_dir / "initial_weights")
            write_initial_weights(run["config"], run["metadata"], Path(run["initial_weights"]))
        for impl in impls:
            lines[impl] = run_worker(impl, run, work_dir, args.worker_timeout)
            emit(lines[impl], args.out)
    summary = {"preset": args.preset, "batch": batch_size, "date": date.today().isoformat(), "ratios": ratios(lines)}
    emit(summary, args.out)
    if args.trace:
        from scripts.kernel_trace import format_summary

        for impl, line in lines.items():
            if "kernels" in line:
                print(format_summary(impl, line["kernels"]), flush=True)
    return [*lines.values(), summary]


def emit(line: dict, out: Path | None) -> None:
    text = json.dumps(line)
    print(text, flush=True)
    if out is not None:
        with open(out, "a") as f:
            f.write(text + "\n")


# A Hydra override word (`arch.L_cycles=4`, `+run_name=x`, `~key=`), as opposed to an option or its value.
OVERRIDE = re.compile(r"^[+~]{0,2}[A-Za-z_][\w.]*=")


def overrides_last(argv: list[str]) -> list[str]:
    """The Hydra overrides moved behind a `--`, wherever they stand: `--impl` takes every word after it, so
    `--impl mlx torch cpu_lanes=2` would otherwise read `cpu_lanes=2` as an implementation."""
    cut = argv.index("--") if "--" in argv else len(argv)
    head, tail = argv[:cut], argv[cut + 1 :]
    return [w for w in head if not OVERRIDE.match(w)] + ["--"] + [w for w in head if OVERRIDE.match(w)] + tail


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    presets = ", ".join(f"{name} = configs/preset/{recipe}.yaml" for name, recipe in PRESETS.items())
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help=presets)
    parser.add_argument("--batch", type=int, help="batch size (default: one GPU's share of the preset's)")
    parser.add_argument("--impl", nargs="+", choices=IMPLS, help="default: mlx torch (+ torch_compile on CUDA)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (after the warm-up)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first (compilation)")
    parser.add_argument("--eval-batches", type=int, default=2, help="timed evaluation batches (0: no evaluation)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), help="forward dtype (default: preset's)")
    parser.add_argument("--worker-timeout", type=float, help="seconds allowed to each implementation")
    parser.add_argument("--out", type=Path, help="also append the JSON lines to this file")
    parser.add_argument("--trace", type=int, default=0, metavar="N",
                        help="record the CUDA kernels of N more training steps (needs torch) and print where the "
                             "time goes")
    parser.add_argument("--trace-dir", type=Path, help="keep the Chrome traces of --trace here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the training config, e.g. arch.L_cycles=4")
    args = parser.parse_args(overrides_last(argv))
    if args.steps < 1 or args.warmup < 1 or args.eval_batches < 0 or args.trace < 0:
        parser.error("--steps and --warmup must be at least 1, --eval-batches and --trace at least 0")
    if args.trace and not torch_cuda():
        parser.error("--trace records CUDA kernels through PyTorch's profiler: it needs torch and a CUDA GPU")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        worker_main(argv[1], Path(argv[2]), Path(argv[3]))
        return 0
    lines = benchmark(parse_args(argv))
    return 1 if any("error" in line for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
