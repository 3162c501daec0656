"""How far apart runs of one recipe land: each run's test accuracy at every evaluation, and for pairs of runs the
signed gap of their training LM losses (`compare_curves.training_loss_agreement`) over ranges of steps. Two runs
of the same side from the same start measure the spread a comparison of the two sides has to be read against.

    python -m scripts.run_spread "trm-mlx=docs/runs/arc-h100/mlx/metrics.jsonl" \\
        "reference=docs/runs/arc-h100/legacy/metrics.jsonl" \\
        "reference again=docs/runs/arc-h200-rerun/legacy/metrics.jsonl" \\
        --pairs "reference again/reference" "trm-mlx/reference again" --ranges 100-400 1700-3000

Both tables print as Markdown. Without `--pairs`, every pair in the order given; without `--ranges`, all steps.
"""

import argparse
import itertools

from scripts.compare_curves import training_loss_agreement
from scripts.plot_metrics import read_metrics, series

ALL_STEPS = (0, 10**12)


def in_range(records: list[dict], low: int, high: int) -> list[dict]:
    """The training lines of ``records`` logged at steps low..high (inclusive)."""
    return [r for r in records if r.get("kind") == "train" and low <= r["step"] <= high]


def accuracies_by_step(runs: dict[str, list[dict]]) -> dict[int, dict[str, float]]:
    """{step: {run: test accuracy}} at every step some run evaluated."""
    table = {}
    for name, records in runs.items():
        for step, value in zip(*series(records, "eval", "accuracy")):
            table.setdefault(step, {})[name] = value
    return dict(sorted(table.items()))


def loss_gaps(runs: dict[str, list[dict]], pairs: list[tuple[str, str]], ranges: list[tuple[int, int]]) -> list[dict]:
    """For each pair (a, b) and range: the mean of a's logged loss over b's minus 1, and at how many of their
    common steps a's is the higher (None where they share fewer than two steps)."""
    rows = []
    for (a, b), (low, high) in itertools.product(pairs, ranges):
        first, second = in_range(runs[a], low, high), in_range(runs[b], low, high)
        agreement = training_loss_agreement(first, second)
        common = len({r["step"] for r in first} & {r["step"] for r in second})
        above = round(agreement["train_loss_share_mlx_above"] * common) if agreement else None
        rows.append({"a": a, "b": b, "steps": [low, high], "common_steps": common,
                     "relative_gap": agreement.get("train_loss_relative_gap"), "a_above": above})  # fmt: skip
    return rows


def markdown(header: list[str], align: list[str], rows: list[list[str]]) -> str:
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def accuracy_table(runs: dict[str, list[dict]]) -> str:
    """Markdown: a row per evaluated step, a column per run (blank where a run did not evaluate there)."""
    rows = [[f"{step:,}", *(f"{values[n]:.4f}" if n in values else "" for n in runs)]
            for step, values in accuracies_by_step(runs).items()]  # fmt: skip
    return markdown(["test accuracy at step", *runs], ["---:"] * (len(runs) + 1), rows)


def gap_table(gaps: list[dict], ranges: list[tuple[int, int]]) -> str:
    """Markdown: a row per pair, a column per step range (`loss_gaps`' rows, pair by pair)."""
    labels = ["all steps" if high >= ALL_STEPS[1] else f"{low:,}-{high:,}" for low, high in ranges]
    rows = []
    for i in range(0, len(gaps), len(ranges)):
        cells = [f"{100 * g['relative_gap']:+.2f}% ({g['a_above']}/{g['common_steps']})"
                 if g["relative_gap"] is not None else "too few common steps" for g in gaps[i : i + len(ranges)]]  # fmt: skip
        rows.append([f"{gaps[i]['a']} / {gaps[i]['b']}", *cells])
    header = "training LM loss: mean ratio of the logged means minus 1 (steps where the first is higher)"
    return markdown([header, *labels], ["---", *["---:"] * len(ranges)], rows)


def parse_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(part) for part in text.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LOW-HIGH, e.g. 100-400") from None
    return low, high


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=metrics.jsonl")
    parser.add_argument("--pairs", nargs="*", help="A/B: A's training loss against B's (default: every pair)")
    parser.add_argument("--ranges", nargs="*", type=parse_range, help="LOW-HIGH step ranges (default: all steps)")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, _, path = item.rpartition("=")
        if not name:
            parser.error(f"{item!r}: expected NAME=metrics.jsonl")
        if name in runs:
            parser.error(f"{name!r} names two runs: give each its own NAME")
        runs[name] = read_metrics(path)
    pairs = [tuple(pair.split("/")) for pair in args.pairs] if args.pairs else list(itertools.combinations(runs, 2))
    for pair in pairs:
        if len(pair) != 2 or not set(pair) <= set(runs):
            parser.error(f"{'/'.join(pair)!r}: expected A/B with A and B among {sorted(runs)}")
    ranges = args.ranges or [ALL_STEPS]

    print(accuracy_table(runs))
    print()
    print(gap_table(loss_gaps(runs, pairs, ranges), ranges))


if __name__ == "__main__":
    main()
