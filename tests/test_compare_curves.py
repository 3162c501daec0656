"""scripts/compare_curves.py: trm_mlx and the PyTorch reference trained side by side from the same weights give
the same curves (tiny run, fp32, no exploration, evaluated with the EMA weights), with the figure and the summary
written."""

import json
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
import torch

from scripts.compare_curves import main, training_loss_agreement
from trm_mlx.training.config import compose, from_hydra
from trm_mlx.training.trainer import train
from tiny_dataset import SEQ_LEN, VOCAB, write_split
from tiny_runs import TINY_RUN


def test_both_trainers_give_the_same_curves(tiny_data, tmp_path, capsys):
    overrides = [*TINY_RUN, "epochs=8", "eval_interval=4", "arch.halt_exploration_prob=0.0", "ema=True", "ema_rate=0.9",
                 "device=cpu"]
    run = ["--data", str(tiny_data), "--out", str(tmp_path), "--log-every", "4"]
    assert main([*run, "--only", "legacy", "--cross-eval", *overrides]) == 0  # one side per machine lease
    assert "needs the other side's run" in capsys.readouterr().out and not (tmp_path / "summary.json").exists()
    assert main([*run, "--only", "mlx", *overrides]) == 0

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [row["step"] for row in summary["evaluations"]] == [16, 32]  # 4 steps an epoch, an evaluation every 4
    for row in summary["evaluations"]:
        for side in ("mlx", "cross"):  # cross: the reference's weights in trm-mlx's evaluation
            for key in ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps"):
                assert row[side][key] == pytest.approx(row["legacy"][key], abs=1e-6), (side, key)
            for key in ("lm_loss", "q_halt_loss"):
                assert row[side][key] == pytest.approx(row["legacy"][key], rel=1e-4), (side, key)
    sides = [[json.loads(line) for line in (tmp_path / side / "metrics.jsonl").read_text().splitlines()]
             for side in ("mlx", "legacy")]  # fmt: skip
    train_lines = [[r for r in records if r["kind"] == "train"] for records in sides]
    assert [r["step"] for r in train_lines[0]] == [r["step"] for r in train_lines[1]] == list(range(4, 33, 4))
    for ours, theirs in zip(*train_lines):
        assert ours["train/lm_loss"] == pytest.approx(theirs["train/lm_loss"], rel=1e-4)
    assert train_lines[0][-1]["train/lm_loss"] < train_lines[0][0]["train/lm_loss"]  # it trained

    assert summary["train_loss_gap_to_spread"] < 0.01 and min(summary["train_loss_spread"].values()) > 0
    assert matplotlib.image.imread(tmp_path / "curves.png").shape[1] > 800
    assert "max test accuracy difference" in capsys.readouterr().out


def test_the_reference_trains_in_a_process_without_our_blas(tiny_data, tmp_path, monkeypatch):
    """The BLAS loaded for MLX would also take PyTorch's matrix products (same symbols, loaded globally first): the
    reference side trains in a child process that loads none."""
    children = []
    run = subprocess.run

    def spy(args, **kwargs):
        children.append(kwargs["env"])
        return run(args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    overrides = [*TINY_RUN, "epochs=2", "eval_interval=2", "device=cpu"]
    assert main(["--data", str(tiny_data), "--out", str(tmp_path), "--only", "legacy", *overrides]) == 0
    assert len(children) == 1 and (tmp_path / "legacy" / "metrics.jsonl").exists()
    probe = "import scripts.compare_curves, trm_mlx.blas; print(trm_mlx.blas.loaded)"
    loaded = run([sys.executable, "-c", probe], env=children[0], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "None"


def test_batches_that_end_inside_a_puzzle_keep_the_same_examples_on_both_sides(tmp_path):
    """Three examples a puzzle, four rows a batch: each batch takes one example of its second puzzle, which the
    reference draws from its data worker's NumPy RNG. Both sides must draw the same one (no exploration: the same
    loss at every step). Both sides train at once (``--concurrent``)."""
    data = tmp_path / "data"
    rng = np.random.default_rng(1)
    inputs = rng.integers(1, VOCAB, (24, SEQ_LEN)).astype(np.uint8)
    labels = inputs[:, ::-1].copy()
    write_split(data, "train", inputs, labels, np.arange(1, 9), np.arange(0, 25, 3), np.arange(0, 9), num_ids=9)
    write_split(data, "test", inputs[:4], labels[:4], [1, 2], [0, 2, 4], [0, 1, 2], num_ids=9)
    overrides = [*TINY_RUN, "epochs=3", "eval_interval=3", "arch.halt_exploration_prob=0.0", "device=cpu"]
    run = ["--data", str(data), "--out", str(tmp_path / "out"), "--log-every", "1", "--concurrent"]
    assert main([*run, *overrides]) == 0
    losses = [[json.loads(line)["train/lm_loss"] for line in (tmp_path / "out" / side / "metrics.jsonl").read_text()
               .splitlines() if json.loads(line)["kind"] == "train"] for side in ("mlx", "legacy")]  # fmt: skip
    assert len(losses[0]) == len(losses[1]) == 12  # 4 batches an epoch
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_training_losses_are_judged_against_each_sides_step_to_step_spread():
    """Curves with noise of 0.2: 0.05 apart they differ by about their spread, 0.5 apart by well over it."""
    rng = np.random.default_rng(0)
    steps = range(10, 2010, 10)
    noise = [rng.normal(0, 0.2, len(steps)) for _ in range(3)]

    def curve(offset, jitter):
        return [{"kind": "train", "step": s, "train/lm_loss": 2.0 - s / 1e4 + offset + j}
                for s, j in zip(steps, jitter)]  # fmt: skip

    mlx = curve(0.0, noise[0])
    near, far = training_loss_agreement(mlx, curve(0.05, noise[1])), training_loss_agreement(mlx, curve(0.5, noise[2]))
    assert 0.1 < near["train_loss_spread"]["mlx"] < 0.4
    assert 0.7 < near["train_loss_gap_to_spread"] < 1.4 < 2 < far["train_loss_gap_to_spread"]
    assert far["train_loss_max_difference"] > near["train_loss_max_difference"]


def test_a_gap_inside_the_spread_shows_in_its_sign():
    """A loss 5% above the other at every step, with step-to-step noise of 10% on both: the median difference
    stays inside the spread, the mean relative gap is the 5% and every step has trm-mlx above."""
    rng = np.random.default_rng(1)
    steps = range(100, 3100, 100)
    base = 2.0 * np.exp(-np.arange(len(steps)) / 20) * (1 + rng.normal(0, 0.1, len(steps)))

    def curve(scale):
        return [{"kind": "train", "step": s, "train/lm_loss": scale * b} for s, b in zip(steps, base)]

    agreement = training_loss_agreement(curve(1.05), curve(1.0))
    assert agreement["train_loss_gap_to_spread"] < 1
    assert agreement["train_loss_relative_gap"] == pytest.approx(0.05)
    assert agreement["train_loss_share_mlx_above"] == 1.0
    assert training_loss_agreement(curve(1.0), curve(1.05))["train_loss_share_mlx_above"] == 0.0


def test_a_failing_trm_mlx_side_stops_the_concurrent_reference(tiny_data, tmp_path, monkeypatch):
    """With ``--concurrent``, an error on the trm_mlx side ends the reference's child at once: the error shows now,
    not after the reference's whole run."""
    import scripts.compare_curves as compare_curves

    children = []
    popen = subprocess.Popen

    def spy(args, **kwargs):
        children.append(popen([sys.executable, "-c", "import time; time.sleep(120)"], **kwargs))
        return children[-1]

    def fail(*args):
        raise RuntimeError("trm_mlx side failed")

    monkeypatch.setattr(subprocess, "Popen", spy)
    monkeypatch.setattr(compare_curves, "run_mlx", fail)
    overrides = [*TINY_RUN, "epochs=2", "eval_interval=2", "device=cpu"]
    with pytest.raises(RuntimeError, match="trm_mlx side failed"):
        main(["--data", str(tiny_data), "--out", str(tmp_path), "--concurrent", *overrides])
    assert len(children) == 1 and children[0].returncode is not None and children[0].returncode < 0


def test_a_trm_train_run_already_made_stands_for_the_trm_mlx_side(tiny_data, tmp_path):
    """``--init mlx`` gives the reference the initial weights a trm-train run of the same recipe drew itself,
    ``max_steps`` stops the reference, and ``--mlx-run`` brings that run's metrics in up to it: the reference then
    repeats the run step for step (no exploration)."""
    overrides = [*TINY_RUN, "epochs=4", "eval_interval=2", "arch.halt_exploration_prob=0.0", "device=cpu"]
    run_dir = tmp_path / "run"
    train(from_hydra(compose([f"data_paths=[{tiny_data}]", *overrides, f"+checkpoint_path={run_dir}"])),
          show_progress=False, metrics_every=1)  # fmt: skip
    out = tmp_path / "out"
    common = ["--data", str(tiny_data), "--out", str(out), "--log-every", "1", *overrides, "max_steps=10"]
    assert main([*common, "--only", "legacy", "--init", "mlx"]) == 0  # e.g. on a GPU lease
    assert main([*common, "--only", "mlx", "--mlx-run", str(run_dir / "metrics.jsonl")]) == 0  # trains nothing

    def train_losses(side):
        lines = [json.loads(line) for line in (out / side / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["train/lm_loss"] for r in lines if r["kind"] == "train"}

    ours, theirs = train_losses("mlx"), train_losses("legacy")
    assert list(ours) == list(theirs) == list(range(1, 11))
    assert [ours[s] for s in ours] == pytest.approx([theirs[s] for s in ours], rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert [row["step"] for row in summary["evaluations"]] == [8]  # the run's evaluations up to step 10


def test_the_reference_continues_a_saved_run_as_if_it_had_not_stopped(tiny_data, tmp_path, capfd):
    """Stopped at ``max_steps`` (inside an epoch and at an evaluation's end) and continued by the next call, the
    reference's run logs the same metrics and ends with the same checkpoint as a run straight through (EMA, ACT
    exploration and its RNG, the carry included), and leaves no state behind at the end."""
    overrides = [*TINY_RUN, "epochs=4", "eval_interval=2", "ema=True", "arch.halt_exploration_prob=0.5", "device=cpu"]

    def run(out, *extra):
        assert main(["--data", str(tiny_data), "--out", str(out), "--log-every", "1", "--only", "legacy",
                     *overrides, *extra]) == 0  # fmt: skip

    run(tmp_path / "straight")
    for stop in ("max_steps=6", "max_steps=8", "max_steps=13"):
        run(tmp_path / "relayed", stop)
        assert json.loads((tmp_path / "relayed/legacy/state/state.json").read_text())["step"] == int(stop[10:])
    assert "continues from step 8 (with its ACT carry)" in capfd.readouterr().out
    run(tmp_path / "relayed")  # to the end

    def records(out):
        return [{k: v for k, v in json.loads(line).items() if k not in ("wall_s", "steps_per_s")}
                for line in (out / "legacy/metrics.jsonl").read_text().splitlines()]  # fmt: skip

    straight = records(tmp_path / "straight")
    relayed = [r for r in records(tmp_path / "relayed") if r["kind"] != "resume"]
    assert [r["step"] for r in relayed if r["kind"] == "train"] == list(range(1, 17))
    assert relayed == straight
    final = [torch.load(tmp_path / side / "legacy/step_16", weights_only=True) for side in ("straight", "relayed")]
    assert final[0].keys() == final[1].keys() and all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    assert not (tmp_path / "relayed/legacy/state").exists()  # nothing left to continue


def test_a_reference_run_continued_without_its_carry_or_with_another_recipe(tiny_data, tmp_path, capfd):
    """Continued without the carry, stopped after ``max_minutes``, saved on the way with ``--save-every``: the
    reference's run still logs each step once, to the end, and no summary is written while it is paused; another
    recipe than the saved run's is refused."""
    overrides = [*TINY_RUN, "epochs=4", "eval_interval=2", "device=cpu"]
    common = ["--data", str(tiny_data), "--out", str(tmp_path), "--log-every", "1", "--only", "legacy"]
    assert main([*common, *overrides, "max_steps=6"]) == 0
    (tmp_path / "legacy/state/carry.pt").unlink()  # left behind to keep a relay small
    with pytest.raises(SystemExit, match="remove the folder to start over"):
        main([*common, *overrides, "lr=3e-4"])
    assert main([*common, *overrides, "max_minutes=0.001"]) == 0  # stops after the first step it trains
    out = capfd.readouterr().out
    assert "continues from step 6 (without its ACT carry)" in out and "stopped at step 7" in out
    assert "the reference stopped at step 7 (max_minutes); the same command continues it" in out
    stand_in = ["--only", "mlx", "--mlx-run", str(tmp_path / "legacy/metrics.jsonl")]  # a trm_mlx side to compare
    assert main([*common[:-2], *stand_in, *overrides]) == 0 and not (tmp_path / "summary.json").exists()
    assert "the reference stopped at step 7" in capfd.readouterr().out
    assert main([*common, "--save-every", "1e-9", *overrides, "max_steps=10"]) == 0  # saves after every step
    out = capfd.readouterr().out
    assert all(f"training state at step {step} saved" in out for step in (8, 9, 10)) and "stopped at step 10" in out
    assert main([*common, *overrides]) == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "legacy/metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]  # fmt: skip
    assert steps == list(range(1, 17)) and (tmp_path / "summary.json").exists()
