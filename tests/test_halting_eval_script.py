"""scripts/halting_eval.py: both protocols on one checkpoint in one run, written as JSON lines and a figure."""

import json

import matplotlib.image

from scripts.halting_eval import main
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
