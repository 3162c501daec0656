"""scripts/act_trace.py: per-step answers from one halt=max pass, and the halting rules simulated on them, against
the evaluation loop's own halt=max and halt=q runs; rules on a hand-made trace."""

import json

import matplotlib.image
import matplotlib.pyplot as plt
import mlx.core as mx
import numpy as np
import pytest

import trm_mlx
from scripts.act_trace import (cells_changed, correct_by_step, draw, final_answer_steps, give_up_rules, main,
                               rule_result, rules, trace, unchanged_for)
from tiny_runs import train_tiny
from trm_mlx.checkpoint import save_native
from trm_mlx.data import PuzzleDataset
from trm_mlx.evaluation.loop import evaluate
from trm_mlx.model import ACTLossHead
from trm_mlx.runtime import Runtime


def _hand_trace():
    # three rows of one cell, three steps: row 0 right from step 2 on, row 1 always wrong and changing,
    # row 2 right at step 1 and unchanged after
    preds = np.array([[[5], [7], [7]], [[1], [2], [3]], [[7], [7], [7]]])
    q = np.array([[-1.0, 2.0, 2.0], [-3.0, -3.0, -3.0], [0.5, 0.5, 0.5]])
    return {"preds": preds, "q_halt_logits": q, "labels": np.array([[7], [9], [7]]), "inputs": np.ones((3, 1), int)}


def test_rules_on_a_hand_made_trace():
    arrays = _hand_trace()
    assert unchanged_for(cells_changed(arrays["preds"])).tolist() == [[0, 0, 1], [0, 0, 0], [0, 1, 2]]
    by_name = {r["rule"]: r for r in rules(arrays, thresholds=[0.5, 0.9], patience=[1], caps=[2])}
    assert by_name["cap 1"] == {"rule": "cap 1", "mean_act_steps": 1.0, "exact_accuracy": pytest.approx(1 / 3)}
    assert by_name["cap 3"]["exact_accuracy"] == pytest.approx(2 / 3)
    # q > 0.5 (logit > 0): rows stop at steps 2, 3 (never halts), 1; sigmoid(2) = 0.88 < 0.9: only the cap stops
    assert by_name["q>0.5"] == {"rule": "q>0.5", "mean_act_steps": 2.0, "exact_accuracy": pytest.approx(2 / 3)}
    assert by_name["q>0.9"]["mean_act_steps"] == 3.0
    assert by_name["q>0.9, cap 2"] == {"rule": "q>0.9, cap 2", "mean_act_steps": 2.0,
                                       "exact_accuracy": pytest.approx(2 / 3)}  # fmt: skip
    assert by_name["q>0.5, cap 2"]["mean_act_steps"] == pytest.approx(5 / 3)  # rows stop at 2, 2, 1
    assert by_name["unchanged 1"] == {"rule": "unchanged 1", "mean_act_steps": pytest.approx(8 / 3),
                                      "exact_accuracy": pytest.approx(2 / 3)}  # fmt: skip
    assert by_name["oracle"] == {"rule": "oracle", "mean_act_steps": 2.0, "exact_accuracy": pytest.approx(2 / 3)}
    assert final_answer_steps(correct_by_step(arrays)).tolist() == [2, 1]

    # giving up, with q > 0.5 (rows stop at 2, 3, 1): at step 1 on row 1 (the lowest Q) 4/3 steps, nothing lost;
    # on rows 0 and 1, 1 step and row 0's later answer lost; at step 2 on row 1, 5/3 steps (beaten by the first)
    assert cells_changed(arrays["preds"]).tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0]]
    give_up = [(name, r["mean_act_steps"], r["exact_accuracy"]) for name, r in by_name.items() if "give up" in name]
    assert give_up == [
        ("q>0.5, give up on a low Q: step 1, q_halt logit <= -1", 1.0, pytest.approx(1 / 3)),
        ("q>0.5, give up on a low Q: step 1, q_halt logit <= -3", pytest.approx(4 / 3), pytest.approx(2 / 3)),
        ("q>0.5, give up on a moving answer: step 1, >= 1 cells changed", 1.0, pytest.approx(1 / 3)),
        ("q>0.5, give up on a moving answer: step 2, >= 1 cells changed", pytest.approx(5 / 3), pytest.approx(2 / 3)),
    ]


def test_the_figure_draws_the_rules_and_the_final_answer_steps():
    arrays = _hand_trace()
    fig = draw(rules(arrays, thresholds=[0.5], patience=[1], caps=[2]), correct_by_step(arrays), "hand-made")
    trade, first = fig.axes
    lines = {line.get_label(): line for line in trade.get_lines()}
    # caps 1..3: rows 0 and 2 right from step 2 on, row 2 alone at step 1
    np.testing.assert_allclose(lines["every row stops at step s"].get_xydata(), [[1, 1 / 3], [2, 2 / 3], [3, 2 / 3]])
    # q > 0.5 stops rows at 2, 3, 1 (2 steps on average), with cap 2 at 2, 2, 1; rows 0 and 2 right either way
    np.testing.assert_allclose(lines["q>0.5, with caps"].get_xydata(), [[5 / 3, 2 / 3], [2, 2 / 3]])
    # the solved rows' answers stay right from step 2 (row 0) and step 1 (row 2)
    assert [bar.get_height() for bar in first.patches] == [1, 1, 0]
    assert fig.get_suptitle() == "hand-made"
    plt.close(fig)


def test_the_trace_agrees_with_the_evaluation_loop(tiny_data, tmp_path):
    train_tiny(tiny_data, tmp_path / "run", "max_steps=8")
    checkpoint = str(tmp_path / "run" / "step_8")
    main(["--checkpoint", checkpoint, "--data", str(tiny_data), "--out", str(tmp_path / "out"), "--batch-size", "4"])
    with np.load(tmp_path / "out" / "trace.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    records = [json.loads(line) for line in (tmp_path / "out" / "rules.jsonl").read_text().splitlines()]
    assert matplotlib.image.imread(tmp_path / "out" / "act_trace.png").shape[1] > 800

    runtime = Runtime.create(cpu_lanes=1)
    head = ACTLossHead(trm_mlx.load(checkpoint, runtime=runtime))
    steps = head.model.config.halt_max_steps
    assert arrays["preds"].shape[1] == steps and len(arrays["labels"]) > 0

    def dataset():
        return PuzzleDataset([str(tiny_data)], "test", global_batch_size=4)

    full = evaluate(head, dataset(), runtime, progress=False, save_outputs=["inputs", "preds"], save_dir=tmp_path)
    with np.load(tmp_path / "all_preds.0.npz") as saved:
        real = saved["inputs"].any(axis=1)
        np.testing.assert_array_equal(saved["preds"][real], arrays["preds"][:, -1])
    cap = next(r for r in records if r["rule"] == f"cap {steps}")
    assert cap["exact_accuracy"] == pytest.approx(full["all"]["exact_accuracy"])

    # a Q head whose logits differ between rows (the tiny model's sit at their initial -5): the halting
    # evaluation's own run of a threshold that two rows pass at step 1 agrees with the rule on the trace
    q_head = head.model.inner.q_head
    q_head.weight = mx.random.normal(q_head.weight.shape, key=mx.random.key(0))
    arrays = trace(head.model, dataset())
    first = np.sort(arrays["q_halt_logits"][:, 0])
    logit = (first[1] + first[2]) / 2
    assert first[2] - first[1] > 0.01  # far from rounding
    threshold = float(1 / (1 + np.exp(-logit)))
    simulated = next(r for r in rules(arrays, [threshold], []) if r["rule"] == f"q>{threshold:g}")
    halting = evaluate(head, dataset(), runtime, progress=False, halt_threshold=threshold,
                       save_outputs=["inputs", "preds", "steps"], save_dir=tmp_path / "halting")  # fmt: skip
    assert simulated["mean_act_steps"] == pytest.approx(halting["all"]["steps"])
    assert simulated["exact_accuracy"] == pytest.approx(halting["all"]["exact_accuracy"])
    assert 1 < simulated["mean_act_steps"] < steps
    # row by row (the halting evaluation saves rows in the order they finish): each stops at the trace's first
    # step over the threshold with that step's answer
    stop = arrays["q_halt_logits"] > logit
    stop[:, -1] = True
    first = stop.argmax(axis=1)
    with np.load(tmp_path / "halting" / "all_preds.0.npz") as saved:
        order = [next(i for i, row in enumerate(arrays["inputs"]) if (row == inputs).all())
                 for inputs in saved["inputs"]]  # fmt: skip
        assert sorted(order) == list(range(len(first)))
        np.testing.assert_array_equal(saved["steps"], first[order] + 1)
        np.testing.assert_array_equal(saved["preds"], arrays["preds"][order, first[order]])

    # --steps runs on past the trained number: its first steps are the default trace's, and the rows go on from
    # there rather than starting over (the Q logit after step `steps` + 1 is not step 1's)
    save_native(tmp_path / "random_q", head.model)
    main(["--checkpoint", str(tmp_path / "random_q"), "--data", str(tiny_data), "--out", str(tmp_path / "longer"),
          "--batch-size", "4", "--steps", str(2 * steps)])  # fmt: skip
    with np.load(tmp_path / "longer" / "trace.npz") as npz:
        assert npz["preds"].shape[1] == npz["q_halt_logits"].shape[1] == 2 * steps
        np.testing.assert_array_equal(npz["preds"][:, :steps], arrays["preds"])
        np.testing.assert_allclose(npz["q_halt_logits"][:, :steps], arrays["q_halt_logits"], rtol=1e-6)
        assert not np.allclose(npz["q_halt_logits"][:, steps], arrays["q_halt_logits"][:, 0])
    with pytest.raises(SystemExit):
        main(["--checkpoint", checkpoint, "--data", str(tiny_data), "--out", str(tmp_path / "none"), "--steps", "0"])

    # a Q-continue model halts on q_halt - q_continue, which the trace does not record: refused, not misread
    head.model.config.no_ACT_continue = False
    with pytest.raises(ValueError, match="no_ACT_continue=False"):
        trace(head.model, dataset())


def test_give_up_rules_are_the_best_of_every_step_and_threshold():
    """On a random trace, every rule that gives up on at least one running row, run on its own (the stop matrix
    built from its step and threshold): a kept rule reaches its accuracy or more in its mean steps or fewer, and
    each kept one is what its own rule gives."""
    rng = np.random.default_rng(0)
    rows, steps = 40, 6
    correct = rng.random((rows, steps)) < np.linspace(0.1, 0.7, steps)
    halts = rng.random((rows, steps)) < 0.15
    score = rng.integers(0, 5, (rows, steps)).astype(float)
    kept = give_up_rules("g", lambda v: f"score >= {v:g}", halts, score, correct)
    first = np.concatenate([halts[:, :-1], np.ones((rows, 1), bool)], axis=1).argmax(axis=1)
    every = []
    for k in range(steps):
        for value in np.unique(score[:, k]):
            if not (score[first > k, k] >= value).any():
                continue  # gives up on no row: the threshold rule alone
            stop = halts.copy()
            stop[:, k] |= score[:, k] >= value
            every.append((rule_result("", stop, correct), k + 1, value))
    for result, k, value in every:
        beaten = [r for r in kept if r["mean_act_steps"] <= result["mean_act_steps"] + 1e-12]
        assert beaten and max(r["exact_accuracy"] for r in beaten) >= result["exact_accuracy"] - 1e-12
    for r in kept:
        step, value = r["rule"].split("step ")[1].split(", score >= ")
        match = [res for res, k, v in every if k == int(step) and v == float(value)]
        assert match and match[0]["mean_act_steps"] == pytest.approx(r["mean_act_steps"])
        assert match[0]["exact_accuracy"] == pytest.approx(r["exact_accuracy"])
    assert len(kept) > 3
