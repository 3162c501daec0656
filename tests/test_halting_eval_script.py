"""scripts/halting_eval.py: both protocols on one checkpoint in one run, written as JSON lines and a figure."""

import json

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np

from scripts.halting_eval import draw, main
from tiny_runs import train_tiny


def test_both_protocols_side_by_side(tiny_data, tmp_path):
    train_tiny(tiny_data, tmp_path / "run", "max_steps=8")
    main(["--checkpoint", str(tmp_path / "run" / "step_8"), "--data", str(tiny_data), "--out", str(tmp_path / "out"),
          "--thresholds", "0.5", "0.9", "--batch-size", "4", "--limit", "3"])  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "out" / "halting.jsonl").read_text().splitlines()]
    assert [r["halt"] for r in records] == ["max", "q>0.5", "q>0.9"]
    assert all(r["examples"] == 3 and r["examples_per_s"] > 0 for r in records)
    assert records[0]["mean_act_steps"] == 3 and records[0]["act_steps"] is None  # the tiny model's halt_max_steps
    assert all(sum(r["act_steps"].values()) == 3 for r in records[1:])
    assert matplotlib.image.imread(tmp_path / "out" / "halting.png").shape[1] > 400

    (tmp_path / "out" / "halting.png").unlink()  # --plot-only redraws it from the JSON lines, evaluating nothing
    main(["--checkpoint", "absent", "--data", "absent", "--out", str(tmp_path / "out"), "--plot-only"])
    assert matplotlib.image.imread(tmp_path / "out" / "halting.png").shape[1] > 800


def test_the_figure_draws_each_protocol_and_its_halting_steps():
    records = [
        {"halt": "max", "examples_per_s": 10.0, "mean_act_steps": 3.0, "exact_accuracy": 0.5, "act_steps": None},
        {"halt": "q>0.5", "examples_per_s": 20.0, "mean_act_steps": 1.75, "exact_accuracy": 0.25,
         "act_steps": {"1": 2, "2": 1, "3": 1}},
        {"halt": "q>0.9", "examples_per_s": 15.0, "mean_act_steps": 2.75, "exact_accuracy": 0.5,
         "act_steps": {"2": 1, "3": 3}},
    ]  # fmt: skip
    fig = draw(records, "hand-made")
    points, spread = fig.axes
    assert [c.get_offsets().tolist() for c in points.collections] == [[[3.0, 0.5]], [[1.75, 0.25]], [[2.75, 0.5]]]
    labels = [t.get_text() for t in points.get_legend().get_texts()]
    assert labels == ["max: 10 ex/s", "q>0.5: 20 ex/s", "q>0.9: 15 ex/s"]
    # two halting protocols side by side at each step: bars 0.4 wide, centred 0.2 left and right of the step
    bars = [(bar.get_x() + bar.get_width() / 2, bar.get_height()) for bar in spread.patches]
    np.testing.assert_allclose(bars, [[0.8, 2], [1.8, 1], [2.8, 1], [2.2, 1], [3.2, 3]])
    assert [t.get_text() for t in spread.get_legend().get_texts()] == ["q>0.5", "q>0.9"]
    plt.close(fig)
