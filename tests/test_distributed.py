"""Data-parallel trm-train over MLX's ring backend on 127.0.0.1: two ranks train exactly as one process with the
same global batch, ACT exploration included (losses, evaluation, final weights, optimizer state, EMA and carry), a
training state resumes on another number of ranks, and a rank that exits or hangs makes the other exit with a clear
error instead of waiting.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from tiny_dataset import BATCH, TINY_ARCH
from trm_mlx.checkpoint import save_native
from trm_mlx.data.metadata import PuzzleDatasetMetadata
from trm_mlx.training.checkpointing import ARRAYS_FILE, STATE_FILE, find_train_state
from trm_mlx.model import create_model
from trm_mlx.training.config import compose, from_hydra, model_arch_config
from trm_mlx.training.distributed import sum_gradients

WORKER = Path(__file__).with_name("distributed_worker.py")
LAUNCHER = Path(sys.executable).with_name("mlx.launch")
REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 180  # a hung run fails the test instead of stalling CI


def run_overrides(data: Path, checkpoint_path: Path, *extra: str) -> list[str]:
    """16 steps of 4 rows (2 per rank), evaluation and checkpoint after steps 8 and 16, EMA on, ACT exploration on
    half of the rows."""
    return [
        f"data_paths=[{data}]", f"global_batch_size={BATCH}", "lr_warmup_steps=2", "evaluators=[]", *TINY_ARCH,
        "arch.halt_exploration_prob=0.5", "epochs=4", "eval_interval=2", "ema=True", "device=cpu",
        f"+checkpoint_path={checkpoint_path}", "+run_name=r", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def halting_weights(tiny_data, tmp_path_factory) -> str:
    """``load_checkpoint=`` of initial weights whose Q head halts every row at every step, so that ACT exploration
    alone decides which rows go on: two ranks train as one process only if they explore the rows it explores."""
    metadata = PuzzleDatasetMetadata(**json.loads((tiny_data / "train" / "dataset.json").read_text()))
    mx.random.seed(0)  # trm-train's initial weights (seed 0) with a new Q-head bias
    model = create_model(model_arch_config(from_hydra(compose(run_overrides(tiny_data, Path("unused")))), metadata))
    model.inner.q_head.bias = mx.array([5.0, -5.0])
    path = save_native(tmp_path_factory.mktemp("weights") / "halting", model)
    return f"+load_checkpoint={path}"


def free_port_pair() -> int:
    """A port p with p and p + 1 free: mlx.launch gives rank r port p + r."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            try:
                with socket.socket() as second:
                    second.bind(("127.0.0.1", port + 1))
                    return port
            except OSError:
                continue
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


def worker_env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **extra}


def train_run(ranks: int, prefix: Path, overrides: list[str]) -> list[dict]:
    """Each rank's record of a run of ``ranks`` processes (``mlx.launch --backend ring`` when more than one)."""
    command = [sys.executable, WORKER, prefix, *overrides]
    if ranks > 1:
        launch = [LAUNCHER, "-n", str(ranks), "--backend", "ring", "--starting-port", str(free_port_pair())]
        command = [*launch, "--python", sys.executable, *command[1:]]
    result = subprocess.run(command, cwd=prefix.parent, env=worker_env(), capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_S)  # fmt: skip
    # mlx.launch exits 0 even when a rank fails: each rank's result file is the proof that it finished.
    files = [prefix.with_name(f"{prefix.name}.{rank}.json") for rank in range(ranks)]
    assert result.returncode == 0 and all(f.is_file() for f in files), result.stdout + result.stderr
    return [json.loads(f.read_text()) for f in files]


def saved_state(checkpoint_path: Path) -> tuple[dict, dict]:
    state_dir = find_train_state(checkpoint_path)
    return mx.load(str(state_dir / ARRAYS_FILE)), json.loads((state_dir / STATE_FILE).read_text())


def assert_same_training(ours: dict, reference: dict) -> None:
    assert [s["step"] for s in ours["steps"]] == [s["step"] for s in reference["steps"]]
    for mine, theirs in zip(ours["steps"], reference["steps"]):
        assert mine["train/lr"] == theirs["train/lr"]
        for key, value in theirs.items():
            assert mine[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (mine["step"], key)
    assert [e["step"] for e in ours["eval"]] == [e["step"] for e in reference["eval"]]
    for mine, theirs in zip(ours["eval"], reference["eval"]):
        assert mine["all"] == pytest.approx(theirs["all"], rel=1e-5, abs=1e-6)


def assert_same_state(path: Path, reference_path: Path) -> None:
    arrays, meta = saved_state(path)
    expected, expected_meta = saved_state(reference_path)
    assert set(arrays) == set(expected)
    assert {key.split(".")[0] for key in expected} == {"model", "optimizer", "ema", "carry", "rng"}
    for key, value in expected.items():
        assert arrays[key].shape == value.shape and arrays[key].dtype == value.dtype, key
        np.testing.assert_allclose(np.array(arrays[key]), np.array(value), rtol=1e-5, atol=1e-6, err_msg=key)
    for key in ("step", "next_iter", "dataset"):
        assert meta[key] == expected_meta[key]


@pytest.fixture(scope="module")
def one_process(tiny_data, halting_weights, tmp_path_factory) -> tuple[dict, Path]:
    """The reference: one process, 11 steps (an evaluation and checkpoint at step 8, the training state at 11)."""
    work = tmp_path_factory.mktemp("one")
    overrides = run_overrides(tiny_data, work / "ckpt", "max_steps=11", halting_weights)
    (record,) = train_run(1, work / "result", overrides)
    return record, work / "ckpt"


def test_two_ranks_train_as_one_process(tiny_data, halting_weights, one_process, tmp_path):
    reference, reference_ckpt = one_process
    overrides = run_overrides(tiny_data, tmp_path / "ckpt", "max_steps=11", halting_weights)
    records = train_run(2, tmp_path / "result", overrides)

    assert [s["step"] for s in reference["steps"]] == list(range(1, 12))
    assert any(s["train/count"] > 0 for s in reference["steps"])  # rows halted: the carry was really exercised
    assert records[0]["steps"][-1]["train/lm_loss"] < records[0]["steps"][0]["train/lm_loss"]
    for record in records:  # metrics are reduced over the ranks: both see the global values
        assert_same_training(record, reference)
    # Rank 0 wrote the whole run's state: weights, moments, EMA, RNG, and the carry of all 4 rows of the batch.
    assert_same_state(tmp_path / "ckpt", reference_ckpt)
    (step_8,) = [p.name for p in (tmp_path / "ckpt").glob("step_*")]
    assert step_8 == "step_8" and (tmp_path / "ckpt" / "all_config.yaml").is_file()


def test_a_training_state_resumes_on_another_number_of_ranks(tiny_data, halting_weights, one_process, tmp_path):
    reference, reference_ckpt = one_process
    ckpt = tmp_path / "ckpt"
    (first,) = train_run(1, tmp_path / "first", run_overrides(tiny_data, ckpt, "max_steps=5", halting_weights))
    assert find_train_state(ckpt).name == "train_state_step_5"
    records = train_run(2, tmp_path / "second", run_overrides(tiny_data, ckpt, "max_steps=11", f"resume={ckpt}"))
    resumed = {"steps": first["steps"] + records[0]["steps"], "eval": first["eval"] + records[0]["eval"]}
    assert_same_training(resumed, reference)
    assert_same_state(ckpt, reference_ckpt)


def run_ranks_by_hand(tmp_path: Path, overrides: list[str], fail: str, timeout_s: str) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of two ranks started with the ring's own environment variables and no launcher,
    which would stop the survivor itself."""
    port = free_port_pair()
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"], [f"127.0.0.1:{port + 1}"]]))
    logs = [(tmp_path / f"out.{rank}", tmp_path / f"err.{rank}") for rank in range(2)]
    processes = []
    try:
        for rank, (out, err) in enumerate(logs):
            with out.open("w") as stdout, err.open("w") as stderr:
                processes.append(subprocess.Popen(
                    [sys.executable, WORKER, tmp_path / "result", f"--fail={fail}", *overrides], cwd=tmp_path,
                    env=worker_env(MLX_HOSTFILE=str(hostfile), MLX_RANK=str(rank), TRM_MLX_DIST_TIMEOUT=timeout_s),
                    stdout=stdout, stderr=stderr,
                ))  # fmt: skip
        statuses = [p.wait(timeout=RUN_TIMEOUT_S) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(status, out.read_text(), err.read_text()) for status, (out, err) in zip(statuses, logs)]


def test_a_rank_that_exits_stops_the_other_with_a_clear_error(tiny_data, tmp_path):
    # Usually the ring fails the survivor's next collective at once; now and then (MLX 0.32) a later collective is
    # left waiting instead, and the watchdog ends it. Either way the survivor exits with a message saying why.
    overrides = run_overrides(tiny_data, tmp_path / "ckpt")
    (status_0, out_0, err_0), (status_1, _, _) = run_ranks_by_hand(tmp_path, overrides, "1:3:exit", "20")
    assert status_1 == 3
    assert status_0 == 1 and "step 3" in out_0.splitlines(), out_0 + err_0
    peer_lost = "trm-train: rank 0 of 2: communication with the other ranks failed" in err_0
    assert peer_lost or "trm-train rank 0 of 2: no progress for" in err_0, err_0
    assert "another rank has probably stopped" in err_0


def test_a_rank_that_hangs_stops_both_after_the_timeout(tiny_data, tmp_path):
    # Rank 1 hangs outside any collective and its watchdog ends it; rank 0, waiting in a collective, is ended by its
    # own watchdog or, when rank 1's fired first, by the ring losing its peer.
    overrides = run_overrides(tiny_data, tmp_path / "ckpt")
    (status_0, out_0, err_0), (status_1, _, err_1) = run_ranks_by_hand(tmp_path, overrides, "1:3:hang", "5")
    assert (status_0, status_1) == (1, 1)
    assert "step 3" in out_0.splitlines(), out_0 + err_0  # training ran, then stalled
    timed_out = [f"rank {rank} of 2: no progress for" in err and "TRM_MLX_DIST_TIMEOUT=5" in err
                 for rank, err in enumerate((err_0, err_1))]  # fmt: skip
    assert timed_out[1], err_1
    assert timed_out[0] or "rank 0 of 2: communication with the other ranks failed" in err_0, err_0


def test_the_scaling_script_measures_one_and_two_ranks_within_its_budget(tmp_path):
    """scripts/scaling_gpu.sh as on the GPU machine, with the small preset over the ring: each run stops by its time
    budget, far short of its steps, the ranks stopping together, and the summary gives the efficiency of the two."""
    # Steps stop 12 and 20 s after the start: room for the set-up and first step on a loaded 2-core machine.
    env = worker_env(
        PYTHON=sys.executable, OUT=str(tmp_path), OPENBLAS_NUM_THREADS="1", SCALING_PRESET="demo",
        SCALING_BACKEND="ring", SCALING_LAUNCH_ARGS=f"--starting-port {free_port_pair()}", SCALING_ROWS="4",
        SCALING_WARMUP="2", SCALING_STEPS="100000", SCALING_ONE_S="44", SCALING_TWO_S="52", SCALING_MARGIN_S="32",
    )  # fmt: skip
    result = subprocess.run(["bash", REPO / "scripts" / "scaling_gpu.sh"], env=env, capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_S)  # fmt: skip
    report = tmp_path / "scaling.jsonl"
    lines = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
    assert [line["ranks"] for line in lines] == [1, 2], result.stdout + result.stderr  # rank 0 alone writes
    for line in lines:
        assert (line["rows_per_rank"], line["global_batch"]) == (4, 4 * line["ranks"])
        assert line["stopped_early"] and 1 <= line["steps"] < 100000 and line["wall_s"] < 60
        assert line["examples_per_s"] == pytest.approx(line["global_batch"] / line["step_s"], abs=0.06)
    one, two = (line["examples_per_s"] for line in lines)
    efficiency = f"{100 * two / (2 * one):.1f}%"
    summary = f"scaling demo, 4 rows per rank: 1 rank(s) {one} examples/s; 2 rank(s) {two} examples/s = {efficiency}"
    assert result.stdout.splitlines()[-1] == summary + " efficiency"


def test_evaluator_states_of_different_sizes_gather_in_rank_order(tmp_path):
    """evaluation/gather.py on two ranks: each rank's pickle, padded to the longest on the wire, comes back whole."""
    program = (
        "from trm_mlx.evaluation.gather import all_gather_objects; import json, mlx.core as mx; "
        "g = mx.distributed.init(); r = g.rank(); "
        "out = all_gather_objects({'rank': r, 'votes': 'ab' * (1 + 500 * r)}, g); "
        "open(f'gathered.{r}.json', 'w').write(json.dumps(out))"
    )
    command = [LAUNCHER, "-n", "2", "--backend", "ring", "--starting-port", str(free_port_pair()),
               "--python", sys.executable, "-c", program]  # fmt: skip
    result = subprocess.run(command, cwd=tmp_path, env=worker_env(), capture_output=True, text=True,
                            timeout=RUN_TIMEOUT_S)  # fmt: skip
    expected = [{"rank": 0, "votes": "ab"}, {"rank": 1, "votes": "ab" * 501}]
    for rank in range(2):
        path = tmp_path / f"gathered.{rank}.json"
        assert path.is_file(), result.stdout + result.stderr
        assert json.loads(path.read_text()) == expected


def test_gradient_buckets_keep_every_array_in_place():
    """The bucketing of the all-reduce (here over one process, where the sum is the identity): several buckets,
    a dtype change that starts a new one, nested trees and shapes all come back where they were."""
    grads = {
        "a": mx.arange(12, dtype=mx.float32).reshape(3, 4),
        "b": [mx.arange(5, dtype=mx.float32) + 100, mx.array([1.5, -2.5], dtype=mx.float16)],
        "c": {"d": mx.full((7,), 3.0), "e": mx.array(-1.0)},
    }
    summed = sum_gradients(grads, mx.distributed.init(), bucket_bytes=20)
    for (key, value), (same_key, result) in zip(tree_flatten(grads), tree_flatten(summed)):
        assert key == same_key and result.dtype == value.dtype and result.shape == value.shape
        np.testing.assert_array_equal(np.array(result), np.array(value))
