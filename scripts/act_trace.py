"""Every test row's answer and Q logit after each ACT step, and what halting rules would give, from one pass.

`halt=max` runs every row for all `halt_max_steps`; a row's computation does not depend on the other rows, so its
first s steps are what any halting rule runs before stopping it at step s. One such pass therefore gives, for each
rule, the exact accuracy and mean ACT steps it would reach (not its speed: `scripts/halting_eval.py` times the rules
it runs): a cap at every step, the Q head at thresholds, stopping once a row's answer has stayed the same for k
steps, and an oracle that stops each solved row where its answer stays right (the most any rule saves without losing
an answer). With the first threshold, it also gives up on rows at one step by what the model shows there (a low Q
logit, an answer still moving), at every step and with every threshold on that signal, and keeps the best of those
rules. Writes trace.npz, rules.jsonl and act_trace.png (exact accuracy against mean ACT steps for each rule; the
step at which each solved row first had its final answer). `--steps N` runs N ACT steps instead of the model's
`halt_max_steps` (the trace of a model set to halt at N: what recursion beyond the trained number gives).

    python -m scripts.act_trace --checkpoint model.safetensors --data data/sudoku-sample --out outputs/trace \\
        [--batch-size 16] [--forward-dtype float32] [--steps 32] [--thresholds 0.5 0.8] [--patience 1 2 4] [--caps 6 8]
"""

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from trm_mlx.blas import load_fast_blas  # noqa: E402

load_fast_blas()  # before MLX loads

import mlx.core as mx  # noqa: E402

import trm_mlx  # noqa: E402
from scripts.plot_metrics import save  # noqa: E402
from trm_mlx.data import PuzzleDataset  # noqa: E402
from trm_mlx.data.dataset import IGNORE_LABEL_ID  # noqa: E402
from trm_mlx.evaluation.boards import real_rows  # noqa: E402
from trm_mlx.evaluation.loop import compiled_eval_step  # noqa: E402
from trm_mlx.evaluation.preds import read_predictions_file, save_predictions  # noqa: E402
from trm_mlx.model import ACTLossHead  # noqa: E402
from trm_mlx.runtime import Runtime  # noqa: E402


def trace(model, dataset: PuzzleDataset) -> dict[str, np.ndarray]:
    """`preds` [rows, steps, seq], `q_halt_logits` [rows, steps], `labels` and `inputs` [rows, seq] of the test
    split's real rows, in the split's order. The rules read halting from ``q_halt`` alone, as a model trained with
    ``no_ACT_continue=True`` (every recipe of the paper) halts; a Q-continue model halts on ``q_halt - q_continue``."""
    if not model.config.no_ACT_continue:
        raise ValueError("the model halts where q_halt > q_continue (no_ACT_continue=False); the trace "
                         "records q_halt alone, so its halting rules would not be the model's")
    model.eval()
    step = compiled_eval_step(ACTLossHead(model))
    parts = {key: [] for key in ("preds", "q_halt_logits", "labels", "inputs")}
    batches = sum(-(-len(arrays.inputs) // dataset.local_batch_size) for arrays in dataset.sets.values())
    progress = tqdm(desc="trace", unit="ACT step", total=batches * model.config.halt_max_steps, leave=False)
    for _, batch, _ in dataset.iter_test():
        keep = real_rows(batch["inputs"], dataset.metadata.pad_id)
        arrays = {key: mx.array(value) for key, value in batch.items()}
        carry = model.initial_carry(arrays)
        preds, q = [], []
        for _ in range(model.config.halt_max_steps):
            carry, _, outputs = step(carry, arrays)
            mx.eval(carry, outputs)
            preds.append(np.array(outputs["preds"])[keep])
            q.append(np.array(outputs["q_halt_logits"], np.float32)[keep])
            progress.update()
        parts["preds"].append(np.stack(preds, axis=1))
        parts["q_halt_logits"].append(np.stack(q, axis=1))
        parts["labels"].append(np.asarray(batch["labels"])[keep])
        parts["inputs"].append(np.asarray(batch["inputs"])[keep])
    progress.close()
    return {key: np.concatenate(value) for key, value in parts.items()}


def correct_by_step(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """[rows, steps]: whether the row's answer after that step is exact (labelled cells all right)."""
    labels = arrays["labels"][:, None, :]
    return ((arrays["preds"] == labels) | (labels == IGNORE_LABEL_ID)).all(axis=-1)


def cells_changed(preds: np.ndarray) -> np.ndarray:
    """[rows, steps]: how many cells of the row's answer differ from the step before (all of them at the first)."""
    changed = np.full(preds.shape[:2], preds.shape[2], np.int64)
    changed[:, 1:] = (preds[:, 1:] != preds[:, :-1]).sum(axis=-1)
    return changed


def unchanged_for(changed: np.ndarray) -> np.ndarray:
    """[rows, steps]: for how many steps before this one the row's answer has been this step's (``changed``:
    `cells_changed`)."""
    same = np.zeros(changed.shape, np.int64)
    for s in range(1, changed.shape[1]):
        same[:, s] = np.where(changed[:, s] == 0, same[:, s - 1] + 1, 0)
    return same


def give_up_rules(family: str, describe, halts: np.ndarray, score: np.ndarray, correct: np.ndarray) -> list[dict]:
    """Rules that stop rows at their first step of ``halts`` and, at one step k, give up on the rows still running
    whose ``score`` [rows, steps] there is at least a threshold (a high score: hopeless), their answer being step k's.
    Of every step and every threshold (the score's values at that step), those that no other reaches with as few
    mean ACT steps and higher exact accuracy: what the best threshold on this signal gives, the labels known.
    ``describe(value)`` words the threshold."""
    rows, steps = correct.shape
    stop = halts.copy()
    stop[:, -1] = True
    first = stop.argmax(axis=1)
    base_steps, base_right = int((first + 1).sum()), int(correct[np.arange(rows), first].sum())
    points = []
    for k in range(steps - 1):  # 0-based; giving up at the last step stops nothing earlier
        running = np.flatnonzero(first > k)
        if not len(running):
            continue
        order = running[np.argsort(-score[running, k], kind="stable")]
        values = score[order, k]
        saved = np.cumsum(first[order] - k)
        gained = np.cumsum(correct[order, k].astype(np.int64) - correct[order, first[order]])
        for i in np.flatnonzero(np.append(values[1:] != values[:-1], True)):  # every row scoring >= values[i]
            points.append(((base_steps - saved[i]) / rows, (base_right + gained[i]) / rows, k + 1, values[i]))
    results, best = [], -1.0
    for mean_steps, accuracy, step, value in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            best = accuracy
            results.append({"rule": f"{family}: step {step}, {describe(value)}", "mean_act_steps": float(mean_steps),
                            "exact_accuracy": float(accuracy)})  # fmt: skip
    return results


def rule_result(name: str, stop: np.ndarray, correct: np.ndarray) -> dict:
    """Stopping each row at its first True step of ``stop`` [rows, steps] (the last step at the latest)."""
    stop = stop.copy()
    stop[:, -1] = True
    first = stop.argmax(axis=1)
    return {"rule": name, "mean_act_steps": float(first.mean() + 1),
            "exact_accuracy": float(correct[np.arange(len(first)), first].mean())}  # fmt: skip


def rules(arrays: dict[str, np.ndarray], thresholds: list[float], patience: list[int],
          caps: list[int] = ()) -> list[dict]:  # fmt: skip
    """Every cap; each threshold alone and with each of ``caps``; each patience; the oracle; with the first
    threshold, the best rules that give up on a low Q logit or on an answer still moving."""
    correct = correct_by_step(arrays)
    steps = correct.shape[1]
    index = np.arange(steps)[None, :]
    q = arrays["q_halt_logits"]
    results = [rule_result(f"cap {s}", np.broadcast_to(index >= s - 1, correct.shape), correct) for s in
               range(1, steps + 1)]  # fmt: skip
    halts = {t: q > np.log(t / (1 - t)) for t in thresholds}
    for t in thresholds:
        results.append(rule_result(f"q>{t:g}", halts[t], correct))
        results += [rule_result(f"q>{t:g}, cap {c}", halts[t] | (index >= c - 1), correct) for c in caps]
    changed = cells_changed(arrays["preds"])
    same = unchanged_for(changed)
    results += [rule_result(f"unchanged {k}", same >= k, correct) for k in patience]
    # the best any rule can do without losing an answer: solved rows stop where their answer stays right, others run
    solved = correct[:, -1]
    final = np.full(len(solved), steps + 1)
    final[solved] = final_answer_steps(correct)
    results.append(rule_result("oracle", index + 1 >= final[:, None], correct))
    if thresholds:
        t = thresholds[0]
        results += give_up_rules(f"q>{t:g}, give up on a low Q", lambda v: f"q_halt logit <= {-v:.4g}", halts[t],
                                 -q, correct)  # fmt: skip
        results += give_up_rules(f"q>{t:g}, give up on a moving answer", lambda v: f">= {v} cells changed",
                                 halts[t], changed, correct)  # fmt: skip
    return results


def final_answer_steps(correct: np.ndarray) -> np.ndarray:
    """For each row right after the last step (``correct_by_step``): the first step from which its answer stayed
    right."""
    solved = correct[:, -1]
    wrong_after = np.where(~correct[solved], np.arange(correct.shape[1]), -1).max(axis=1)
    return wrong_after + 2  # 1-based step after the last wrong one


def draw(results: list[dict], correct: np.ndarray, title: str) -> plt.Figure:
    """Exact accuracy against mean ACT steps, a line per family of rules; beside it, for the rows solved after the
    last step, the step from which their answer stayed right."""
    fig, (trade, first) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    families: dict[str, list[dict]] = {}  # "cap", "q>t" (alone and with caps), each "unchanged k", the give-ups
    for r in results:
        rule = r["rule"]
        family = "cap" if rule.startswith("cap") else rule.split(":")[0] if ":" in rule else rule.split(",")[0]
        families.setdefault(family, []).append(r)
    for i, (family, members) in enumerate(families.items()):
        members = sorted(members, key=lambda r: r["mean_act_steps"])
        shape, zorder = "o-" if len(members) > 1 else "s", 2
        if family == "cap":
            label = "every row stops at step s"
        elif "give up" in family:  # many points: a line beneath the others
            label, shape, zorder = f"{family} (best step and threshold)", "-", 1
        else:
            label = family + (", with caps" if len(members) > 1 else "")
        trade.plot([r["mean_act_steps"] for r in members], [r["exact_accuracy"] for r in members], shape,
                   color=f"C{i}", markersize=4, zorder=zorder, label=label)  # fmt: skip
    trade.set(xlabel="mean ACT steps per example", ylabel="exact accuracy")
    trade.legend(fontsize=8)
    steps = correct.shape[1]
    first.hist(final_answer_steps(correct), bins=np.arange(1, steps + 2) - 0.5, color="C0")
    first.set(xlabel="ACT step from which a solved row's answer stays right", ylabel="examples")
    for ax in (trade, first):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="a built dataset; its test split is traced")
    parser.add_argument("--out", required=True, help="folder for trace.npz, rules.jsonl and act_trace.png")
    parser.add_argument("--batch-size", type=int, default=768)
    parser.add_argument("--forward-dtype", help="e.g. float32 on a CPU")
    parser.add_argument("--steps", type=int, help="ACT steps to run (default: the model's halt_max_steps); more shows "
                                                  "what recursion beyond the trained number gives")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.8])
    parser.add_argument("--patience", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--caps", type=int, nargs="*", default=[6, 8, 10, 12], help="caps combined with each threshold")
    parser.add_argument("--rules-only", action="store_true", help="the rules and figure from OUT/trace.npz")
    args = parser.parse_args(argv)
    if not all(0 < t < 1 for t in args.thresholds):
        parser.error(f"--thresholds {args.thresholds}: each must be a probability in (0, 1)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.rules_only:
        arrays = read_predictions_file(out / "trace.npz")
    else:
        if args.steps is not None and args.steps < 1:
            parser.error(f"--steps {args.steps}: must be at least 1")
        model = trm_mlx.load(args.checkpoint, forward_dtype=args.forward_dtype, runtime=Runtime.create(cpu_lanes=1))
        if args.steps is not None:  # read at each step: the model halts every row there, so raise it, not the loop
            model.config.halt_max_steps = args.steps
        dataset = PuzzleDataset([args.data], "test", global_batch_size=args.batch_size)
        try:
            arrays = trace(model, dataset)
        except ValueError as error:
            parser.error(f"--checkpoint {args.checkpoint}: {error}")
        save_predictions(out / "trace.npz", arrays)
    results = rules(arrays, args.thresholds, args.patience, args.caps)
    (out / "rules.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    for r in results:
        print(json.dumps(r))
    title = f"{Path(args.checkpoint).name} on {Path(args.data).name} ({len(arrays['labels'])} test examples)"
    save(draw(results, correct_by_step(arrays), title), out / "act_trace.png")


if __name__ == "__main__":
    main()
