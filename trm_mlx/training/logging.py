"""Progress bar, wandb (optional, with the original's project and run names) and printed summaries."""

import math
import os
from typing import Any

from tqdm import tqdm

from trm_mlx.training.config import PretrainConfig


def wandb_mode(config: PretrainConfig) -> str:
    """``wandb_mode`` from the config, else ``$WANDB_MODE``, else disabled: nothing reaches the network unasked."""
    return config.wandb_mode or os.environ.get("WANDB_MODE") or "disabled"


class RunLogger:
    """One object for everything a run reports: tqdm bar (``total_steps``), wandb when enabled, console lines.

    In a data-parallel run only rank 0 reports (``primary``); the others' loggers keep the last metrics and are silent.
    """

    def __init__(
        self,
        config: PretrainConfig,
        total_steps: int,
        initial_step: int = 0,
        show_progress: bool = True,
        primary: bool = True,
    ):
        self.run = None
        self.primary = primary
        mode = wandb_mode(config) if primary else "disabled"
        if mode != "disabled":
            try:
                import wandb
            except ImportError as e:
                raise ImportError(f"wandb_mode={mode} needs wandb: pip install 'trm-mlx[wandb]'") from e
            self.run = wandb.init(
                project=config.project_name,
                name=config.run_name,
                config=config.model_dump(),
                mode=mode,
                settings=wandb.Settings(x_disable_stats=True),
            )
        self.bar = tqdm(total=total_steps, initial=initial_step, desc="train", unit="step",
                        disable=not (show_progress and primary))
        self.last_train: dict[str, float] = {}
        # Accuracies only count rows that halted at that step (often none early on): show the latest step that had
        # some, rather than a row of zeros.
        self.last_halted: dict[str, float] = {}
        self.last_eval: dict[str, Any] = {}
        self.peak_memory_gib = 0.0

    def log(self, metrics: dict, step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def train_step(self, metrics: dict[str, float], step: int, peak_memory_gib: float) -> None:
        """One step's metrics, and the process's peak memory so far (MLX's allocator: device memory on a GPU)."""
        self.last_train = metrics
        self.peak_memory_gib = peak_memory_gib
        if metrics["train/count"] > 0:
            self.last_halted = metrics
        self.log({**metrics, "memory/peak_gib": peak_memory_gib}, step)
        self.bar.update(step - self.bar.n)
        postfix = {"loss": f"{metrics['train/lm_loss']:.3f}"}
        if self.last_halted:
            postfix["acc"] = f"{self.last_halted['train/accuracy']:.3f}"
            postfix["exact"] = f"{self.last_halted['train/exact_accuracy']:.3f}"
        postfix["mem"] = f"{peak_memory_gib:.1f}G"
        self.bar.set_postfix(postfix, refresh=False)

    def evaluation(self, metrics: dict, step: int) -> None:
        self.last_eval = metrics
        self.log(metrics, step)
        self.write(f"step {step}: " + describe(self.last_train, self.last_halted, metrics))

    def write(self, line: str) -> None:
        if self.primary:
            self.bar.write(line)

    def close(self, step: int, checkpoint_path: str | None) -> None:
        self.bar.close()
        if not self.primary:
            return
        print(f"done at step {step}: " + describe(self.last_train, self.last_halted, self.last_eval)
              + f"; peak memory {self.peak_memory_gib:.2f} GiB")
        if checkpoint_path is not None:
            print(f"checkpoints: {checkpoint_path}")
        if self.run is not None:
            self.run.finish()


def describe(train: dict, halted: dict, evaluation: dict) -> str:
    """One line: the last step's LM loss, accuracies of the last step with halted rows, then each eval set's
    accuracies and the evaluators' scores."""
    parts = []
    if train:
        parts.append(f"train lm_loss {train['train/lm_loss']:.3f}")
    if halted:
        parts.append(f"train acc {halted['train/accuracy']:.3f} exact {halted['train/exact_accuracy']:.3f}")
    for name, value in evaluation.items():
        if isinstance(value, dict) and "accuracy" in value:
            parts.append(f"{name}: acc {value['accuracy']:.3f} exact {value['exact_accuracy']:.3f}")
        elif isinstance(value, float) and name != "examples_per_second" and not math.isnan(value):
            parts.append(f"{name} {value:.3f}")
    return " | ".join(parts) if parts else "no metrics"
