"""Curves of one or more runs from their ``metrics.jsonl`` (written by ``trm-train`` beside its checkpoints): training
LM loss and accuracies, and test accuracy and exact accuracy at each evaluation, against the step.

    python -m scripts.plot_metrics checkpoints/<project>/<run>/metrics.jsonl --out curve.png
    python -m scripts.plot_metrics ours=a/metrics.jsonl original=b/metrics.jsonl --out compare.png
"""

import argparse
import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = (
    ("training LM loss", "train", "train/lm_loss"),
    ("training accuracy (halted rows)", "train", "train/accuracy"),
    ("training exact accuracy (halted rows)", "train", "train/exact_accuracy"),
    ("test accuracy (cells)", "eval", "accuracy"),
    ("test exact accuracy (whole puzzles)", "eval", "exact_accuracy"),
    ("training mean ACT steps", "train", "train/steps"),
)


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not a JSON line ({e})") from None
    return records


def series(records: list[dict], kind: str, key: str, eval_set: str = "all") -> tuple[list[int], list[float]]:
    """(steps, values) of one metric; evaluation metrics are read from the set ``eval_set``."""
    steps, values = [], []
    for record in records:
        if record.get("kind") != kind:
            continue
        value = record.get(eval_set, {}).get(key) if kind == "eval" else record.get(key)
        if value is not None:
            steps.append(record["step"])
            values.append(value)
    return steps, values


def draw(runs: dict[str, list[dict]], title: str = "") -> plt.Figure:
    """One figure, a panel per metric, a line per run; evaluations are dots, resumptions dotted vertical lines."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), sharex=True, constrained_layout=True)
    for ax, (label, kind, key) in zip(axes.flat, PANELS):
        for name, records in runs.items():
            steps, values = series(records, kind, key)
            line, = ax.plot(steps, values, marker="o" if kind == "eval" else None, markersize=4, linewidth=1.2,
                            label=name)
            for record in records:
                if record.get("kind") == "resume":
                    ax.axvline(record["step"], color=line.get_color(), linestyle=":", linewidth=0.8)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if len(runs) > 1:
        axes.flat[0].legend()
    if title:
        fig.suptitle(textwrap.fill(title, 150))  # a long list of overrides stays inside the figure
    return fig


def save(fig: plt.Figure, out: str | Path) -> Path:
    """``fig`` written as a PNG at ``out`` (its folder made if need be), then closed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot(runs: dict[str, list[dict]], out: str | Path, title: str = "") -> Path:
    """``draw``'s figure saved as a PNG at ``out``."""
    return save(draw(runs, title), out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="metrics.jsonl files, each optionally NAME=PATH")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, _, path = item.rpartition("=") if "=" in item else (Path(item).parent.name, "", item)
        runs[name] = read_metrics(path)
    print(plot(runs, args.out, args.title))


if __name__ == "__main__":
    main()
