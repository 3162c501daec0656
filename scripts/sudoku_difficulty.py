"""How hard Sudoku puzzles are for a fixed search, and a model's exact accuracy by that hardness.

A puzzle's difficulty here is the number of guesses a deterministic solver makes before its first solution: it
propagates naked and hidden singles, then branches on the open cell with the fewest candidates (the first such
cell in row-major order), trying digits in increasing order; every digit tried at a branch is one guess. A puzzle
that singles alone solve has difficulty 0. The count is this solver's, not the `rating` column of Sudoku-Extreme
(tdoku's): it compares puzzle sets rated by the same solver.

    # difficulty of each set, by its CSV `source` column
    python -m scripts.sudoku_difficulty rate ../shared/data/sudoku-extreme-1k/train.csv \\
        ../shared/data/sudoku-hard-test/test.csv --out outputs/difficulty.jsonl
    # a model's exact accuracy by difficulty (predictions from `trm-eval save_outputs=[inputs,labels,preds]`),
    # and that accuracy reweighted to the difficulty mix of a reference set
    python -m scripts.sudoku_difficulty accuracy --ratings outputs/difficulty.jsonl \\
        --preds outputs/eval/all_preds.0.npz --reference sudoku-extreme/train
"""

import argparse
import csv
import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trm_mlx.atomic import atomic_file
from trm_mlx.evaluation.boards import real_rows
from trm_mlx.evaluation.preds import load_predictions

CELLS = range(81)
UNITS = (
    [[r * 9 + c for c in range(9)] for r in range(9)]
    + [[r * 9 + c for r in range(9)] for c in range(9)]
    + [[(br + r) * 9 + bc + c for r in range(3) for c in range(3)] for br in (0, 3, 6) for bc in (0, 3, 6)]
)
PEERS = [sorted({p for unit in UNITS if i in unit for p in unit} - {i}) for i in CELLS]
ALL_DIGITS = 0b1111111110  # bit d for digit d = 1..9
BUCKETS = ((0, 15), (16, 63), (64, 255), (256, None))  # guesses, both ends included


def _single(mask: int) -> bool:
    return mask & (mask - 1) == 0


def _place(cands: list[int], placements: list[tuple[int, int]]) -> bool:
    """Fix each (cell, digit bit) and remove the digit from the cell's peers, following naked singles; False on a
    contradiction."""
    while placements:
        cell, bit = placements.pop()
        if not cands[cell] & bit:
            return False
        cands[cell] = bit
        for peer in PEERS[cell]:
            mask = cands[peer]
            if mask & bit:
                mask &= ~bit
                if not mask:
                    return False
                cands[peer] = mask
                if _single(mask):
                    placements.append((peer, mask))
    return True


def _propagate(cands: list[int]) -> bool:
    """Naked and hidden singles until neither applies; False on a contradiction."""
    while True:
        hidden = []
        for unit in UNITS:
            for digit in range(1, 10):
                bit = 1 << digit
                places = [cell for cell in unit if cands[cell] & bit]
                if not places:
                    return False
                if len(places) == 1 and cands[places[0]] != bit:
                    hidden.append((places[0], bit))
        if not hidden:
            return True
        if not _place(cands, hidden):
            return False


def _search(cands: list[int], counter: list[int]) -> list[int] | None:
    open_cells = [i for i in CELLS if not _single(cands[i])]
    if not open_cells:
        return cands
    cell = min(open_cells, key=lambda i: bin(cands[i]).count("1"))
    for digit in range(1, 10):
        if cands[cell] >> digit & 1:
            counter[0] += 1
            child = cands.copy()
            if _place(child, [(cell, 1 << digit)]) and _propagate(child):
                solution = _search(child, counter)
                if solution is not None:
                    return solution
    return None


def solve(puzzle: str) -> tuple[str | None, int]:
    """The first solution in the solver's fixed order (None if there is none) and the guesses it took."""
    cands = [ALL_DIGITS] * 81
    givens = [(i, 1 << int(ch)) for i, ch in enumerate(puzzle) if ch not in ".0"]
    if not (_place(cands, givens) and _propagate(cands)):
        return None, 0
    counter = [0]
    solution = _search(cands, counter)
    if solution is None:
        return None, counter[0]
    return "".join(str(mask.bit_length() - 1) for mask in solution), counter[0]


def bucket_name(bucket: tuple[int, int | None]) -> str:
    low, high = bucket
    return f"{low}+" if high is None else f"{low}-{high}"


def bucket_of(guesses: int) -> str:
    return next(bucket_name(b) for b in BUCKETS if b[1] is None or guesses <= b[1])


def rate(csv_paths: list[str]) -> list[dict]:
    """One record per puzzle: its CSV source, question and guesses; the solver's solution must be the CSV's."""
    records = []
    for path in csv_paths:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        for line, row in enumerate(tqdm(rows, desc=Path(path).name, unit="puzzle"), start=2):
            solution, guesses = solve(row["question"])
            if solution != row["answer"]:
                raise ValueError(f"{path}:{line}: the solver's first solution differs from the answer column")
            records.append({"source": row["source"], "question": row["question"], "guesses": guesses})
    return records


def difficulty_table(records: list[dict]) -> list[dict]:
    """Per source: puzzles, mean and quartiles of the guesses, and the share of puzzles in each bucket."""
    by_source = defaultdict(list)
    for record in records:
        by_source[record["source"]].append(record["guesses"])
    table = []
    for source, guesses in by_source.items():
        counts = np.array(guesses)
        row = {"source": source, "puzzles": len(counts), "mean": float(counts.mean())}
        row.update({f"q{q}": float(np.percentile(counts, q)) for q in (25, 50, 75)})
        row.update({bucket_name(b): float(np.mean([bucket_of(g) == bucket_name(b) for g in guesses])) for b in BUCKETS})
        table.append(row)
    return table


def sample_by_difficulty(records: list[dict], csv_path: str, per_bucket: int, seed: int) -> list[dict]:
    """``per_bucket`` CSV rows drawn at random from each bucket (all of a smaller one), in a shuffled order."""
    rating = {r["question"]: r["guesses"] for r in records}
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    by_bucket = defaultdict(list)
    for line, row in enumerate(rows, start=2):
        if row["question"] not in rating:
            raise ValueError(f"{csv_path}:{line}: puzzle not in the ratings (rate this file first)")
        by_bucket[bucket_of(rating[row["question"]])].append(row)
    rng = random.Random(seed)
    picked = [row for name in sorted(by_bucket)
              for row in rng.sample(by_bucket[name], min(per_bucket, len(by_bucket[name])))]  # fmt: skip
    rng.shuffle(picked)
    return picked


def _question(tokens: np.ndarray) -> str:
    """A test input's question string (tokens: 1 blank, 2..10 digits 1..9)."""
    return "".join("." if t == 1 else str(int(t) - 1) for t in tokens)


def accuracy_by_difficulty(records: list[dict], predictions: dict[str, np.ndarray], reference: str) -> dict:
    """Exact accuracy per bucket and per source of the predicted puzzles, and the mean of the bucket accuracies
    weighted by the reference source's share of puzzles in each bucket."""
    rating = {r["question"]: r for r in records}
    correct_by = defaultdict(list)
    real = real_rows(predictions["inputs"], pad_id=0)  # not batch padding
    for tokens, labels, preds in zip(*(predictions[key][real] for key in ("inputs", "labels", "preds"))):
        record = rating.get(_question(tokens))
        if record is None:
            raise ValueError(f"a predicted puzzle is not in the ratings: {_question(tokens)}")
        correct = bool(np.array_equal(preds, labels))
        correct_by[bucket_of(record["guesses"])].append(correct)
        correct_by[record["source"]].append(correct)
        correct_by["all"].append(correct)
    reference_shares = next((row for row in difficulty_table(records) if row["source"] == reference), None)
    if reference_shares is None:
        raise ValueError(f"no rated puzzles from source {reference!r}")
    groups = {name: {"puzzles": len(c), "exact_accuracy": float(np.mean(c))} for name, c in correct_by.items()}
    missing = [bucket_name(b) for b in BUCKETS if reference_shares[bucket_name(b)] > 0 and bucket_name(b) not in groups]
    if missing:
        raise ValueError(f"no predicted puzzles in buckets {missing}, which {reference!r} has")
    estimate = sum(reference_shares[bucket_name(b)] * groups[bucket_name(b)]["exact_accuracy"]
                   for b in BUCKETS if reference_shares[bucket_name(b)] > 0)
    return {"groups": groups, "reference": reference, "reweighted_exact_accuracy": estimate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    rate_cmd = commands.add_parser("rate", help="guesses per puzzle of Sudoku CSV files, summarised by source")
    rate_cmd.add_argument("csv", nargs="+")
    rate_cmd.add_argument("--out", required=True, help="JSON lines, one puzzle each")
    sample_cmd = commands.add_parser("sample", help="a CSV of puzzles drawn evenly from each difficulty bucket")
    sample_cmd.add_argument("csv")
    sample_cmd.add_argument("--ratings", required=True, help="the JSON lines of `rate`")
    sample_cmd.add_argument("--per-bucket", type=int, required=True)
    sample_cmd.add_argument("--seed", type=int, default=0)
    sample_cmd.add_argument("--out", required=True, help="a CSV in the input's columns")
    acc_cmd = commands.add_parser("accuracy", help="a model's exact accuracy by difficulty, and reweighted")
    acc_cmd.add_argument("--ratings", required=True, help="the JSON lines of `rate`")
    acc_cmd.add_argument("--preds", required=True, nargs="+", help="trm-eval's all_preds files")
    acc_cmd.add_argument("--reference", required=True, help="the source whose difficulty mix reweights")
    args = parser.parse_args()
    if args.command == "rate":
        records = rate(args.csv)
        with atomic_file(args.out) as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
        for row in difficulty_table(records):
            print(json.dumps(row))
        return
    records = [json.loads(line) for line in Path(args.ratings).read_text().splitlines()]
    if args.command == "sample":
        rows = sample_by_difficulty(records, args.csv, args.per_bucket, args.seed)
        with atomic_file(args.out) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        predictions = load_predictions(args.preds, required={"inputs", "labels", "preds"})
        print(json.dumps(accuracy_by_difficulty(records, predictions, args.reference), indent=1))


if __name__ == "__main__":
    main()
