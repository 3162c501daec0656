"""Train trm_mlx (`trm-train`) and the PyTorch reference (`legacy/pretrain.py`) on the same data with the same recipe
from the same initial weights, and compare their training curves.

Both sides run their own unmodified training loops with the same config (`cfg_pretrain` + overrides), so they
sample the same batches and evaluate at the same steps (every `eval_interval` epochs). The reference draws the
initial weights (seeded), which both load. It draws the examples of a puzzle from NumPy's global RNG in its data
worker, which PyTorch seeds with a number of its own, and trm_mlx from `RandomState(seed)`: the worker's RNG is
seeded with `seed` here, so that both keep the same examples where a batch fills up in the middle of a puzzle (ARC,
with several examples a puzzle). Each side's metrics go to `<out>/<side>/metrics.jsonl` in one format
(a line per `--log-every` steps with the training metrics averaged over them, a line per evaluation, wall time);
`<out>/curves.png` draws both, `<out>/summary.json` lists every common evaluation side by side and how far apart
the training losses are against their step-to-step spread (`training_loss_agreement`).

    python -m scripts.compare_curves --data data/sudoku-extreme-1k-aug-1000 --out outputs/curves/sudoku \\
        preset=sudoku_mlp epochs=7500 eval_interval=1500

`--only legacy` (or `mlx`) trains one side, so that the two can run on different machine leases; the call that
completes the pair writes the comparison. `--concurrent` trains both at once, for a GPU with room for both. The
reference runs under torch.compile on CUDA and eagerly elsewhere. Extra arguments are Hydra overrides, as for
trm-train; `max_steps` stops both sides (the reference when its metrics reach that step). ACT exploration draws
different random numbers in the two frameworks, so with it on the curves agree statistically, not step for step.

A trm-train run already made (for instance one relayed over machine leases) can stand for the trm_mlx side: the
reference trains the same recipe from that run's initial weights (`--init mlx`: trm-train's seeded init, re-drawn)
and `--mlx-run <run>/metrics.jsonl` brings the run's metrics in, up to `max_steps` (two calls, the first on a GPU
lease):

    python -m scripts.compare_curves --data data/sudoku-extreme-1k-aug-1000 --out outputs/curves/sudoku \
        --only legacy --init mlx preset=sudoku_mlp max_steps=10000
    python -m scripts.compare_curves --data data/sudoku-extreme-1k-aug-1000 --out outputs/curves/sudoku \
        --only mlx --mlx-run checkpoints/sudoku_mlp/metrics.jsonl preset=sudoku_mlp max_steps=10000

The reference trains in a child process that loads no BLAS of ours (`TRM_MLX_BLAS=off`), as `python -m
legacy.pretrain` runs. In this process PyTorch's BLAS calls would bind to the BLAS loaded globally for MLX (same
symbols, loaded first): with OpenBLAS on 2 cores, its threads inside PyTorch's, a reference step took 5-7x as long.
"""

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from trm_mlx.blas import load_fast_blas

load_fast_blas()  # before MLX loads

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import legacy.pretrain as lp  # noqa: E402
from legacy.dataset.common import PuzzleDatasetMetadata as LegacyMetadata  # noqa: E402
from scripts.plot_metrics import plot, read_metrics, series  # noqa: E402
from trm_mlx.atomic import write_atomically  # noqa: E402
from trm_mlx.checkpoint import save_original  # noqa: E402
from trm_mlx.data import PuzzleDataset  # noqa: E402
from trm_mlx.runtime import Runtime  # noqa: E402
from trm_mlx.training.config import compose, from_hydra  # noqa: E402
from trm_mlx.training.logging import METRICS_FILE, MetricsFile  # noqa: E402
from trm_mlx.training.state import create_train_state  # noqa: E402
from trm_mlx.training.trainer import train  # noqa: E402

SIDES = {"mlx": "trm-mlx", "legacy": "PyTorch reference"}
EVAL_KEYS = ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps", "lm_loss")


def initial_weights(overrides: list[str], path: Path, drawn_by: str = "legacy") -> Path:
    """Seeded initial weights, as an original-format checkpoint both sides load: the reference's init, or with
    ``drawn_by="mlx"`` trm-train's (those a trm-train run of the same recipe and seed starts from)."""
    config = from_hydra(compose(overrides))
    metadata = PuzzleDataset(config.data_paths, "train", config.global_batch_size).metadata
    path.parent.mkdir(parents=True, exist_ok=True)
    if drawn_by == "mlx":
        save_original(path, create_train_state(config, metadata, Runtime.create()).model)
        return path
    torch.manual_seed(config.seed)
    state = lp.init_train_state(lp.PretrainConfig(**config.model_dump()), LegacyMetadata(**metadata.model_dump()),
                                rank=0, world_size=1, device=torch.device("cpu"))  # fmt: skip
    torch.save(lp.checkpoint_state_dict(state.model), path)
    return path


class _StopTraining(Exception):
    """Raised from the reference's metrics logging at ``max_steps``, which its loop does not know."""


class _MetricsRun:
    """Stands in for the reference's wandb run: every logged step goes to a ``MetricsFile``."""

    def __init__(self, path: Path, every: int, max_steps: int | None):
        self.file, self.max_steps = MetricsFile(path, every=every), max_steps

    def log(self, metrics: dict, step: int) -> None:
        values = {key: _plain(value) for key, value in metrics.items()}
        if "train/lm_loss" in values:
            self.file.train_step(values, step)
            if self.max_steps is not None and step >= self.max_steps:
                raise _StopTraining
        elif any(isinstance(value, dict) for value in values.values()):
            self.file.evaluation(values, step)

    def log_code(self, *args, **kwargs) -> None:
        pass

    def finish(self) -> None:
        pass


def _plain(value):
    return {k: _plain(v) for k, v in value.items()} if isinstance(value, dict) else float(value)


def _seed_numpy(seed: int, worker_id: int) -> None:
    """The reference's data worker starts: NumPy's global RNG as trm_mlx's example draws start (module docstring)."""
    np.random.seed(seed)


def run_legacy(overrides: list[str], out: Path, every: int) -> Path:
    """``legacy/pretrain.py``'s loop as its command line runs it, its logged metrics written to ``metrics.jsonl``."""
    if torch.cuda.is_available():
        os.environ["TRM_LEGACY_COMPILE"] = "1"
    config = compose([*overrides, f"+checkpoint_path={out}"])
    run = _MetricsRun(out / METRICS_FILE, every, config.max_steps)
    wandb_init, lp._wandb_init = lp._wandb_init, lambda config: run
    loader, lp.DataLoader = lp.DataLoader, functools.partial(lp.DataLoader, worker_init_fn=functools.partial(
        _seed_numpy, config.seed))  # fmt: skip
    try:
        lp.launch.__wrapped__(config)
    except _StopTraining:
        pass
    finally:
        lp._wandb_init, lp.DataLoader = wandb_init, loader
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out / METRICS_FILE


def _legacy_child(overrides: list[str], out: Path, every: int) -> tuple[list[str], dict]:
    """Command line and environment of ``run_legacy`` in a child process without our BLAS (module docstring), this
    checkout first on its path."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "TRM_MLX_BLAS": "off",
           "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
    code = "import sys, json, pathlib, scripts.compare_curves as c; c.run_legacy(json.loads(sys.argv[1]), " \
           "pathlib.Path(sys.argv[2]), int(sys.argv[3]))"  # fmt: skip
    return [sys.executable, "-c", code, json.dumps(overrides), str(out), str(every)], env


def run_legacy_apart(overrides: list[str], out: Path, every: int) -> Path:
    args, env = _legacy_child(overrides, out, every)
    subprocess.run(args, env=env, check=True)
    return out / METRICS_FILE


def run_mlx(overrides: list[str], out: Path, every: int) -> Path:
    """trm-train's run in ``out``, which it replaces: the tool's own folder for this side, from an earlier call."""
    shutil.rmtree(out, ignore_errors=True)
    train(from_hydra(compose([*overrides, f"+checkpoint_path={out}"])), show_progress=False, metrics_every=every)
    mx.clear_cache()
    return out / METRICS_FILE


def training_loss_agreement(mlx: list[dict], legacy: list[dict]) -> dict:
    """Where the two training-loss curves lie against each other's noise: each side's step-to-step spread (the
    median change of its logged LM loss from one line to the next), the largest difference between the sides at a
    common step, and the median difference over the larger spread. Two runs that differ by noise alone give about 1
    (the difference of two noisy curves and a curve's change between lines have the same spread); a systematic gap
    gives well above 1, the same arithmetic about 0."""
    curves = {side: dict(zip(*series(records, "train", "train/lm_loss"))) for side, records in
              (("mlx", mlx), ("legacy", legacy))}  # fmt: skip
    steps = sorted(set(curves["mlx"]) & set(curves["legacy"]))
    if len(steps) < 2:
        return {}
    spread = {side: float(np.median(np.abs(np.diff([curve[s] for s in sorted(curve)])))) for side, curve in
              curves.items()}  # fmt: skip
    differences = np.array([abs(curves["mlx"][s] - curves["legacy"][s]) for s in steps])
    return {
        "train_loss_spread": spread,
        "train_loss_max_difference": float(differences.max()),
        "train_loss_gap_to_spread": float(np.median(differences) / max(spread.values())),
    }


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Every evaluation step both sides have, their test metrics, the largest test-accuracy difference, and how the
    training losses agree (``training_loss_agreement``)."""
    mlx, legacy = runs[SIDES["mlx"]], runs[SIDES["legacy"]]
    evals = {}
    for key in EVAL_KEYS:
        for side, records in (("mlx", mlx), ("legacy", legacy)):
            for step, value in zip(*series(records, "eval", key)):
                evals.setdefault(step, {}).setdefault(side, {})[key] = value
    common = {step: sides for step, sides in sorted(evals.items()) if len(sides) == 2}
    differences = [abs(s["mlx"]["accuracy"] - s["legacy"]["accuracy"]) for s in common.values()]
    walls = {side: max((r["wall_s"] for r in records), default=None)
             for side, records in (("mlx", mlx), ("legacy", legacy))}  # fmt: skip
    return {
        "evaluations": [{"step": step, **sides} for step, sides in common.items()],
        "max_test_accuracy_difference": max(differences, default=None),
        **training_loss_agreement(mlx, legacy),
        "wall_s": walls,
    }


def compare(data: str, out: Path, overrides: list[str], every: int = 100, sides=("legacy", "mlx"),
            concurrent: bool = False, init: str = "legacy", mlx_run: Path | None = None) -> dict | None:  # fmt: skip
    """Train ``sides`` into ``out`` and, once both sides' metrics are there (this call's or an earlier one's, e.g.
    on another machine lease), write the summary and the figure; returns the summary, or None until then. With
    ``concurrent`` the reference's child process trains while trm_mlx trains in this one. ``init`` says whose
    seeded init draws the initial weights; ``mlx_run``, the metrics of a trm-train run already made (from
    trm-train's init), stands for the trm_mlx side up to ``max_steps``."""
    out.mkdir(parents=True, exist_ok=True)
    base = [f"data_paths=[{data}]", *overrides]
    if mlx_run is not None:
        last = from_hydra(compose(base)).max_steps
        lines = [line for line in Path(mlx_run).read_text().splitlines()
                 if last is None or json.loads(line)["step"] <= last]  # fmt: skip
        (out / "mlx").mkdir(exist_ok=True)
        write_atomically(out / "mlx" / METRICS_FILE, "".join(line + "\n" for line in lines))
        sides = [side for side in sides if side != "mlx"]
    start = out / "initial_weights.pt"
    if sides and not start.exists():  # seeded: an earlier call's file holds the same weights
        initial_weights(base, start, init)
    common = [*base, f"+load_checkpoint={start}"]
    timings = {}
    if concurrent and set(sides) == set(SIDES):
        began = time.perf_counter()
        args, env = _legacy_child(common, out / "legacy", every)
        with subprocess.Popen(args, env=env) as reference:
            try:
                run_mlx(common, out / "mlx", every)
            except BaseException:  # the error now, not after the reference's whole run
                reference.kill()
                raise
            timings["mlx"] = time.perf_counter() - began
            if reference.wait():
                raise subprocess.CalledProcessError(reference.returncode, args)
        timings["legacy"] = time.perf_counter() - began
    else:
        for side, runner in (("legacy", run_legacy_apart), ("mlx", run_mlx)):
            if side in sides:
                began = time.perf_counter()
                runner(common, out / side, every)
                timings[side] = time.perf_counter() - began
    if not all((out / side / METRICS_FILE).exists() for side in SIDES):
        return None
    runs = {SIDES[side]: read_metrics(out / side / METRICS_FILE) for side in SIDES}
    summary = {**summarize(runs), "overrides": overrides, "data": data, "run_s": timings}
    write_atomically(out / "summary.json", json.dumps(summary, indent=1))
    plot(runs, out / "curves.png", title=f"{data}: {' '.join(overrides)}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a built dataset folder")
    parser.add_argument("--out", required=True, help="folder for both runs, summary.json and curves.png")
    parser.add_argument("--log-every", type=int, default=100, help="steps per line of training metrics")
    parser.add_argument("--only", choices=list(SIDES), help="train this side only (the other's metrics from an "
                        "earlier call into --out)")  # fmt: skip
    parser.add_argument("--concurrent", action="store_true", help="train both sides at once (a GPU with memory "
                        "for both); each side's wall time then includes the other's load")  # fmt: skip
    parser.add_argument("--init", choices=list(SIDES), default="legacy", help="whose seeded init draws the initial "
                        "weights (mlx: those of a trm-train run of the same recipe and seed)")  # fmt: skip
    parser.add_argument("--mlx-run", type=Path, help="metrics.jsonl of a trm-train run already made (e.g. relayed "
                        "over leases; its own init: use --init mlx) as the trm_mlx side, up to max_steps")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of cfg_pretrain, e.g. preset=sudoku_mlp")
    args = parser.parse_args(argv)
    sides = [args.only] if args.only else list(SIDES)
    summary = compare(args.data, Path(args.out), args.overrides, args.log_every, sides, args.concurrent, args.init,
                      args.mlx_run)  # fmt: skip
    if summary is None:
        print(f"trained {args.only}; the comparison needs the other side's run in {args.out}")
        return 0
    for row in summary["evaluations"]:
        mine, theirs = row["mlx"], row["legacy"]
        print(f"step {row['step']}: test accuracy {mine['accuracy']:.4f} vs {theirs['accuracy']:.4f}, "
              f"exact {mine['exact_accuracy']:.4f} vs {theirs['exact_accuracy']:.4f}")
    print(f"{Path(args.out) / 'curves.png'}; max test accuracy difference {summary['max_test_accuracy_difference']}")
    if "train_loss_gap_to_spread" in summary:
        print(f"training LM loss: median difference {summary['train_loss_gap_to_spread']:.2f}x the step-to-step spread "
              f"(largest difference {summary['train_loss_max_difference']:.3g}, spreads "
              f"{summary['train_loss_spread']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
