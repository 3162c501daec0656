"""trm-eval end to end with tiny random models on small real builds: per-set metrics against an independent
computation from `model.predict`, evaluators, saved predictions, re-scoring, the command line, data parallelism."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch
import yaml
from arc_helpers import legacy_evaluator, to_torch
from mlx.utils import tree_flatten

from trm_mlx import load
from trm_mlx.checkpoint import save_native, save_original
from trm_mlx.data.dataset import PuzzleDataset
from trm_mlx.evaluation.cli import EvalConfig, run
from trm_mlx.evaluation.maze import maze_checks
from trm_mlx.evaluation.sudoku import sudoku_checks
from trm_mlx.model import create_model
from trm_mlx.training.checkpointing import ARRAYS_FILE, STATE_FILE, STATE_FORMAT, STATE_VERSION

REPO = Path(__file__).resolve().parents[2]
TRM = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"
TINY = dict(
    puzzle_emb_ndim=32, H_cycles=1, L_cycles=1, L_layers=1, hidden_size=32, expansion=2, num_heads=2,
    pos_encodings="rope", halt_max_steps=2, halt_exploration_prob=0.1, forward_dtype="float32",
)  # fmt: skip
SAVE_ALL = ["inputs", "labels", "puzzle_identifiers", "preds", "q_halt_logits"]


def tiny_model(data_dir: Path, seed: int = 0):
    meta = json.loads((data_dir / "test" / "dataset.json").read_text())
    mx.random.seed(seed)
    sizes = {key: meta[key] for key in ("seq_len", "vocab_size", "num_puzzle_identifiers")}
    model = create_model({"name": TRM, **TINY, **sizes})
    # The original starts q_head at zero (every q_halt = -5); random weights make the q values differ.
    model.inner.q_head.weight = 0.5 * mx.random.normal(model.inner.q_head.weight.shape)
    return model


def native_checkpoint(tmp_path, data_dir) -> Path:
    return save_native(tmp_path / "ckpt" / "step_7", tiny_model(data_dir))


def original_checkpoint(tmp_path, data_dir) -> Path:
    """An original-format checkpoint (torch state dict) with the all_config.yaml the original writes beside it."""
    path = save_original(tmp_path / "run" / "step_7", tiny_model(data_dir))
    arch = {"name": TRM, "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"}, **TINY}
    config = {"arch": arch, "data_paths": [str(data_dir)], "global_batch_size": 768, "lr": 1e-4, "seed": 0}
    (path.parent / "all_config.yaml").write_text(yaml.safe_dump(config))
    return path


def stablemax_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row Σ_t −log stablemax(logits)[label] / (number of labelled tokens), in float64 (spec §4.1)."""
    x = logits.astype(np.float64)
    s = np.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    log_probs = np.log(s / s.sum(-1, keepdims=True))
    valid = labels != -100
    picked = np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return -(np.where(valid, picked, 0)).sum(-1) / np.maximum(valid.sum(-1), 1)


def expected_set_metrics(model, data_dir: Path, batch_size: int) -> tuple[dict, dict]:
    """Metrics of spec §4.3/§5.9 computed with NumPy from `model.predict` on the same padded batches: sums over
    rows with labels, except the losses, which sum over every row (padding rows add to q_halt_loss, as in the
    original), all divided by the number of rows with labels."""
    dataset = PuzzleDataset([str(data_dir)], "test", global_batch_size=batch_size)
    rows = [(batch, model.predict(batch)) for _, batch, _ in dataset.iter_test()]
    labels = np.concatenate([batch["labels"] for batch, _ in rows])
    out = {k: np.concatenate([o[k] for _, o in rows]) for k in rows[0][1]}
    valid = labels != -100
    counted = valid.any(-1)
    correct = valid & (out["preds"] == labels)
    seq_correct = correct.sum(-1) == valid.sum(-1)
    q = out["q_halt_logits"].astype(np.float64)
    metrics = {
        "accuracy": (correct.sum(-1) / np.maximum(valid.sum(-1), 1))[counted].sum(),
        "exact_accuracy": seq_correct[counted].sum(),
        "lm_loss": stablemax_loss(out["logits"], labels).sum(),
        "q_halt_accuracy": ((q >= 0) == seq_correct)[counted].sum(),
        "q_halt_loss": (np.maximum(q, 0) - q * seq_correct + np.log1p(np.exp(-np.abs(q)))).sum(),
        "steps": out["steps"][counted].sum(),
    }
    real = {k: v[counted] for k, v in {**out, "inputs": np.concatenate([b["inputs"] for b, _ in rows])}.items()}
    return {k: v / counted.sum() for k, v in metrics.items()}, real


def test_a_small_test_split_runs_in_a_batch_of_its_size_by_default(sudoku_build, tmp_path):
    """24 examples: 32 rows (the next power of two) instead of 256, mostly padding; the same answers and metrics,
    but for the Q-halt loss, whose sum counts the padding rows (as the original's does)."""
    checkpoint = native_checkpoint(tmp_path, sudoku_build)
    runs, rows = {}, {}
    for batch in (None, 256):
        out_dir = tmp_path / f"out_{batch}"
        cfg = EvalConfig(checkpoint=str(checkpoint), data_paths=[str(sudoku_build)], global_batch_size=batch,
                         output_dir=str(out_dir), save_outputs=["preds"], progress=False)  # fmt: skip
        runs[batch] = run(cfg)
        rows[batch] = np.load(out_dir / "all_preds.0.npz")["preds"]
    assert (len(rows[None]), len(rows[256])) == (32, 256)
    assert (rows[None][:24] == rows[256][:24]).all()
    for key in ("accuracy", "exact_accuracy", "lm_loss", "q_halt_accuracy", "steps"):
        assert runs[None]["all"][key] == pytest.approx(runs[256]["all"][key], rel=1e-5), key


@pytest.mark.parametrize("lanes", [1, 2], ids=["one_graph", "cpu_lanes"])
def test_sudoku_native_checkpoint_end_to_end(lanes, sudoku_build, tmp_path):
    checkpoint = native_checkpoint(tmp_path, sudoku_build)
    out_dir = tmp_path / "out"
    cfg = EvalConfig(
        checkpoint=str(checkpoint), data_paths=[str(sudoku_build)], global_batch_size=16, output_dir=str(out_dir),
        save_outputs=SAVE_ALL, progress=False, cpu_lanes=lanes,
    )  # fmt: skip
    metrics = run(cfg)
    assert json.loads((out_dir / "metrics.json").read_text()) == metrics

    expected, rows = expected_set_metrics(load(checkpoint), sudoku_build, batch_size=16)
    assert metrics["all"] == pytest.approx(expected, rel=1e-5)
    assert metrics["all"]["steps"] == TINY["halt_max_steps"]
    assert metrics["examples"] == 24 and metrics["examples_per_second"] > 0
    checks = sudoku_checks(rows["inputs"], rows["preds"])
    assert metrics["Sudoku/count"] == 24
    for key in ("valid", "consistent", "clues_kept"):
        assert metrics[f"Sudoku/{key}"] == checks[key].mean()
    assert metrics["Sudoku/exact_accuracy"] == expected["exact_accuracy"]

    saved = dict(np.load(out_dir / "all_preds.0.npz"))
    assert len(saved["preds"]) == 32  # two batches of 16, padding rows included as in the original's files
    assert (saved["preds"][:24] == rows["preds"]).all()

    rescored = run(EvalConfig(data_paths=[str(sudoku_build)], preds=str(out_dir / "all_preds.0.npz"),
                              output_dir=str(tmp_path / "rescored")))  # fmt: skip
    assert rescored == {k: v for k, v in metrics.items() if k.startswith("Sudoku/")}


def test_rescoring_counts_each_kind_of_board(sudoku_build, tmp_path):
    """Re-scoring hand-made predictions of the 24 test puzzles, with the padding rows a saved file holds: 12 answers
    equal to the labels, 6 with digits 1 and 2 swapped over the whole board (still a Sudoku, the clues 1 and 2
    overwritten), 6 left as the puzzles (blanks: clues kept, not a Sudoku)."""
    inputs = np.load(sudoku_build / "test" / "all__inputs.npy")
    labels = np.load(sudoku_build / "test" / "all__labels.npy")
    assert len(inputs) == 24
    swapped = labels.copy()
    swapped[labels == 2], swapped[labels == 3] = 3, 2  # tokens 2 and 3 are the digits 1 and 2
    assert (np.isin(inputs[12:18], (2, 3))).any(axis=1).all()  # every swapped board overwrites a clue
    preds = np.concatenate([labels[:12], swapped[12:18], inputs[18:]])
    pad = np.zeros((8, inputs.shape[1]), inputs.dtype)  # padding rows: PAD inputs, whatever the model answered
    rows = {"inputs": np.concatenate([inputs, pad]), "labels": np.concatenate([labels, pad]),
            "preds": np.concatenate([preds, pad + 5])}  # fmt: skip
    np.savez(tmp_path / "all_preds.0.npz", **rows)
    metrics = run(EvalConfig(data_paths=[str(sudoku_build)], preds=str(tmp_path / "all_preds.0.npz"),
                             output_dir=str(tmp_path / "rescored")))  # fmt: skip
    assert metrics == {"Sudoku/count": 24, "Sudoku/exact_accuracy": 12 / 24, "Sudoku/valid": 12 / 24,
                       "Sudoku/consistent": 18 / 24, "Sudoku/clues_kept": 18 / 24}  # fmt: skip


def test_arc_original_checkpoint_end_to_end(arc_build, tmp_path, capsys):
    checkpoint = original_checkpoint(tmp_path, arc_build)
    out_dir = tmp_path / "out"
    cfg = EvalConfig(
        checkpoint=str(checkpoint), data_paths=[str(arc_build)], global_batch_size=8, output_dir=str(out_dir),
        save_outputs=SAVE_ALL, render=True, render_limit=3, progress=False,
    )  # fmt: skip
    metrics = run(cfg)

    expected, _ = expected_set_metrics(load(checkpoint), arc_build, batch_size=8)
    assert metrics["all"] == pytest.approx(expected, rel=1e-5)
    # The original evaluator, fed the rows this run saved (padding rows included), agrees exactly.
    saved = dict(np.load(out_dir / "all_preds.0.npz"))
    legacy = legacy_evaluator(arc_build)
    legacy.update_batch(to_torch(saved), to_torch(saved))
    legacy_dir = tmp_path / "legacy"
    legacy_dir.mkdir()
    expected_arc = legacy.result(str(legacy_dir), rank=0, world_size=1)
    assert {k: metrics[k] for k in expected_arc} == expected_arc

    submission = json.loads((out_dir / "submission.json").read_text())
    test_puzzles = json.loads((arc_build / "test_puzzles.json").read_text())
    assert {name: len(entries) for name, entries in submission.items()} == {
        name: len(puzzle["test"]) for name, puzzle in test_puzzles.items()
    }
    assert submission == json.loads((legacy_dir / "submission.json").read_text())  # every pair has votes here
    page = (out_dir / "report" / "index.html").read_text()
    assert page.count("<svg") == sum(4 * len(p["test"]) for p in list(test_puzzles.values())[:3])
    assert "ARC/pass@2" in page and "all · accuracy" in page  # the metrics at the top

    capsys.readouterr()
    run(cfg.model_copy(update={"save_outputs": [], "render": False}))  # the report and predictions stay behind
    warning = f"trm-eval: warning: {out_dir} still holds report/, all_preds.0.npz of an earlier evaluation"
    assert warning in capsys.readouterr().err


def test_maze_with_arch_override(maze_build, tmp_path):
    checkpoint = native_checkpoint(tmp_path, maze_build)
    metrics = run(EvalConfig(
        checkpoint=str(checkpoint), data_paths=[str(maze_build)], arch={"halt_max_steps": 1}, global_batch_size=4,
        output_dir=str(tmp_path / "out"), save_outputs=["inputs", "preds"], progress=False,
    ))  # fmt: skip
    assert metrics["all"]["steps"] == 1
    assert metrics["examples"] == 10 and metrics["Maze/count"] == 10
    saved = dict(np.load(tmp_path / "out" / "all_preds.0.npz"))
    checks = maze_checks(saved["inputs"][:10], saved["preds"][:10])
    assert metrics["Maze/valid"] == checks["valid"].mean()
    assert metrics["Maze/shortest"] == checks["shortest"].mean()


def _cli(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "trm_mlx.evaluation.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=kwargs.get("cwd"), timeout=300)


def test_command_line_rescoring_of_original_files(arc_eval_fixture, tmp_path):
    rows = arc_eval_fixture.rows()
    preds_file = tmp_path / "step_3_all_preds.0"
    torch.save(to_torch(rows), preds_file)
    # data_paths must be a build; the fixture has only the two JSON files the ARC evaluator reads, plus metadata.
    (arc_eval_fixture.data_dir / "test").mkdir()
    meta = dict(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=12, seq_len=900,
                num_puzzle_identifiers=10_000, total_groups=1, mean_puzzle_examples=1.0, total_puzzles=1, sets=["all"])  # fmt: skip
    (arc_eval_fixture.data_dir / "test" / "dataset.json").write_text(json.dumps(meta))

    result = _cli(f"data_paths=[{arc_eval_fixture.data_dir}]", f"preds={preds_file}", f"output_dir={tmp_path / 'out'}")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed == json.loads((tmp_path / "out" / "metrics.json").read_text())
    legacy = legacy_evaluator(arc_eval_fixture.data_dir)
    legacy.update_batch(to_torch(rows), to_torch(rows))
    assert printed == legacy.result(None, 0, 1)

    result = _cli(f"data_paths=[{arc_eval_fixture.data_dir}]", f"checkpoint={tmp_path / 'nothing'}")
    assert result.returncode != 0 and "nothing: no such checkpoint file" in result.stderr
    result = _cli(f"checkpoint={tmp_path / 'nothing'}")  # and without data_paths, which its config would give
    missing = "nothing: no such checkpoint file, model folder or training-state folder"
    assert result.returncode != 0 and missing in result.stderr
    result = _cli(f"data_paths=[{arc_eval_fixture.data_dir}]")
    assert result.returncode != 0 and "exactly one of checkpoint=FILE" in result.stderr


def test_data_parallel_evaluation_matches_one_process(sudoku_build, tmp_path):
    checkpoint = native_checkpoint(tmp_path, sudoku_build)
    args = [f"checkpoint={checkpoint}", f"data_paths=[{sudoku_build}]", "global_batch_size=16", "progress=false"]
    single = run(EvalConfig(checkpoint=str(checkpoint), data_paths=[str(sudoku_build)], global_batch_size=16,
                            output_dir=str(tmp_path / "single"), progress=False))  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = Path(sys.executable).with_name("mlx.launch")
    command = [launcher, "-n", "2", "--backend", "ring", "--starting-port", str(port), "--python", sys.executable,
               "-m", "trm_mlx.evaluation.cli", *args, f"output_dir={tmp_path / 'pair'}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    pair = json.loads((tmp_path / "pair" / "metrics.json").read_text())
    assert pair["all"] == pytest.approx(single["all"], rel=1e-6)
    assert {k: v for k, v in pair.items() if k.startswith("Sudoku/")} == {
        k: v for k, v in single.items() if k.startswith("Sudoku/")
    }
    assert pair["examples"] == single["examples"] == 24


def test_training_state_live_or_ema_weights(sudoku_build, tmp_path):
    live, averaged = tiny_model(sudoku_build, seed=0), tiny_model(sudoku_build, seed=1)
    # A trm-train training state: all live arrays under "model.", the EMA of the trainable ones under "ema.".
    state_dir = tmp_path / "run" / "train_state_step_5"
    state_dir.mkdir(parents=True)
    arrays = {f"model.{k}": v for k, v in tree_flatten(live.parameters())}
    arrays.update({f"ema.{k}": v for k, v in tree_flatten(averaged.trainable_parameters())})
    mx.save_safetensors(str(state_dir / ARRAYS_FILE), arrays)
    arch = {"name": TRM, "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"}, **TINY}
    meta = {"format": STATE_FORMAT, "version": STATE_VERSION, "step": 5, "config": {"arch": arch}}
    (state_dir / STATE_FILE).write_text(json.dumps(meta))

    # The EMA model: averaged trainable weights, the live puzzle table and init states (as the original's EMA).
    ema_model = tiny_model(sudoku_build, seed=0)
    ema_model.update(averaged.trainable_parameters())
    references = {"live": save_native(tmp_path / "live", live), "ema": save_native(tmp_path / "ema", ema_model)}

    def evaluate_set(checkpoint, **kwargs):
        cfg = EvalConfig(checkpoint=str(checkpoint), data_paths=[str(sudoku_build)], global_batch_size=16,
                         output_dir=str(tmp_path / "out"), progress=False, **kwargs)  # fmt: skip
        return run(cfg)["all"]

    from_state = {"live": evaluate_set(tmp_path / "run", ema=False), "ema": evaluate_set(tmp_path / "run", ema=True)}
    assert from_state == {name: evaluate_set(path) for name, path in references.items()}
    assert from_state["live"] != from_state["ema"]
    assert evaluate_set(tmp_path / "run") == from_state["ema"]  # by default what the trainer's step_N holds
    with pytest.raises(ValueError, match="ema=true needs a trm-train training-state folder"):
        evaluate_set(references["live"], ema=True)


def test_default_output_folders_of_two_runs_differ(tmp_path):
    first = EvalConfig(checkpoint="checkpoints/p/run_a/step_400", data_paths=["d"]).default_output_dir()
    second = EvalConfig(checkpoint="checkpoints/p/run_b/step_400", data_paths=["d"]).default_output_dir()
    assert first == Path("outputs/eval/run_a/step_400") and second == Path("outputs/eval/run_b/step_400")
    state = EvalConfig(checkpoint="checkpoints/p/run_a", ema=True, halt="q", halt_threshold=0.9, data_paths=["d"])
    assert state.default_output_dir() == Path("outputs/eval/p/run_a_ema_halt-q-0.9")
    (tmp_path / "run_b").mkdir()
    (tmp_path / "run_b" / "step_4").touch()
    live = EvalConfig(checkpoint=str(tmp_path / "run_b"), ema=False, data_paths=["d"]).default_output_dir()
    one_set = EvalConfig(checkpoint=str(tmp_path / "run_b" / "step_4"), ema=False, data_paths=["d"])  # a file
    assert live.name == "run_b_live" and one_set.default_output_dir() == Path("outputs/eval/run_b/step_4")


def test_without_data_paths_a_checkpoint_is_evaluated_on_its_run_s_test_data(sudoku_build, tmp_path):
    checkpoint = original_checkpoint(tmp_path, sudoku_build)  # all_config.yaml names sudoku_build
    common = dict(checkpoint=str(checkpoint), global_batch_size=16, progress=False)
    named = run(EvalConfig(**common, data_paths=[str(sudoku_build)], output_dir=str(tmp_path / "named")))
    default = run(EvalConfig(**common, output_dir=str(tmp_path / "default")))
    assert default["all"] == named["all"] and default["Sudoku/count"] == named["Sudoku/count"] == 24

    (checkpoint.parent / "all_config.yaml").write_text(yaml.safe_dump({"arch": {"name": TRM, **TINY}}))
    with pytest.raises(ValueError, match="config names no data: give the built dataset"):
        run(EvalConfig(**common, output_dir=str(tmp_path / "none")))
    with pytest.raises(ValueError, match="data_paths is empty"):
        EvalConfig(preds="all_preds.0.npz")


def test_a_model_folder_is_its_model_safetensors(sudoku_build, tmp_path):
    """A folder holding `model.safetensors` and its all_config.yaml (as a shipped model is) loads and evaluates as
    the file itself, on the test data its config names."""
    folder = tmp_path / "models" / "tiny"
    file = save_native(folder / "model.safetensors", tiny_model(sudoku_build))
    config = {"arch": {"name": TRM, **TINY}, "data_paths": [str(sudoku_build)]}
    (folder / "all_config.yaml").write_text(yaml.safe_dump(config))
    common = dict(global_batch_size=16, progress=False)
    by_file = run(EvalConfig(checkpoint=str(file), data_paths=[str(sudoku_build)], output_dir=str(tmp_path / "f"),
                             **common))  # fmt: skip
    by_folder = run(EvalConfig(checkpoint=str(folder), output_dir=str(tmp_path / "d"), **common))
    assert by_folder["all"] == by_file["all"] and by_folder["Sudoku/count"] == 24
    for ema in (None, False):  # a model folder, as a file, holds one set of weights
        named = EvalConfig(checkpoint=str(folder), ema=ema, data_paths=["d"]).default_output_dir()
        assert named == Path("outputs/eval/models/tiny")
    batch = {"inputs": np.full((2, 81), 2, np.int32), "puzzle_identifiers": np.zeros(2, np.int32)}
    np.testing.assert_array_equal(load(folder).predict(batch)["logits"], load(file).predict(batch)["logits"])


def test_data_unlike_the_model_s_is_refused(sudoku_build, maze_build, tmp_path):
    """Data of another length or vocabulary than the checkpoint's model is refused, whether the length comes from
    the checkpoint file, its run's training data or a training state; predictions of another width too."""
    other_vocab = tmp_path / "sudoku-vocab-12"
    shutil.copytree(sudoku_build, other_vocab)
    metadata = json.loads((other_vocab / "test" / "dataset.json").read_text())
    (other_vocab / "test" / "dataset.json").write_text(json.dumps({**metadata, "vocab_size": 12}))
    native = native_checkpoint(tmp_path, sudoku_build)
    (native.parent / "all_config.yaml").write_text(yaml.safe_dump({"arch": {"name": TRM, **TINY}}))
    checkpoints = [original_checkpoint(tmp_path, sudoku_build), native]

    def evaluate_on(checkpoint, data):
        return run(EvalConfig(checkpoint=str(checkpoint), data_paths=[str(data)], global_batch_size=16,
                              output_dir=str(tmp_path / "out"), progress=False))  # fmt: skip

    for checkpoint in checkpoints:
        with pytest.raises(ValueError, match="sequence length 900 differs from the model's 81"):
            evaluate_on(checkpoint, maze_build)
        with pytest.raises(ValueError, match="a vocabulary of 12 tokens, the model's has 11"):
            evaluate_on(checkpoint, other_vocab)
        assert evaluate_on(checkpoint, sudoku_build)["Sudoku/count"] == 24

    run(EvalConfig(checkpoint=str(native), data_paths=[str(sudoku_build)], global_batch_size=16, save_outputs=SAVE_ALL,
                   output_dir=str(tmp_path / "saved"), progress=False))  # fmt: skip
    (preds_file,) = (tmp_path / "saved").glob("*all_preds*")
    with pytest.raises(ValueError, match="inputs of shape \\[32, 81\\], but .* holds sequences of 900 tokens"):
        run(EvalConfig(preds=str(preds_file), data_paths=[str(maze_build)], evaluators=["Maze"],
                       output_dir=str(tmp_path / "rescored")))  # fmt: skip
