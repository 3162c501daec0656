"""Evaluation that stops each row where its Q head says halt (`halt=q`): a row's answer is that of its first
halting step, the kept-full batch gives the answers of rows run one by one, and bad settings get one line."""

import sys

import mlx.core as mx
import numpy as np
import pytest

from tiny_dataset import write_split
from trm_mlx.data import PuzzleDataset
from trm_mlx.evaluation import cli
from trm_mlx.evaluation.boards import BoardEvaluator
from trm_mlx.evaluation.loop import evaluate
from trm_mlx.model import ACTLossHead, create_model
from trm_mlx.runtime import Runtime

TRM = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"
STEPS = 6
ARCH = dict(name=TRM, puzzle_emb_ndim=16, H_cycles=1, L_cycles=1, L_layers=1, hidden_size=16, expansion=2,
            num_heads=2, pos_encodings="rope", halt_max_steps=STEPS, halt_exploration_prob=0.1, forward_dtype="float32",
            seq_len=6,
            vocab_size=5, num_puzzle_identifiers=3)  # fmt: skip


def halting_model():
    """Random weights with a q_head that makes rows halt at different steps (the original starts it at -5)."""
    mx.random.seed(3)
    model = create_model(ARCH)
    model.inner.q_head.weight = 2.0 * mx.random.normal(model.inner.q_head.weight.shape)
    model.inner.q_head.bias = mx.array([0.3, 0.0])
    model.eval()
    return model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A test split of 11 distinct examples (more than a batch of 4 holds)."""
    root = tmp_path_factory.mktemp("halting")
    rng = np.random.default_rng(1)
    inputs = rng.integers(1, 5, (11, 6)).astype(np.uint8)
    ids = rng.integers(1, 3, 11)
    for split in ("train", "test"):
        write_split(root, split, inputs, inputs[:, ::-1].copy(), ids, np.arange(12), [0, 11], num_ids=3)
    return root


def steps_of_every_row(model, inputs, ids) -> tuple[np.ndarray, np.ndarray]:
    """q_halt and argmax logits of every row at every ACT step, running all steps (no row halts before the last)."""
    arrays = {"inputs": mx.array(inputs.astype(np.int32)), "puzzle_identifiers": mx.array(ids.astype(np.int32)),
              "labels": mx.full(inputs.shape, -100, dtype=mx.int32)}  # fmt: skip
    carry, q, preds = model.initial_carry(arrays), [], []
    for _ in range(STEPS):
        step = model(model.reset_halted(carry, arrays))
        carry = step.carry
        q.append(np.array(step.q_halt))
        preds.append(np.array(step.preds))
    return np.stack(q, 1), np.stack(preds, 1)


def test_a_row_stops_at_its_first_halting_step(data):
    model = halting_model()
    dataset = PuzzleDataset([str(data)], "test", global_batch_size=11)
    _, batch, _ = next(dataset.iter_test())
    q, preds = steps_of_every_row(model, batch["inputs"], batch["puzzle_identifiers"])
    halts = q > 0
    halts[:, -1] = True
    first = halts.argmax(1)  # index of the first halting step
    assert 1 < len(set(first.tolist())) and first.min() < STEPS - 1  # rows halt early, at different steps

    out = model.predict(batch, halt="q")
    np.testing.assert_array_equal(out["steps"], first + 1)
    np.testing.assert_array_equal(out["preds"], preds[np.arange(11), first])
    np.testing.assert_allclose(out["q_halt_logits"], q[np.arange(11), first], rtol=1e-6)
    assert (model.predict(batch)["steps"] == STEPS).all()  # halt=max afterwards: the original's again
    strict = model.predict(batch, halt="q", halt_threshold=0.9)  # a later stop: q_halt > logit(0.9)
    assert (strict["steps"] >= out["steps"]).all() and (strict["steps"] > out["steps"]).any()


def _by_input(metrics_dir):
    saved = np.load(metrics_dir / "all_preds.0.npz")
    return {row.tobytes(): (p.tolist(), float(q), int(n)) for row, p, q, n in zip(saved["inputs"], saved["preds"],
            saved["q_halt_logits"], saved["steps"])}  # fmt: skip


def test_a_full_batch_refilled_as_rows_halt_answers_as_rows_one_by_one(data, tmp_path, runtime):
    head = ACTLossHead(halting_model())
    outputs = ["inputs", "preds", "q_halt_logits", "steps"]
    runs = {}
    for size in (4, 1):
        dataset = PuzzleDataset([str(data)], "test", global_batch_size=size)
        runs[size] = evaluate(head, dataset, runtime, save_outputs=outputs, save_dir=tmp_path / str(size),
                              progress=False, halt_threshold=0.5)  # fmt: skip
    batched, single = runs[4], runs[1]
    assert batched["examples"] == single["examples"] == 11
    assert batched["act_steps"] == single["act_steps"] and len(batched["act_steps"]) > 1
    assert sum(batched["act_steps"].values()) == 11
    for key in ("accuracy", "exact_accuracy", "steps", "q_halt_accuracy"):
        assert batched["all"][key] == pytest.approx(single["all"][key], rel=1e-6), key
    mean_steps = sum(int(n) * c for n, c in batched["act_steps"].items()) / 11
    assert batched["all"]["steps"] == pytest.approx(mean_steps)
    one_by_one, by_input = _by_input(tmp_path / "1"), _by_input(tmp_path / "4")
    for key, (preds, q, steps) in by_input.items():
        # the same answers and steps; Q values up to fp32 rounding, which the batch size changes (matrix blocking)
        assert one_by_one[key][0] == preds and one_by_one[key][1] == pytest.approx(q, rel=1e-4)
        assert one_by_one[key][2] == steps
    # each example's saved steps: the first step whose q_halt > 0, from every row run for all steps
    _, batch, _ = next(PuzzleDataset([str(data)], "test", global_batch_size=11).iter_test())
    q, _ = steps_of_every_row(head.model, batch["inputs"], batch["puzzle_identifiers"])
    halts = np.concatenate([q[:, :-1] > 0, np.ones((11, 1), bool)], axis=1)
    assert [by_input[row.tobytes()][2] for row in batch["inputs"]] == (halts.argmax(1) + 1).tolist()

    full = evaluate(head, PuzzleDataset([str(data)], "test", global_batch_size=4), runtime, progress=False)
    assert full["all"]["steps"] == STEPS and "act_steps" not in full  # halt=max: the original's protocol


def test_each_rows_losses_are_those_of_its_halting_step(data, runtime):
    """Every row run alone for all ACT steps (halt=max keeps them running): its losses at its first step with
    q_halt > 0 are what halt=q reports, averaged over the rows."""
    head = ACTLossHead(halting_model())
    expected = {"lm_loss": [], "q_halt_loss": []}
    for _, batch, _ in PuzzleDataset([str(data)], "test", global_batch_size=1).iter_test():
        arrays = {key: mx.array(value) for key, value in batch.items()}
        carry = head.model.initial_carry(arrays)
        for _ in range(STEPS):  # the last step's losses when it never halts
            step = head.model(head.model.reset_halted(carry, arrays))
            carry = step.carry
            if step.q_halt.item() > 0:
                break
        _, metrics = head.loss_and_metrics(step)
        for key in expected:
            expected[key].append(metrics[key].item())
    assert len(expected["lm_loss"]) == 11

    dataset = PuzzleDataset([str(data)], "test", global_batch_size=4)
    result = evaluate(head, dataset, runtime, progress=False, halt_threshold=0.5)["all"]
    for key, values in expected.items():
        assert result[key] == pytest.approx(np.mean(values), rel=1e-4), key


class Boards(BoardEvaluator):
    """A board evaluator without checks that records the numbers of the examples in the order they arrive."""

    name = "boards"
    check_names = ()

    def checks(self, inputs, preds):
        return {}

    def begin_eval(self):
        super().begin_eval()
        self.arrival = []

    def update_batch(self, batch, outputs):
        self.arrival.extend(batch.get("numbers", []))
        super().update_batch(batch, outputs)


def test_the_report_numbers_examples_by_their_place_in_the_test_split(data, runtime):
    """halt=q hands examples over as they finish; the boards kept for the report are still the first ones of the
    test split, with the steps each used."""
    head = ACTLossHead(halting_model())
    dataset = PuzzleDataset([str(data)], "test", global_batch_size=4)
    kept, arrivals = {}, {}
    for threshold in (None, 0.5):
        boards = Boards(pad_id=dataset.metadata.pad_id, keep_examples=3)
        evaluate(head, dataset, runtime, [boards], progress=False, halt_threshold=threshold)
        kept[threshold], arrivals[threshold] = boards.examples, boards.arrival
    assert sorted(arrivals[0.5]) == list(range(11)) and arrivals[0.5] != sorted(arrivals[0.5])  # out of order
    _, batch, _ = next(PuzzleDataset([str(data)], "test", global_batch_size=11).iter_test())
    q, preds = steps_of_every_row(head.model, batch["inputs"], batch["puzzle_identifiers"])
    first = np.concatenate([q[:, :-1] > 0, np.ones((11, 1), bool)], axis=1).argmax(1)
    for threshold, boards in kept.items():
        assert [board.number for board in boards] == [0, 1, 2]
        for board in boards:
            np.testing.assert_array_equal(board.inputs, batch["inputs"][board.number])
            at = STEPS - 1 if threshold is None else first[board.number]
            assert board.steps == at + 1
            np.testing.assert_array_equal(board.preds, preds[board.number, at])


@pytest.mark.parametrize("override, expected", [
    ("halt=sometimes", "trm-eval: halt: Input should be 'max' or 'q'"),
    ("halt_threshold=1.5", "trm-eval: halt_threshold: Input should be less than 1"),
])  # fmt: skip
def test_bad_halting_settings_get_one_line(override, expected, monkeypatch, data, tmp_path):
    monkeypatch.setattr(sys, "argv", ["trm-eval", f"checkpoint={tmp_path / 'none'}", f"data_paths=[{data}]", override])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert str(stopped.value.code) == expected
    with pytest.raises(ValueError, match="halt='sometimes'"):
        halting_model().predict({"inputs": np.ones((1, 6)), "puzzle_identifiers": np.zeros(1)}, halt="sometimes")


def test_the_tail_runs_in_smaller_batches(data):
    """Once the examples run out, the rows still running go on in a smaller batch (of batch 8: as many slots)."""
    from trm_mlx.evaluation.loop import _Slots

    dataset = PuzzleDataset([str(data)], "test", global_batch_size=11)
    batch = next(dataset.iter_test())[1]
    rows = {key: value[:9] for key, value in batch.items()}
    # read batch by batch: 5 rows, then 4
    slots = _Slots(iter([{k: v[:5] for k, v in rows.items()}, {k: v[5:] for k, v in rows.items()}]), 8,
                   dataset.metadata)  # fmt: skip
    assert (slots.data["inputs"] == rows["inputs"][:8]).all()
    assert slots.shrink() is None  # one example still waits
    slots.refill(np.array([True] + [False] * 7))  # the ninth example takes slot 0: none left
    assert slots.shrink() is None and slots.real.all()  # all 8 slots busy
    slots.refill(np.array([True, True, False, True, True, True, False, True]))  # 6 halt: 2 still running
    keep = slots.shrink()
    assert keep.tolist() == [2, 6] and slots.real.tolist() == [True, True]
    assert (slots.data["inputs"] == rows["inputs"][[2, 6]]).all()
    slots.refill(np.array([True, False]))
    assert slots.shrink().tolist() == [1] and slots.busy()


@pytest.fixture
def cpu_runtime(on_the_cpu):
    """A CPU runtime also where MLX's default device is a GPU."""
    return Runtime.create(device="cpu", cpu_lanes=1)


def test_a_set_smaller_than_the_batch_starts_in_a_smaller_one_on_a_cpu(data, cpu_runtime, monkeypatch):
    """11 examples, batch 32: the first step runs 12 rows (a multiple of 32 // 8), the answers as with batch 16."""
    from trm_mlx.evaluation import loop

    rows = []
    compiled = loop.compiled_eval_step

    def recording(*args, **kwargs):
        step = compiled(*args, **kwargs)
        return lambda carry, batch: rows.append(batch["inputs"].shape[0]) or step(carry, batch)

    monkeypatch.setattr(loop, "compiled_eval_step", recording)
    head = ACTLossHead(halting_model())
    results = {size: evaluate(head, PuzzleDataset([str(data)], "test", global_batch_size=size), cpu_runtime,
                              progress=False, halt_threshold=0.5) for size in (32, 16)}  # fmt: skip
    assert rows[0] == 12
    assert results[32]["act_steps"] == results[16]["act_steps"]
    assert results[32]["all"]["exact_accuracy"] == results[16]["all"]["exact_accuracy"]


def test_tail_batch_sizes():
    """Multiples of an eighth of the batch rounded up to the lanes, powers of two below that, never over the batch."""
    from trm_mlx.evaluation.loop import tail_batch_size

    assert [tail_batch_size(busy, 128, lanes=2) for busy in (128, 113, 112, 69, 17, 16, 9, 5, 1)] == \
        [128, 128, 112, 80, 32, 16, 16, 8, 1]  # fmt: skip
    assert [tail_batch_size(busy, 24, lanes=2) for busy in (23, 13, 5, 4, 3)] == [24, 16, 8, 4, 4]  # granule 3 -> 4
    assert [tail_batch_size(busy, 8) for busy in (8, 7, 2)] == [8, 7, 2]
    assert [tail_batch_size(busy, 3, lanes=2) for busy in (3, 2, 1)] == [3, 2, 1]
