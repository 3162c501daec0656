"""Evaluate a model on a dataset's test split as the original does (spec §5.9): every batch runs the full ACT loop
(`halt_max_steps` compiled steps from a fresh carry), the last step's metrics are summed per set and divided by
their count, and evaluators see each batch with the last step's predictions."""

import itertools
import math
import time
from contextlib import ExitStack
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map
from tqdm import tqdm

from trm_mlx.data.dataset import IGNORE_LABEL_ID, PuzzleDataset
from trm_mlx.evaluation.boards import real_rows
from trm_mlx.evaluation.gather import all_gather_objects
from trm_mlx.evaluation.preds import save_predictions
from trm_mlx.lanes import Lanes, add, concatenate_rows
from trm_mlx.runtime import Runtime

SAVABLE = ("inputs", "labels", "puzzle_identifiers", "preds", "q_halt_logits", "steps")

# On CUDA, evaluation runs with MLX's memory limit at most the memory in use plus this many carries (one batch's):
# without a cap MLX holds the dead inputs of the queued ACT steps, several times the capped peak at the same speed
# (docs/BENCHMARKS.md).
EVAL_HEADROOM_CARRIES = 24


def eval_memory_cap(runtime: Runtime, carry: dict):
    """The memory cap of an evaluation whose batches have carries like `carry` (a context manager)."""
    return runtime.memory_headroom(EVAL_HEADROOM_CARRIES * sum(v.nbytes for _, v in tree_flatten(carry)))


def compiled_eval_step(head, lanes: int = 1, halt_threshold: float | None = None):
    """One ACT step as a compiled function (carry, batch) -> (carry, metrics, {preds, q_halt_logits, steps}); the
    weights are implicit inputs; `steps` counts each row's ACT steps so far. `halt_threshold`: see `ACTModel.__call__`.

    With `lanes` > 1, a batch whose rows split evenly runs over that many CPU lanes (`trm_mlx.lanes`).
    """
    model = head.model

    def eval_step(carry, batch):
        step = model(model.reset_halted(carry, batch), halt_threshold=halt_threshold)
        _, metrics = head.loss_and_metrics(step, halted_rows_only=halt_threshold is not None)
        outputs = {"preds": step.preds, "q_halt_logits": step.q_halt, "steps": step.carry["steps"]}
        return step.carry, metrics, outputs

    whole = mx.compile(eval_step, inputs=head.state)
    if lanes == 1:
        return whole
    runner = Lanes(lanes)
    graphs = [mx.compile(eval_step, inputs=head.state) for _ in range(lanes)]

    def lane_step(carry, batch):
        if batch["inputs"].shape[0] % lanes:
            return whole(carry, batch)
        carries, metrics, outputs = zip(*runner.run(graphs, carry, batch))
        return concatenate_rows(carries), add(metrics), concatenate_rows(outputs)

    return lane_step


def predictions_file_name(rank: int, step: int | None) -> str:
    return f"all_preds.{rank}.npz" if step is None else f"step_{step}_all_preds.{rank}.npz"


def evaluate(
    head,
    dataset: PuzzleDataset,
    runtime: Runtime,
    evaluators=(),
    save_outputs=(),
    save_dir: str | Path | None = None,
    step: int | None = None,
    progress: bool = True,
    halt_threshold: float | None = None,
) -> dict:
    """Metrics `{set: {accuracy, exact_accuracy, lm_loss, q_halt_accuracy, q_halt_loss, steps}, evaluator keys...,
    examples, examples_per_second}` (the same on every rank).

    With `save_dir`: the `save_outputs` arrays go to `predictions_file_name(rank, step)` and each evaluator saves
    into `save_dir` (or `save_dir/evaluator_<name>_step_<step>` when a training `step` is given, as the original).
    Every rank of `runtime.group` evaluates its slice of each batch, over `runtime.cpu_lanes` (`compiled_eval_step`).
    `halt_threshold`: None runs every row for all ACT steps (the original); a probability halts each row where its
    Q head says so (`evaluate_halting`).
    """
    unknown = sorted(set(save_outputs) - set(SAVABLE))
    if unknown:
        raise ValueError(f"cannot save outputs {unknown}; choose from {list(SAVABLE)}")
    if halt_threshold is not None:
        return evaluate_halting(head, dataset, runtime, halt_threshold, evaluators, save_outputs, save_dir, step,
                                progress)  # fmt: skip
    model = head.model
    model.eval()
    for evaluator in evaluators:
        evaluator.begin_eval()
    eval_step = compiled_eval_step(head, runtime.cpu_lanes)
    sums: dict[str, dict[str, float]] = {name: {} for name in dataset.sets}
    saved: dict[str, list[np.ndarray]] = {key: [] for key in save_outputs}
    num_batches = sum(math.ceil(len(s.inputs) / dataset.global_batch_size) for s in dataset.sets.values())
    examples = 0
    capped = False

    start = time.perf_counter()
    steps = model.config.halt_max_steps
    # Ticks per ACT step, so that a long evaluation moves and has an ETA; beside a training bar it is removed after.
    with tqdm(total=num_batches * steps, desc="eval", unit="ACT step", leave=None,
              disable=not progress or runtime.rank != 0) as bar, ExitStack() as memory:  # fmt: skip
        for set_name, batch, global_rows in dataset.iter_test():
            arrays = {key: mx.array(value) for key, value in batch.items()}
            carry = model.initial_carry(arrays)
            if not capped:  # sized by the first batch
                memory.enter_context(eval_memory_cap(runtime, carry))
                capped = True
            for _ in range(steps):
                carry, metrics, outputs = eval_step(carry, arrays)
                mx.eval(carry, metrics, outputs)
                bar.update(1)
            if not bool(carry["halted"].all()):
                raise RuntimeError("rows still running after halt_max_steps ACT steps (is the model in eval mode?)")
            host_outputs = {key: np.array(value) for key, value in outputs.items()}
            for evaluator in evaluators:
                evaluator.update_batch(batch, host_outputs)
            for key, value in metrics.items():
                sums[set_name][key] = sums[set_name].get(key, 0.0) + value.item()
            for key in save_outputs:
                saved[key].append(batch[key] if key in batch else host_outputs[key])
            examples += global_rows
            bar.set_postfix(examples_per_s=f"{examples / (time.perf_counter() - start):.1f}")
    elapsed = time.perf_counter() - start
    return _results(sums, saved, evaluators, examples, elapsed, save_dir, step, runtime.group)


def _results(sums, saved, evaluators, examples, elapsed, save_dir, step, group) -> dict:
    """Per-set means over all ranks, the saved outputs and the evaluators' results."""
    rank = group.rank() if group is not None else 0
    if group is not None and group.size() > 1:
        per_rank = all_gather_objects(sums, group)
        sums = {name: {key: sum(r[name].get(key, 0.0) for r in per_rank) for key in sums[name]} for name in sums}
    results: dict = {}
    for set_name, totals in sums.items():
        count = totals.pop("count", 0)
        results[set_name] = {key: totals[key] / count if count else math.nan for key in sorted(totals)}

    save_dir = Path(save_dir) if save_dir is not None else None
    if save_dir is not None and saved:
        save_predictions(
            save_dir / predictions_file_name(rank, step), {key: np.concatenate(parts) for key, parts in saved.items()}
        )
    for evaluator in evaluators:
        evaluator_dir = save_dir
        if save_dir is not None and step is not None:
            evaluator_dir = save_dir / f"evaluator_{evaluator.name}_step_{step}"
        results.update(evaluator.result(evaluator_dir, group))
    results["examples"] = examples
    results["examples_per_second"] = examples / elapsed
    return results


def evaluate_halting(head, dataset: PuzzleDataset, runtime: Runtime, threshold: float, evaluators=(), save_outputs=(),
                     save_dir=None, step=None, progress: bool = True) -> dict:  # fmt: skip
    """Evaluation where each row stops at its first ACT step whose Q head says halt (sigmoid(q_halt) > threshold,
    or over q_continue), its answer and metrics being that step's; at halt_max_steps every row stops.

    The batch stays full: a slot whose row halted takes the next example of the set on the next step (the model's
    `reset_halted` restarts exactly the halted rows, as in training), so that examples/s grows with the share of rows
    that halt early; examples are read from the set's batches as slots free up. Once the set's examples run out, the
    rows still running continue in smaller batches on a CPU (`tail_batch_size`). Each example is scored once, at its
    halting step, so the per-set metrics are those of its answer; evaluators (ARC voting with each answer's
    sigmoid(q_halt)) see every example once, in the order they finish, with its position among this process's test
    examples as `numbers` (the board evaluators' numbering under `halt=max`). Saved outputs are in that order too, with
    their inputs. `act_steps` counts the examples by the ACT steps they used; each example's own count is its `steps`
    output.
    """
    model = head.model
    model.eval()
    group = runtime.group
    for evaluator in evaluators:
        evaluator.begin_eval()
    max_steps = model.config.halt_max_steps
    # On a CPU a step's time grows with its rows, so the tail runs in smaller batches; on a GPU a step of few rows
    # costs about what a full one does, and each new batch shape a compilation.
    shrink_tail = runtime.backend == "cpu"
    sums: dict[str, dict[str, float]] = {name: {} for name in dataset.sets}
    saved: dict[str, list[np.ndarray]] = {key: [] for key in save_outputs}
    used_steps = np.zeros(max_steps + 1, np.int64)
    total = math.ceil(sum(len(s.inputs) for s in dataset.sets.values()) / runtime.ranks)
    examples = 0
    read = 0  # this process's examples of the sets before the current one

    eval_step = compiled_eval_step(head, runtime.cpu_lanes, threshold)
    start = time.perf_counter()
    with tqdm(total=total, desc="eval", unit="example", leave=None, disable=not progress or runtime.rank != 0) as bar, \
            ExitStack() as memory:  # fmt: skip
        for set_name, batches in _rows_by_set(dataset):
            slots = _Slots(batches, dataset.local_batch_size, dataset.metadata, first_number=read,
                           lanes=runtime.cpu_lanes)
            if not slots.busy():
                continue
            if shrink_tail:  # a set smaller than the batch starts in a smaller one where one fits it
                slots.shrink()
            arrays = slots.feed()
            carry = model.initial_carry(arrays)
            if not examples:
                memory.enter_context(eval_memory_cap(runtime, carry))
            while slots.busy():
                carry, metrics, outputs = eval_step(carry, arrays)
                mx.eval(carry, metrics, outputs)
                halted = np.array(carry["halted"])
                finished = halted & slots.real
                for key, value in metrics.items():
                    sums[set_name][key] = sums[set_name].get(key, 0.0) + value.item()
                if finished.any():
                    batch = {key: value[finished] for key, value in slots.data.items()}
                    batch["numbers"] = slots.numbers[finished]
                    host = {key: np.array(value)[finished] for key, value in outputs.items()}
                    for evaluator in evaluators:
                        evaluator.update_batch(batch, host)
                    for key in save_outputs:
                        saved[key].append(batch[key] if key in batch else host[key])
                    used_steps += np.bincount(host["steps"], minlength=max_steps + 1)
                    examples += int(finished.sum())
                    bar.update(int(finished.sum()))
                    bar.set_postfix(examples_per_s=f"{examples / (time.perf_counter() - start):.1f}")
                arrays = slots.refill(halted)
                keep = slots.shrink() if shrink_tail else None
                if keep is not None:
                    index = mx.array(keep)
                    carry = tree_map(lambda value: value[index], carry)
                    arrays = slots.feed()
            read = slots.next_number
    elapsed = time.perf_counter() - start
    if runtime.ranks > 1:
        used_steps = np.sum(all_gather_objects(used_steps, group), axis=0)
        examples = int(np.sum(all_gather_objects(examples, group)))
    results = _results(sums, saved, evaluators, examples, elapsed, save_dir, step, group)
    results["act_steps"] = {str(n): int(c) for n, c in enumerate(used_steps) if c}
    return results


def _rows_by_set(dataset: PuzzleDataset):
    """(set name, this rank's real rows of that set, batch by batch), read as the test iteration goes."""

    def real(batches):
        for _, batch, _ in batches:
            keep = real_rows(batch["inputs"], dataset.metadata.pad_id)
            if keep.any():
                yield {key: value[keep] for key, value in batch.items()}

    for set_name, batches in itertools.groupby(dataset.iter_test(), key=lambda item: item[0]):
        yield set_name, real(batches)


def tail_batch_size(busy: int, size: int, lanes: int = 1) -> int:
    """The batch that `busy` rows still running at the end of a set go on in, out of a full batch of `size`: the
    next multiple of about an eighth of it (a multiple of `lanes`, so that the CPU lanes share the rows), or below
    that the next power of two. A CPU step's time grows with its rows while a new shape compiles in about the time
    of one step, so a tail that shrinks step by step pays off; the sizes are few, so each compiles once."""
    granule = min(size, -(-max(size // 8, 1) // lanes) * lanes)
    if busy > granule:
        return min(-(-busy // granule) * granule, size)
    return min(1 << (busy - 1).bit_length(), granule)


class _Slots:
    """The rows of a fixed-size batch during a halting evaluation: which example each slot holds (and its number,
    counting the set's examples from `first_number` in the order they are read), and the next examples (taken from
    the set's batches as they are needed) for slots whose rows halted; padding once the set's examples run out."""

    def __init__(self, batches, size: int, metadata, first_number: int = 0, lanes: int = 1):
        self.batches = batches
        self.size, self.lanes = size, lanes
        self.next_number = first_number
        self.pending = next(batches, None)  # rows read but not yet in a slot
        self.fill = {"inputs": metadata.pad_id, "labels": IGNORE_LABEL_ID,
                     "puzzle_identifiers": metadata.blank_identifier_id}  # fmt: skip
        template = self.pending or {key: np.zeros((0, 1), np.int32) for key in self.fill}
        self.data = {key: np.full((size, *value.shape[1:]), self.fill[key], value.dtype)
                     for key, value in template.items()}  # fmt: skip
        self.real = np.zeros(size, bool)
        self.numbers = np.zeros(size, np.int64)
        self._place(np.ones(size, bool))

    def busy(self) -> bool:
        return bool(self.real.any())

    def feed(self) -> dict[str, mx.array]:
        return {key: mx.array(value) for key, value in self.data.items()}

    def refill(self, halted: np.ndarray) -> dict[str, mx.array]:
        """Next examples into the halted slots (their rows restart from them on the next step)."""
        self.real &= ~halted
        self._place(halted)
        return self.feed()

    def shrink(self) -> np.ndarray | None:
        """Once the set's examples have run out: the slots to keep (the busy ones, in a batch of
        `tail_batch_size`) where that batch is smaller than the current one; None to keep them all."""
        busy = int(self.real.sum())
        if self.pending is not None or busy == 0:
            return None
        target = tail_batch_size(busy, self.size, self.lanes)
        if target >= len(self.real):
            return None
        keep = np.concatenate([np.flatnonzero(self.real), np.flatnonzero(~self.real)[: target - busy]])
        self.real = self.real[keep]
        self.numbers = self.numbers[keep]
        self.data = {key: value[keep] for key, value in self.data.items()}
        return keep

    def _place(self, free: np.ndarray) -> None:
        """The next examples into the free slots; padding (no labels: never scored) into those left over."""
        free = np.flatnonzero(free)
        while self.pending is not None and len(self.pending["inputs"]) < len(free):
            more = next(self.batches, None)
            if more is None:
                break
            self.pending = {key: np.concatenate([value, more[key]]) for key, value in self.pending.items()}
        count = 0 if self.pending is None else min(len(free), len(self.pending["inputs"]))
        slots, left = free[:count], free[count:]
        for key in self.data:
            if count:
                self.data[key][slots] = self.pending[key][:count]
            self.data[key][left] = self.fill[key]
        if self.pending is not None:
            self.pending = {key: value[count:] for key, value in self.pending.items()}
            if not len(self.pending["inputs"]):
                self.pending = next(self.batches, None)
        self.real[slots] = True
        self.numbers[slots] = self.next_number + np.arange(count)
        self.next_number += count
