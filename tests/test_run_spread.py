"""scripts/run_spread.py: test accuracies side by side and signed training-loss gaps over step ranges, on
metrics whose gaps are known by construction."""

import json

import pytest

from scripts import run_spread


def write_metrics(path, losses: dict[int, float], accuracies: dict[int, float]):
    lines = [{"step": s, "kind": "train", "train/lm_loss": v} for s, v in losses.items()]
    lines += [{"step": s, "kind": "eval", "all": {"accuracy": v}} for s, v in accuracies.items()]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def runs(tmp_path):
    a = {100: 1.0, 200: 0.9, 300: 0.8, 400: 0.7}
    b = {100: 1.25, 200: 1.125, 300: 1.0, 400: 0.7 * 0.8}  # A's loss x 1.25 at three steps, x 0.8 at the last
    return {"a": write_metrics(tmp_path / "a.jsonl", a, {1029: 0.5}),
            "b": write_metrics(tmp_path / "b.jsonl", b, {1029: 0.6, 2058: 0.55})}  # fmt: skip


def test_the_gap_is_the_mean_ratio_minus_one_with_the_steps_above(runs):
    records = {name: run_spread.read_metrics(path) for name, path in runs.items()}
    rows = run_spread.loss_gaps(records, [("a", "b")], [(0, 1000), (100, 200)])
    whole, first_two = rows
    assert whole["relative_gap"] == pytest.approx((3 * (1 / 1.25 - 1) + (1 / 0.8 - 1)) / 4)  # -0.0875
    assert (whole["a_above"], whole["common_steps"]) == (1, 4)
    assert first_two["relative_gap"] == pytest.approx(-0.2) and first_two["a_above"] == 0
    assert run_spread.accuracies_by_step(records) == {1029: {"a": 0.5, "b": 0.6}, 2058: {"b": 0.55}}


def test_the_command_prints_both_tables_and_names_a_wrong_pair(runs, capsys):
    run_spread.main([f"a={runs['a']}", f"b={runs['b']}", "--ranges", "100-200"])
    out = capsys.readouterr().out
    assert "| 1,029 | 0.5000 | 0.6000 |" in out and "| 2,058 |  | 0.5500 |" in out
    assert "| a / b | -20.00% (0/2) |" in out and "(steps where the first is higher) | 100-200 |" in out
    with pytest.raises(SystemExit):
        run_spread.main([f"a={runs['a']}", f"b={runs['b']}", "--pairs", "a/c"])
    assert "'a/c': expected A/B" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_spread.main([f"a={runs['a']}", f"a={runs['b']}"])
    assert "'a' names two runs" in capsys.readouterr().err
