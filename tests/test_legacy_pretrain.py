"""legacy/pretrain.py, the PyTorch reference trainer: one step's optimizer effects derived by hand, checkpoints,
and a whole tiny run through its command line."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

import legacy.pretrain as lp
from legacy.dataset.common import PuzzleDatasetMetadata
from tiny_dataset import BATCH, TINY_ARCH, write_tiny_dataset
from trm_mlx.training.config import compose

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return write_tiny_dataset(tmp_path / "tiny")


def _config(data: Path, *overrides: str) -> lp.PretrainConfig:
    hydra_config = compose(
        [f"data_paths=[{data}]", "evaluators=[]", f"global_batch_size={BATCH}", "lr_warmup_steps=2", *TINY_ARCH, *overrides]
    )
    return lp.PretrainConfig(**OmegaConf.to_container(hydra_config, resolve=True))


def _metadata(data: Path, num_ids: int = 9):
    return PuzzleDatasetMetadata(**{**json.loads((data / "train" / "dataset.json").read_text()), "num_puzzle_identifiers": num_ids})


def _batch(puzzle_ids) -> dict:
    inputs = torch.tensor(np.random.default_rng(1).integers(1, 5, (BATCH, 6)), dtype=torch.int32)
    return {"inputs": inputs, "labels": inputs.clone(), "puzzle_identifiers": torch.tensor(puzzle_ids, dtype=torch.int32)}


def _train_state(config, data, num_ids=9):
    torch.manual_seed(0)
    train_state = lp.init_train_state(config, _metadata(data, num_ids), rank=0, world_size=1, device=torch.device("cpu"))
    train_state.model.train()
    return train_state


def test_first_step_applies_both_optimizers_with_the_scheduled_rates(tiny_data):
    config = _config(tiny_data)
    train_state = _train_state(config, tiny_data)
    inner = train_state.model.model.inner
    before = {name: p.detach().clone() for name, p in train_state.model.named_parameters()}

    metrics = lp.train_batch(config, train_state, _batch([3, 5, 3, 7]), BATCH, rank=0, world_size=1)

    assert train_state.step == 1
    assert set(metrics) == {
        "train/accuracy", "train/count", "train/exact_accuracy", "train/lm_loss",
        "train/q_halt_accuracy", "train/q_halt_loss", "train/steps", "train/lr",
    }
    lr, puzzle_lr = 1e-4 / 2, 1e-2 / 2  # warmup of 2 steps, first step s = 1
    assert metrics["train/lr"] == lr

    # Puzzle table: zeros at init; after one sign-SGD step the batch's rows are -lr * sign(grad), others stay 0.
    table = inner.puzzle_emb.weights
    assert torch.count_nonzero(table[[0, 1, 2, 4, 6, 8]]) == 0
    touched = table[[3, 5, 7]]
    assert torch.count_nonzero(touched) > 0
    assert torch.all(torch.isclose(touched.abs(), torch.tensor(puzzle_lr)) | (touched == 0))

    # AdamATan2's first step: p * (1 - lr wd) - lr / 0.1 * atan(0.1) * sign(g) (or decay only where g == 0),
    # compared within a few fp32 roundings of p (q_head.bias is -5).
    adam_step = lr / 0.1 * math.atan(0.1)
    for name, p in train_state.model.named_parameters():
        moved = (p.detach() - before[name] * (1 - lr * config.weight_decay)).abs()
        rounding = 3e-7 * before[name].abs() + 1e-12
        assert torch.all(((moved - adam_step).abs() <= 1e-4 * adam_step + rounding) | (moved <= rounding)), name
    assert not torch.equal(inner.lm_head.weight, before["model.inner.lm_head.weight"])

    # Past total_steps: the counter moves, nothing else does.
    train_state.total_steps = train_state.step
    snapshot = {name: p.detach().clone() for name, p in train_state.model.named_parameters()}
    assert lp.train_batch(config, train_state, _batch([1, 2, 3, 4]), BATCH, rank=0, world_size=1) is None
    assert train_state.step == 2
    for name, p in train_state.model.named_parameters():
        assert torch.equal(p, snapshot[name])


def test_freeze_weights_trains_only_the_puzzle_table(tiny_data):
    config = _config(tiny_data, "freeze_weights=True")
    train_state = _train_state(config, tiny_data)
    assert [type(o).__name__ for o in train_state.optimizers] == ["CastedSparseEmbeddingSignSGD_Distributed"]
    before = {name: p.detach().clone() for name, p in train_state.model.named_parameters()}
    metrics = lp.train_batch(config, train_state, _batch([1, 2, 3, 4]), BATCH, rank=0, world_size=1)
    assert metrics["train/lr"] == 1e-2 / 2  # the last optimizer's rate: the puzzle embedding's
    for name, p in train_state.model.named_parameters():
        assert torch.equal(p, before[name]), name
    assert torch.count_nonzero(train_state.model.model.inner.puzzle_emb.weights[1:5]) > 0


def test_checkpoint_keys_and_puzzle_table_resize(tiny_data, tmp_path):
    config = _config(tiny_data, f"+checkpoint_path={tmp_path / 'ck'}")
    train_state = _train_state(config, tiny_data)
    for step in range(3):
        lp.train_batch(config, train_state, _batch([1 + step, 2, 3, 4]), BATCH, rank=0, world_size=1)
    lp.save_train_state(config, train_state)

    saved = torch.load(tmp_path / "ck" / "step_3")
    live = train_state.model.state_dict()
    assert list(saved) == ["_orig_mod." + k for k in live]
    assert list(saved)[:2] == ["_orig_mod.model.inner.H_init", "_orig_mod.model.inner.L_init"]
    assert not any(name.startswith(".tmp") for name in os.listdir(tmp_path / "ck"))

    # A model with another number of puzzles gets every row = the mean of the saved rows.
    bigger = _train_state(_config(tiny_data, f"+load_checkpoint={tmp_path / 'ck' / 'step_3'}"), tiny_data, num_ids=12)
    table = bigger.model.model.inner.puzzle_emb.weights
    assert table.shape == (12, 16)
    expected_row = saved["_orig_mod.model.inner.puzzle_emb.weights"].mean(dim=0)
    assert torch.allclose(table, expected_row.expand(12, 16))
    assert torch.equal(bigger.model.model.inner.lm_head.weight, live["model.inner.lm_head.weight"])

    # Keys without the compiled prefix load too.
    torch.save({k.removeprefix("_orig_mod."): v for k, v in saved.items()}, tmp_path / "plain")
    same = _train_state(_config(tiny_data, f"+load_checkpoint={tmp_path / 'plain'}"), tiny_data)
    for name, value in same.model.state_dict().items():
        assert torch.equal(value, live[name]), name


def test_command_line_run_writes_checkpoints_and_config(tiny_data, tmp_path):
    command = [
        sys.executable, "-m", "legacy.pretrain",
        f"data_paths=[{tiny_data}]", "evaluators=[]", f"global_batch_size={BATCH}", "epochs=2", "eval_interval=1",
        "lr_warmup_steps=2", *TINY_ARCH, "+run_name=tiny", "+checkpoint_path=ck", "ema=True",
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    # 8 groups x 2 examples per epoch, batches of 4: 4 steps per epoch, one evaluation + checkpoint per epoch.
    checkpoints = tmp_path / "ck"
    assert {"step_4", "step_8", "all_config.yaml", "trm.py", "losses.py"} <= set(os.listdir(checkpoints))
    config = yaml.safe_load((checkpoints / "all_config.yaml").read_text())
    assert config["run_name"] == "tiny" and config["project_name"] == "Tiny-ACT-torch" and config["ema"] is True
    state = torch.load(checkpoints / "step_8")
    assert all(key.startswith("_orig_mod.model.inner.") for key in state)
    assert "Completed inference in 3 steps" in result.stdout  # eval runs halt_max_steps steps
