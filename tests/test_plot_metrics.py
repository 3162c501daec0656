"""scripts/plot_metrics.py draws a run's metrics.jsonl: one panel per metric, readable as a PNG."""

import json

import matplotlib.image
import pytest

from scripts.plot_metrics import PANELS, draw, main, read_metrics, series


def test_a_relayed_runs_curves_are_drawn(tmp_path):
    lines = [
        {"step": 100, "kind": "train", "train/lm_loss": 2.0, "train/accuracy": 0.3, "train/steps": 16.0},
        {"step": 100, "kind": "eval", "all": {"accuracy": 0.4, "exact_accuracy": 0.0}},
        {"step": 150, "kind": "resume"},
        {"step": 200, "kind": "train", "train/lm_loss": 1.5, "train/accuracy": None, "train/steps": 15.0},
        {"step": 200, "kind": "eval", "all": {"accuracy": 0.5, "exact_accuracy": 0.1}},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = read_metrics(path)
    assert series(records, "train", "train/accuracy") == ([100], [0.3])  # a window with no halted rows is a gap
    assert series(records, "eval", "exact_accuracy") == ([100, 200], [0.0, 0.1])

    main([f"ours={path}", f"theirs={path}", "--out", str(tmp_path / "curve.png")])
    image = matplotlib.image.imread(tmp_path / "curve.png")
    assert image.shape[0] > 400 and image.shape[1] > 800

    # each panel: its metric's series for each run, the resumption as a dotted line per run
    fig = draw({"ours": records, "theirs": records})
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert list(panels) == [label for label, _, _ in PANELS]
    for label, kind, key in PANELS:
        lines = panels[label].get_lines()
        curves = [line for line in lines if line.get_linestyle() != ":"]
        assert [line.get_label() for line in curves] == ["ours", "theirs"], label
        expected = series(records, kind, key)
        for line in curves:
            assert (list(line.get_xdata()), list(line.get_ydata())) == (expected[0], expected[1]), label
        assert [list(line.get_xdata()) for line in lines if line.get_linestyle() == ":"] == [[150, 150]] * 2
    assert panels[PANELS[0][0]].get_legend() is not None

    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="metrics.jsonl:1: not a JSON line"):
        read_metrics(path)
