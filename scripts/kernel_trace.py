"""Where a GPU train step's time goes: the CUDA kernels of a few steps, recorded and grouped.

`record(step, sync, steps, path)` runs `steps` calls of `step` under PyTorch's profiler with CUDA activity only:
CUPTI records every kernel the process launches, MLX's included, so both implementations are profiled the same
way. `summarize(path, steps)` reads the Chrome trace it wrote and returns per-step figures: kernel launches, GPU
busy time (the union of kernel intervals), the span from the first kernel's start to the last one's end, and the
time by kernel class and by kernel name.
"""

import json
import re
from pathlib import Path

# First match wins; names are MLX's, cuBLAS's, Inductor's and ours (trm_* kernels, see trm_mlx.kernels.codegen).
CLASSES = (
    ("ours", r"^trm_|custom_kernel_trm"),
    ("attention", r"flash|fmha|sdpa|attention|attn"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|sm90_|sm80_|cublas|matmul|gemv|splitK"),
    ("norm", r"rms|layer_norm|norm"),
    ("reduction", r"reduce|triton_red|triton_per|softmax|arg_?max|sum_"),
    ("copy", r"copy|memcpy|memset|transpose|cat|gather|scatter"),
    ("element-wise", r"."),
)


def kernel_class(name: str) -> str:
    return next(label for label, pattern in CLASSES if re.search(pattern, name, re.IGNORECASE))


def record(step, sync, steps: int, path: Path) -> None:
    """Run `step(i)` for i < steps, then `sync()`, with CUDA kernels recorded to the Chrome trace `path`."""
    from torch.profiler import ProfilerActivity, profile

    sync()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            step(i)
        sync()
    prof.export_chrome_trace(str(path))


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def summarize(path: Path, steps: int, top: int = 20) -> dict:
    """Per-step kernel figures of a trace written by `record` (times in ms)."""
    events = json.loads(Path(path).read_text()).get("traceEvents", [])
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e]
    if not kernels:
        return {"error": "the profiler recorded no kernels (CUPTI unavailable?)"}
    intervals = [(float(e["ts"]), float(e["ts"]) + float(e["dur"])) for e in kernels]
    by_name: dict[str, list] = {}
    for e in kernels:
        entry = by_name.setdefault(e["name"], [0, 0.0])
        entry[0] += 1
        entry[1] += float(e["dur"])
    by_class: dict[str, float] = {}
    for name, (_, us) in by_name.items():
        label = kernel_class(name)
        by_class[label] = by_class.get(label, 0.0) + us
    ms = 1e-3 / steps
    ranked = sorted(by_name.items(), key=lambda item: -item[1][1])
    return {
        "launches_per_step": round(len(kernels) / steps, 1),
        "busy_ms_per_step": round(busy_time(intervals) * ms, 3),
        "span_ms_per_step": round((max(e for _, e in intervals) - min(s for s, _ in intervals)) * ms, 3),
        "kernel_ms_per_step": round(sum(us for _, us in by_name.values()) * ms, 3),
        "by_class_ms": {k: round(v * ms, 3) for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])},
        "top_kernels": [
            {"name": name[:120], "class": kernel_class(name), "per_step": round(count / steps, 1),
             "ms_per_step": round(us * ms, 3), "mean_us": round(us / count, 1)}
            for name, (count, us) in ranked[:top]
        ],
    }


def format_summary(impl: str, summary: dict) -> str:
    """A short text table of one implementation's summary."""
    if "error" in summary:
        return f"{impl}: {summary['error']}"
    lines = [
        f"{impl}: {summary['launches_per_step']:.0f} launches/step, GPU busy {summary['busy_ms_per_step']:.1f} ms "
        f"of a {summary['span_ms_per_step']:.1f} ms span per step",
        "  by class (ms/step): " + ", ".join(f"{k} {v:.1f}" for k, v in summary["by_class_ms"].items()),
    ]
    for row in summary["top_kernels"]:
        lines.append(f"  {row['ms_per_step']:8.2f} ms {row['per_step']:7.1f}x {row['mean_us']:9.1f} us  "
                     f"{row['class']:<12} {row['name'][:90]}")
    return "\n".join(lines)
