"""Tiny `trm-train` runs on the CPU, and the training state they leave, for the trainer and relay tests."""

from pathlib import Path

import mlx.core as mx

from tiny_dataset import BATCH, TINY_ARCH
from trm_mlx.training.checkpointing import ARRAYS_FILE, STATE_FILE, find_train_state
from trm_mlx.training.config import compose, from_hydra
from trm_mlx.training.trainer import train

TINY_RUN = [f"global_batch_size={BATCH}", "lr_warmup_steps=2", "evaluators=[]", *TINY_ARCH]


def train_tiny(data: Path, checkpoint_path: Path, *extra: str) -> dict:
    """16 steps in all (4 epochs), evaluation and checkpoint after steps 8 and 16, with EMA and ACT exploration."""
    config = from_hydra(
        compose(
            [
                f"data_paths=[{data}]", *TINY_RUN, "epochs=4", "eval_interval=2", "ema=True",
                "arch.halt_exploration_prob=0.5", "device=cpu", f"+checkpoint_path={checkpoint_path}", "+run_name=r",
                *extra,
            ]
        )
    )
    return train(config, show_progress=False)


def saved_state(checkpoint_path: Path) -> tuple[dict, str]:
    """The newest training state under ``checkpoint_path``: its arrays and its ``state.json`` text."""
    state_dir = find_train_state(checkpoint_path)
    return mx.load(str(state_dir / ARRAYS_FILE)), (state_dir / STATE_FILE).read_text()
