"""Evaluation with every row running all ACT steps (`halt=max`, the original's protocol) against evaluation that
stops each row where its Q head says halt (`halt=q`, at one or more thresholds), on one machine in one run:
examples per second, accuracies and the ACT steps used. Writes JSON lines and a figure of exact accuracy against
mean ACT steps.

    python -m scripts.halting_eval --checkpoint step_N --data data/sudoku-extreme-1k-aug-1000 --out outputs/halting \\
        --thresholds 0.5 0.9 [--batch-size 768] [--limit 2000]
"""

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from trm_mlx.blas import load_fast_blas  # noqa: E402

load_fast_blas()  # before MLX loads

import trm_mlx  # noqa: E402
from scripts.plot_metrics import save  # noqa: E402
from trm_mlx.data import PuzzleDataset  # noqa: E402
from trm_mlx.evaluation.loop import evaluate  # noqa: E402
from trm_mlx.model import ACTLossHead  # noqa: E402
from trm_mlx.runtime import Runtime  # noqa: E402


def limited(dataset: PuzzleDataset, limit: int | None) -> PuzzleDataset:
    """The dataset's first ``limit`` test examples of each set (all with None)."""
    if limit is not None:
        for arrays in dataset.sets.values():
            for field in ("inputs", "labels"):
                setattr(arrays, field, getattr(arrays, field)[:limit])
    return dataset


def run(checkpoint: str, data: str, thresholds: list[float], batch_size: int, limit: int | None,
        forward_dtype: str | None) -> list[dict]:  # fmt: skip
    runtime = Runtime.create(cpu_lanes=1)
    head = ACTLossHead(trm_mlx.load(checkpoint, forward_dtype=forward_dtype, runtime=runtime))
    records = []
    for threshold in [None, *thresholds]:
        # One untimed batch first, so that compiling (minutes on a fresh GPU machine) is not counted.
        warmup = limited(PuzzleDataset([data], "test", global_batch_size=batch_size), batch_size)
        evaluate(head, warmup, runtime, progress=False, halt_threshold=threshold)
        dataset = limited(PuzzleDataset([data], "test", global_batch_size=batch_size), limit)
        began = time.perf_counter()
        metrics = evaluate(head, dataset, runtime, progress=False, halt_threshold=threshold)
        records.append({
            "halt": "max" if threshold is None else f"q>{threshold:g}", "backend": runtime.describe_backend(),
            "examples": metrics["examples"], "examples_per_s": metrics["examples_per_second"],
            "wall_s": time.perf_counter() - began, "accuracy": metrics["all"]["accuracy"],
            "exact_accuracy": metrics["all"]["exact_accuracy"], "mean_act_steps": metrics["all"]["steps"],
            "act_steps": metrics.get("act_steps"),
        })  # fmt: skip
        print(json.dumps(records[-1]), flush=True)
    return records


def draw(records: list[dict], title: str) -> plt.Figure:
    """Exact accuracy against mean ACT steps, one point per rule; beside it how many examples halted at each step."""
    fig, (points, spread) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    halting = [i for i, r in enumerate(records) if r["act_steps"]]
    width = 0.8 / max(len(halting), 1)
    for i, record in enumerate(records):
        label = f"{record['halt']}: {record['examples_per_s']:.3g} ex/s"
        points.scatter(record["mean_act_steps"], record["exact_accuracy"], label=label, color=f"C{i}", alpha=0.8)
    for place, i in enumerate(halting):
        steps = sorted(int(k) for k in records[i]["act_steps"])
        counts = [records[i]["act_steps"][str(k)] for k in steps]
        offset = (place - (len(halting) - 1) / 2) * width
        spread.bar([k + offset for k in steps], counts, width, label=records[i]["halt"], color=f"C{i}")
    points.set(xlabel="mean ACT steps per example", ylabel="exact accuracy")
    points.legend(fontsize=8)
    spread.set(xlabel="ACT steps used", ylabel="examples")
    if halting:
        spread.legend(fontsize=8)
    for ax in (points, spread):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="a built dataset; its test split is evaluated")
    parser.add_argument("--out", required=True, help="folder for halting.jsonl and halting.png")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5])
    parser.add_argument("--batch-size", type=int, default=768)
    parser.add_argument("--limit", type=int, help="only the first N test examples")
    parser.add_argument("--forward-dtype", help="e.g. float32 on a CPU")
    parser.add_argument("--plot-only", action="store_true", help="draw the figure from OUT/halting.jsonl")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        records = [json.loads(line) for line in (out / "halting.jsonl").read_text().splitlines()]
    else:
        records = run(args.checkpoint, args.data, args.thresholds, args.batch_size, args.limit, args.forward_dtype)
        (out / "halting.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    title = f"{Path(args.checkpoint).name} on {Path(args.data).name} ({records[0]['examples']} test examples)"
    save(draw(records, title), out / "halting.png")


if __name__ == "__main__":
    main()
