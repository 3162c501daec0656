"""trm-train: equal to the PyTorch reference over 20 steps, bit-exact resume, the README command lines start
training, and the command line behaves as Hydra users expect."""

import json
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import trm_mlx.training.cli as cli
from readme_commands import README_COMMANDS, overrides
from scripts.train_parity import run_parity
from tiny_dataset import BATCH
from tiny_runs import TINY_RUN, saved_state, train_tiny
from trm_mlx.checkpoint import save_native
from trm_mlx.data.metadata import load_metadata
from trm_mlx.training.checkpointing import find_train_state
from trm_mlx.training.config import compose, from_hydra
from trm_mlx.training.state import create_train_state
from trm_mlx.training.trainer import train


@pytest.mark.parametrize(
    "variant, steps, q_head_std",
    [([], 20, 0.0), ([], 20, 1.0), (["freeze_weights=True"], 8, 0.0),
     (["arch.puzzle_emb_ndim=0", "arch.puzzle_emb_len=0"], 8, 0.0)],
    ids=["default", "rows_halting_on_the_q_head", "freeze_weights", "no_puzzle_embedding"],
)  # fmt: skip
def test_training_equals_the_pytorch_reference(variant, steps, q_head_std, tiny_data, tmp_path):
    report = run_parity([f"data_paths=[{tiny_data}]", *TINY_RUN, *variant], steps=steps, work_dir=tmp_path,
                        q_head_std=q_head_std)  # fmt: skip
    assert len(report.mlx_metrics) == steps
    assert any(m["train/count"] > 0 for m in report.legacy_metrics)  # rows halted: the carry was really exercised
    if q_head_std:  # rows halted before the last ACT step, at different steps: only theirs were reset
        mean_steps = [m["train/steps"] for m in report.legacy_metrics]
        assert any(0 < s < 3 and s != int(s) for s in mean_steps), mean_steps
    for ours, theirs in zip(report.mlx_metrics, report.legacy_metrics):
        assert ours["train/lr"] == theirs["train/lr"]
        for key in ("train/lm_loss", "train/q_halt_loss"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4)
        for key in ("train/count", "train/accuracy", "train/exact_accuracy", "train/steps"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6)
    assert report.max_weight_error <= 1e-4
    assert report.legacy_metrics[-1]["train/lm_loss"] < report.legacy_metrics[0]["train/lm_loss"]


def test_load_checkpoint_resizes_the_puzzle_table(tmp_path, runtime):
    def metadata(num_ids):
        return SimpleNamespace(vocab_size=5, seq_len=6, num_puzzle_identifiers=num_ids, total_groups=8,
                               mean_puzzle_examples=2.0)

    config = from_hydra(compose(["data_paths=[unused]", *TINY_RUN]))
    source = create_train_state(config, metadata(3), runtime)
    table = mx.random.normal((3, 16))
    source.model.puzzle_emb.weights = table
    save_native(tmp_path / "step_7", source.model)

    loaded = create_train_state(config.model_copy(update={"load_checkpoint": str(tmp_path / "step_7")}), metadata(5),
                                runtime)  # fmt: skip
    np.testing.assert_allclose(np.array(loaded.model.puzzle_emb.weights), np.tile(np.array(table.mean(axis=0)), (5, 1)))
    np.testing.assert_array_equal(np.array(loaded.model.inner.lm_head.weight), np.array(source.model.inner.lm_head.weight))


def test_load_checkpoint_takes_a_run_folder(tiny_data, tmp_path, runtime):
    """A run folder starts the new run from the model of its newest training state, the one its step_N holds."""
    train_tiny(tiny_data, tmp_path / "run", "max_steps=8")
    config = from_hydra(compose([f"data_paths=[{tiny_data}]", *TINY_RUN]))

    def start_from(source):
        state = create_train_state(config.model_copy(update={"load_checkpoint": str(source)}),
                                   load_metadata(tiny_data, "train"), runtime)  # fmt: skip
        return {key: np.array(value) for key, value in tree_flatten(state.model.parameters())}

    expected, actual = start_from(tmp_path / "run" / "step_8"), start_from(tmp_path / "run")
    assert expected.keys() == actual.keys() and all(np.array_equal(expected[k], actual[k]) for k in expected)


@pytest.mark.parametrize("lanes", ["cpu_lanes=1", "cpu_lanes=2"], ids=["one_graph", "cpu_lanes"])
def test_resume_continues_bit_exactly(lanes, tiny_data, tmp_path):
    # 16 steps in all, evaluation + checkpoint after steps 8 and 16; stop at 5 (mid-iteration), resume to 11.
    straight = train_tiny(tiny_data, tmp_path / "straight", "max_steps=11", lanes)
    train_tiny(tiny_data, tmp_path / "resumed", "max_steps=5", lanes)
    assert find_train_state(tmp_path / "resumed").name == "train_state_step_5"
    resumed = train_tiny(tiny_data, tmp_path / "resumed", "max_steps=11", f"resume={tmp_path / 'resumed'}", lanes)
    assert straight["step"] == resumed["step"] == 11

    expected, expected_meta = saved_state(tmp_path / "straight")
    actual, actual_meta = saved_state(tmp_path / "resumed")
    assert set(actual) == set(expected)
    assert {key.split(".")[0] for key in expected} == {"model", "optimizer", "ema", "carry", "rng"}
    for key in expected:
        assert expected[key].dtype == actual[key].dtype, key
        assert np.array_equal(np.array(expected[key]), np.array(actual[key])), key
    assert expected_meta.replace("straight", "resumed").split('"config"')[0] == actual_meta.split('"config"')[0]
    assert straight["train"] == resumed["train"]
    # The checkpoint written at step 8 of both runs holds the same EMA weights.
    assert (tmp_path / "straight" / "step_8").read_bytes() == (tmp_path / "resumed" / "step_8").read_bytes()


@pytest.mark.parametrize(
    "arch",
    [[], ["arch.mlp_t=True", "arch.pos_encodings=none"], ["freeze_weights=True"],
     ["arch.puzzle_emb_ndim=0", "arch.puzzle_emb_len=0"]],
    ids=["attention", "mlp_t", "freeze_weights", "no_puzzle_embedding"],
)  # fmt: skip
def test_cpu_lanes_train_as_one_graph(arch, tiny_data, tmp_path):
    """`cpu_lanes=2` (the batch split over two CPU streams, each its own compiled graph) trains as the one-graph
    step: the same exploration draws, halting and random state, the weights equal up to the order of the gradient
    sums."""
    one = train_tiny(tiny_data, tmp_path / "one", "max_steps=3", "cpu_lanes=1", *arch)
    two = train_tiny(tiny_data, tmp_path / "two", "max_steps=3", "cpu_lanes=2", *arch)
    expected, _ = saved_state(tmp_path / "one")
    actual, _ = saved_state(tmp_path / "two")
    assert set(actual) == set(expected)
    for key, value in expected.items():
        if value.dtype in (mx.float32, mx.float64, mx.bfloat16):
            # AdamATan2 moves a weight by up to lr = 1e-4 a step; summing the lanes' gradients in another order
            # moves a few by up to ~2e-5 in 3 steps.
            np.testing.assert_allclose(np.array(actual[key]), np.array(value), rtol=1e-4, atol=3e-5, err_msg=key)
        else:  # step counts, halting flags, data, the random state
            assert np.array_equal(np.array(actual[key]), np.array(value)), key
    for name, value in one["train"].items():
        assert two["train"][name] == pytest.approx(value, rel=1e-4), name
    with pytest.raises(ValueError, match="cpu_lanes=3 must divide global_batch_size=4"):
        train_tiny(tiny_data, tmp_path / "three", "max_steps=1", "cpu_lanes=3")


def test_auto_lanes_are_two_where_the_cores_and_the_batch_allow():
    """`cpu_lanes: auto` (the default): two lanes on a CPU with two or more cores and OpenBLAS or MKL when they split the
    batch evenly; one otherwise, and always one on a GPU or with several ranks."""
    from trm_mlx.runtime import lanes_here

    cpu = dict(backend="cpu", ranks=1, shared_blas=True, cores=16)
    assert lanes_here("auto", **cpu, batch_size=64) == lanes_here("auto", **cpu, batch_size=None) == 2
    assert lanes_here("auto", **cpu, batch_size=63) == 1
    assert lanes_here(3, **cpu, batch_size=64) == 3
    assert lanes_here("auto", **{**cpu, "ranks": 2}, batch_size=64) == 1
    assert lanes_here("auto", **{**cpu, "shared_blas": False}, batch_size=64) == 1  # Accelerate, MLX's reference BLAS
    assert lanes_here("auto", **{**cpu, "cores": 1}, batch_size=64) == 1
    for requested in ("auto", 4):
        assert lanes_here(requested, **{**cpu, "backend": "cuda"}, batch_size=64) == 1


def test_cpu_lanes_evaluate_as_one_graph():
    """The evaluation step over two CPU lanes gives the one-graph step's carry, metrics and outputs through the
    whole ACT loop; a batch that does not split evenly runs as one graph."""
    from test_model import tiny_arch
    from trm_mlx.evaluation.loop import compiled_eval_step
    from trm_mlx.model import ACTLossHead, create_model
    from trm_mlx.runtime import Runtime

    mx.set_default_device(mx.cpu)
    mx.random.seed(0)
    head = ACTLossHead(create_model(tiny_arch(halt_max_steps=3), Runtime("cpu").execution))
    head.model.eval()
    rng = np.random.default_rng(0)
    for rows in (6, 5):
        batch = {
            "inputs": mx.array(rng.integers(1, 11, (rows, 32)).astype(np.int32)),
            "labels": mx.array(rng.integers(1, 11, (rows, 32)).astype(np.int32)),
            "puzzle_identifiers": mx.array(rng.integers(0, 3, (rows,)).astype(np.int32)),
        }
        results = []
        for lanes in (1, 2):
            step, carry = compiled_eval_step(head, lanes), head.model.initial_carry(batch)
            for _ in range(3):
                carry, metrics, outputs = step(carry, batch)
            results.append((carry, metrics, outputs))
        (carry, metrics, outputs), (carry2, metrics2, outputs2) = results
        assert np.array_equal(np.array(carry2["halted"]), np.array(carry["halted"]))
        assert np.array_equal(np.array(outputs2["preds"]), np.array(outputs["preds"]))
        np.testing.assert_allclose(np.array(outputs2["q_halt_logits"]), np.array(outputs["q_halt_logits"]), rtol=1e-5,
                                   atol=1e-6)
        for name, value in metrics.items():
            assert metrics2[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-6), name


@pytest.mark.parametrize("name", list(README_COMMANDS))
def test_readme_command_lines_start_training(name, tiny_data, tmp_path, capsys):
    """The README's overrides as given (bfloat16, its cycles and layers), on tiny data with a tiny width; the last
    line reports the run's peak memory."""
    command, _ = README_COMMANDS[name]
    args = [a for a in overrides(command) if not a.startswith("data_paths=")]
    shrink = [f"data_paths=[{tiny_data}]", f"global_batch_size={BATCH}", "arch.hidden_size=16", "arch.num_heads=2",
              "arch.halt_max_steps=2", "max_steps=2", f"+checkpoint_path={tmp_path}", "device=cpu"]
    result = train(from_hydra(compose(args + shrink)), show_progress=False)
    assert result["step"] == 2
    assert np.isfinite(result["train"]["train/lm_loss"])
    assert result["config"].run_name == dict(a.split("=", 1) for a in args)["+run_name"]
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done at step 2")]
    peak = float(done[0].rsplit("peak memory ", 1)[1].split()[0])
    assert 0 < peak <= mx.get_peak_memory() / 2**30 + 0.01


def test_no_arguments_means_the_builtin_demo(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "launch", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["trm-train"])
    cli.main()
    monkeypatch.setattr(sys, "argv", ["trm-train", "epochs=5"])
    cli.main()
    assert seen == [["trm-train", "preset=demo"], ["trm-train", "epochs=5"]]
    demo = from_hydra(compose(["preset=demo"]))
    assert demo.data_paths == ["data/builtin-sudoku"] and demo.arch.forward_dtype == "float32"


def test_help_and_cfg_job_work_as_in_hydra():
    command = [sys.executable, "-m", "trm_mlx.training.cli"]
    shown = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "arch: hrm, transformers_baseline, trm, trm_hier6, trm_singlez" in shown.stdout
    assert "preset: arc1, arc2, demo, maze, sudoku_att, sudoku_mlp" in shown.stdout
    job = subprocess.run([*command, "--cfg", "job", "arch=hrm", "+run_name=x"], capture_output=True, text=True, timeout=120)
    assert job.returncode == 0, job.stderr
    assert "H_layers: 4" in job.stdout and "run_name: x" in job.stdout
    assert "puzzle_emb_ndim: ${.hidden_size}" in job.stdout  # as Hydra shows it; --resolve resolves
    resolved = subprocess.run([*command, "--cfg", "job", "--resolve", "arch.hidden_size=64"], capture_output=True, text=True,
                              timeout=120)
    assert resolved.returncode == 0, resolved.stderr
    assert "puzzle_emb_ndim: 64" in resolved.stdout


def test_kernels_recompute_and_memory_keys_reach_the_model(monkeypatch):
    """`kernels=` sets the kernel policy, `recompute=` the blocks' recomputation and `memory_limit=` MLX's memory
    limit, and the run's first line says so."""
    from trm_mlx.model.layers import ReasoningModule
    from trm_mlx.runtime import KERNELS_ENV
    from trm_mlx.training.trainer import training_runtime

    monkeypatch.delenv(KERNELS_ENV, raising=False)
    metadata = SimpleNamespace(vocab_size=5, seq_len=6, num_puzzle_identifiers=3, total_groups=8, mean_puzzle_examples=2.0)
    default_limit = mx.get_memory_limit()
    runs = (
        ("reference", "blocks", 1.0, "blocks", "null", default_limit),
        ("fused", "none", 0.0, "none", "2.5", 2.5 * 2**30),
        ("auto", "0.5", 0.5, "0.5 of the blocks", "null", 2.5 * 2**30),  # null leaves the limit as it is
    )
    try:
        for kernels, recompute, share, summary, memory_limit, limit in runs:
            overrides = [f"kernels={kernels}", f"recompute={recompute}", f"memory_limit={memory_limit}"]
            config = from_hydra(compose(["data_paths=[unused]", *TINY_RUN, *overrides]))
            runtime = training_runtime(config)
            state = create_train_state(config, metadata, runtime)
            assert runtime.kernel_mode == kernels
            shares = [m.execution.recompute for m in state.model.modules() if isinstance(m, ReasoningModule)]
            assert shares and all(s == share for s in shares)
            assert state.model.execution == runtime.execution
            assert mx.get_memory_limit() == int(limit)
            line = runtime.summary()
            assert f"fused kernels ({kernels})" in line
            assert f"recompute: {summary}; memory limit: {limit / 2**30:.1f} GiB" in line
    finally:
        mx.set_memory_limit(default_limit)
    with pytest.raises(Exception, match="memory_limit"):
        from_hydra(compose(["data_paths=[unused]", "memory_limit=0"]))
    with pytest.raises(Exception, match="kernels"):
        from_hydra(compose(["data_paths=[unused]", "kernels=fastest"]))


def test_progress_counts_to_max_steps_and_shows_the_evaluation(tiny_data, tmp_path, capsys):
    """The bar's total is the steps that will run (max_steps, not the epochs' 16), and the evaluation inside the run
    has a bar of its own that moves per ACT step."""
    config = from_hydra(compose([f"data_paths=[{tiny_data}]", *TINY_RUN, "epochs=4", "eval_interval=1",
                                 "device=cpu", "max_steps=6", f"+checkpoint_path={tmp_path}"]))  # fmt: skip
    train(config, show_progress=True)
    err = capsys.readouterr().err
    assert "6/6" in err and "/16" not in err
    assert "eval: 100%" in err and "3/3 [" in err and "ACT step" in err  # 1 test batch x 3 ACT steps


def test_a_new_run_refuses_a_folder_that_holds_a_run(tiny_data, tmp_path):
    run = tmp_path / "run"
    train_tiny(tiny_data, run, "max_steps=9")  # step_8 (the evaluation's), train_state_step_9, metrics.jsonl
    before = {path.name: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    held = "step_8, train_state_step_9, metrics.jsonl"
    with pytest.raises(ValueError, match=f"{run}: holds a run \\({held}\\); continue it with resume={run}, or"):
        train_tiny(tiny_data, run, "max_steps=3")
    assert {path.name: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before
    assert train_tiny(tiny_data, run, "max_steps=12", f"resume={run}")["step"] == 12
    for state in run.glob("train_state_step_*"):  # metrics and models without a state: nothing to resume
        shutil.rmtree(state)
    with pytest.raises(ValueError, match=f"{run}: holds a run \\(step_8, metrics.jsonl\\); remove it, or give the"):
        train_tiny(tiny_data, run, "max_steps=3")


def test_resuming_a_run_at_its_last_step_trains_and_writes_nothing(tiny_data, tmp_path, capsys):
    """A relay's segment after the run has ended (max_steps reached, or all its epochs) leaves the run as it is:
    no step, no resume line in metrics.jsonl, no new state."""
    run = tmp_path / "run"
    train_tiny(tiny_data, run, "max_steps=11")
    train_tiny(tiny_data, run, f"resume={run}")  # to the end of its 16 steps
    for max_steps in ("max_steps=16", "max_steps=12"):
        before = {path.name: path.read_bytes() for path in run.rglob("*") if path.is_file()}
        result = train_tiny(tiny_data, run, max_steps, f"resume={run}")
        assert result["step"] == 16 and result["train"] == {}
        assert {path.name: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before
        assert "nothing to train: the run is at step 16" in capsys.readouterr().out
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines if '"resume"' in line] == [11]


@pytest.mark.parametrize("field, value, expected", [
    ("seq_len", 7, "seq_len 7, the training data's is 6"),
    ("vocab_size", 6, "vocab_size 6, the training data's is 5"),
    ("num_puzzle_identifiers", 20, "20 puzzle identifiers, more than the training data's 9"),
])  # fmt: skip
def test_test_data_unlike_the_training_data_stops_before_training(field, value, expected, tiny_data, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    metadata_path = other / "test" / "dataset.json"
    metadata = json.loads(metadata_path.read_text())
    metadata[field] = value
    metadata_path.write_text(json.dumps(metadata))
    if field == "seq_len":
        for name in ("inputs", "labels"):
            path = other / "test" / f"all__{name}.npy"
            array = np.load(path)
            np.save(path, np.concatenate([array, array[:, :1]], axis=1))
    with pytest.raises(ValueError, match=f"{other}.*\\(test split\\): {re.escape(expected)}"):
        train_tiny(tiny_data, tmp_path / "run", f"data_paths_test=[{other}]")
    assert not (tmp_path / "run").exists()
