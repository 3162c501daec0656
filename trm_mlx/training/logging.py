"""Progress bar, wandb (optional, with the original's project and run names), ``metrics.jsonl`` beside the
checkpoints, and printed summaries."""

import json
import math
import os
import time
from pathlib import Path
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
        metrics_every: int = 100,
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
        self.metrics_file = None
        if primary and config.checkpoint_path is not None:
            self.metrics_file = MetricsFile(Path(config.checkpoint_path) / METRICS_FILE, initial_step, metrics_every)

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
        if self.metrics_file is not None:
            self.metrics_file.train_step(metrics, step)
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
        if self.metrics_file is not None:
            self.metrics_file.evaluation(metrics, step)
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


METRICS_FILE = "metrics.jsonl"
# Metrics over a step's halted rows (``train/count`` is 1 in a step with some, else 0 and these are 0 too).
PER_HALTED_ROW = ("train/accuracy", "train/exact_accuracy", "train/q_halt_accuracy", "train/steps")


class MetricsFile:
    """``metrics.jsonl``: one line per ``every`` training steps (each ``train/*`` metric averaged over them, those
    of halted rows over the steps that had some, and the steps per second) and one per evaluation, each with its
    step and the seconds since the run (or its resumption) started. A resumed run first drops the lines past the
    step it resumes from, so that the file reads as one run, and marks where it resumed.
    """

    def __init__(self, path: Path, initial_step: int = 0, every: int = 100):
        self.path, self.every = path, every
        path.parent.mkdir(parents=True, exist_ok=True)
        if initial_step and path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= initial_step]
            path.write_text("".join(line + "\n" for line in kept))
        elif not initial_step:
            path.write_text("")
        self.start = self.window_start = time.monotonic()
        self.sums: dict[str, float] = {}
        self.count = 0
        if initial_step:
            self._write({"step": initial_step, "kind": "resume"})

    def train_step(self, metrics: dict[str, float], step: int) -> None:
        halted = metrics["train/count"]
        for key, value in metrics.items():
            weight = halted if key in PER_HALTED_ROW else 1.0
            self.sums[key] = self.sums.get(key, 0.0) + weight * value
        self.count += 1
        if step % self.every == 0:
            now = time.monotonic()
            halted_rows = self.sums["train/count"]
            means = {}
            for key, total in self.sums.items():
                if key not in PER_HALTED_ROW:
                    means[key] = total / self.count
                else:
                    means[key] = total / halted_rows if halted_rows else None
            self._write({"step": step, "kind": "train", **means, "steps_per_s": self.count / (now - self.window_start)})
            self.sums, self.count, self.window_start = {}, 0, now

    def evaluation(self, metrics: dict, step: int) -> None:
        self._write({"step": step, "kind": "eval", **metrics})

    def _write(self, record: dict) -> None:
        record["wall_s"] = round(time.monotonic() - self.start, 3)
        with self.path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")


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
