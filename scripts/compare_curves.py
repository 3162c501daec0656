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
trm-train; `max_steps` stops both sides. ACT exploration draws different random numbers in the two frameworks, so
with it on the curves agree statistically, not step for step.

A trm-train run already made (for instance one relayed over machine leases) can stand for the trm_mlx side: the
reference trains the same recipe from that run's initial weights (`--init mlx`: trm-train's seeded init, re-drawn)
and `--mlx-run <run>/metrics.jsonl` brings the run's metrics in, up to `max_steps` (two calls, the first on a GPU
lease):

    python -m scripts.compare_curves --data data/sudoku-extreme-1k-aug-1000 --out outputs/curves/sudoku \
        --only legacy --init mlx preset=sudoku_mlp max_steps=10000
    python -m scripts.compare_curves --data data/sudoku-extreme-1k-aug-1000 --out outputs/curves/sudoku \
        --only mlx --mlx-run checkpoints/sudoku_mlp/metrics.jsonl preset=sudoku_mlp max_steps=10000

The reference's run can span machine leases: stopped by `max_steps` or `max_minutes`, it leaves its training state
in `<out>/legacy/state/` (weights, optimizer moments, EMA and RNG states in `state.pt`, the ACT carry in
`carry.pt`, recipe and step in `state.json`), and the next call with the same recipe continues it (a larger
`max_steps`, or again `max_minutes`); the summary waits until the reference reaches `max_steps`. `--save-every M`
also saves it every `M` minutes on the way. The reference's loop has no resumption of its own, so the continued
run draws its batches from the start and trains from the saved step on: the same batches, the same steps. To carry
a relay in and out in parts, leave `carry.pt` behind (the carry then starts afresh, as after a trm-train relay
without the carry). trm-train's side does not continue here: relay it with trm-train (`scripts/relay_lease.sh`)
and bring it in with `--mlx-run`.

`--cross-eval` also scores each checkpoint the reference writes at an evaluation (its EMA weights) with trm-mlx's
evaluation, in batches of the recipe's size, into `legacy/cross_eval.jsonl`; the summary and the figure show it
beside both sides. The same weights scored by both evaluations tell a difference of the evaluation arithmetic from
one of the training trajectories.

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
from trm_mlx.atomic import atomic_folder, write_atomically  # noqa: E402
from trm_mlx.checkpoint import save_original  # noqa: E402
from trm_mlx.data import PuzzleDataset  # noqa: E402
from trm_mlx.evaluation.cli import EvalConfig  # noqa: E402
from trm_mlx.evaluation.cli import run as evaluate_checkpoint  # noqa: E402
from trm_mlx.runtime import Runtime  # noqa: E402
from trm_mlx.training.config import compose, from_hydra  # noqa: E402
from trm_mlx.training.logging import METRICS_FILE, MetricsFile  # noqa: E402
from trm_mlx.training.state import create_train_state  # noqa: E402
from trm_mlx.training.trainer import train  # noqa: E402

SIDES = {"mlx": "trm-mlx", "legacy": "PyTorch reference"}
CROSS = "reference's weights, trm-mlx's evaluation"
CROSS_FILE = "cross_eval.jsonl"  # in the reference's side folder
LEGACY_STATE = "state"  # the reference's saved training state, in its side folder
EVAL_KEYS = ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps", "lm_loss", "q_halt_loss")


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
    """Raised inside the reference's loop where this tool stops it (``max_steps``, ``max_minutes``)."""


class _MetricsRun:
    """Stands in for the reference's wandb run: every logged step goes to a ``MetricsFile``."""

    def __init__(self, path: Path, every: int, initial_step: int = 0):
        self.file = MetricsFile(path, initial_step=initial_step, every=every)

    def log(self, metrics: dict, step: int) -> None:
        values = {key: _plain(value) for key, value in metrics.items()}
        if "train/lm_loss" in values:
            self.file.train_step(values, step)
        elif any(isinstance(value, dict) for value in values.values()):
            self.file.evaluation(values, step)

    def log_code(self, *args, **kwargs) -> None:
        pass

    def finish(self) -> None:
        pass


class _LegacyState:
    """Stops the reference's loop at ``max_steps`` or after ``max_minutes`` with its training state saved in
    ``folder`` (weights, optimizer moments, EMA, step, RNG states; the ACT carry in a file of its own), saves it
    every ``save_every`` minutes on the way (a machine lost mid-run then loses at most that), and continues a saved
    one. The loop knows no resumption, so a continued run starts it over: its first ``step`` batches are
    drawn, in the same order, but not trained (nor evaluated at), then the state is loaded. Without ``carry.pt``
    (left behind to keep a relay small) the carry starts afresh, as after trm-train's relay without the carry."""

    def __init__(self, folder: Path, overrides: list[str], max_steps: int | None, max_minutes: float | None,
                 save_every: float | None = None):  # fmt: skip
        self.folder, self.recipe, self.max_steps = folder, legacy_recipe(overrides), max_steps
        self.deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
        self.save_every, self.last_save = save_every, time.monotonic()
        self.saved, self.step, self.ema = None, 0, None
        progress = saved_progress(folder, overrides)
        if progress is not None:
            self.saved, self.step = folder / "state.pt", progress["step"]

    def wrap_train_batch(self, train_batch):
        def train_or_skip(config, train_state, *args, **kwargs):
            if train_state.step < self.step:
                train_state.step += 1  # a batch the saved run trained already
                return None
            if self.saved is not None:
                self._load(train_state)
            elif self._stop_at(train_state.step):
                self._save(train_state)
                print(f"reference stopped at step {train_state.step}")
                raise _StopTraining
            elif self.save_every is not None and time.monotonic() - self.last_save > 60 * self.save_every:
                self._save(train_state)
            return train_batch(config, train_state, *args, **kwargs)

        return train_or_skip

    def wrap_skipped(self, function):
        """``function`` (evaluation, checkpoint) runs only once the saved state is loaded."""
        return lambda *args, **kwargs: None if self.saved is not None else function(*args, **kwargs)

    def ema_class(self):
        state = self

        class TrackedEMA(lp.EMAHelper):
            def register(self, module) -> None:
                super().register(module)
                state.ema = self

        return TrackedEMA

    def _stop_at(self, step: int) -> bool:
        return (self.max_steps is not None and step >= self.max_steps) or (
            self.deadline is not None and time.monotonic() > self.deadline)  # fmt: skip

    def _save(self, train_state) -> None:
        optimizers = [optimizer.state_dict() for optimizer in train_state.optimizers]
        state = {"model": train_state.model.state_dict(), "optimizers": optimizers,
                 "ema": self.ema.state_dict() if self.ema else None, "rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}  # fmt: skip
        with atomic_folder(self.folder) as folder:
            torch.save(state, folder / "state.pt")
            if train_state.carry is not None:
                torch.save(train_state.carry, folder / "carry.pt")
            (folder / "state.json").write_text(json.dumps({"recipe": self.recipe, "step": train_state.step}))
        self.last_save = time.monotonic()
        print(f"reference's training state at step {train_state.step} saved in {self.folder}", flush=True)

    def _load(self, train_state) -> None:
        saved = torch.load(self.saved, map_location="cpu", weights_only=False)
        self.saved = None
        device = lp._model_device(train_state.model)
        train_state.model.load_state_dict(saved["model"])
        for optimizer, optimizer_state in zip(train_state.optimizers, saved["optimizers"], strict=True):
            optimizer.load_state_dict(optimizer_state)
        if saved["ema"] is not None:
            self.ema.load_state_dict({name: value.to(device) for name, value in saved["ema"].items()})
        torch.set_rng_state(saved["rng"])
        if saved["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        carry = self.folder / "carry.pt"
        train_state.carry = torch.load(carry, map_location=device, weights_only=False) if carry.exists() else None
        print(f"reference continues from step {self.step} ({'with' if carry.exists() else 'without'} its ACT carry)")

    def finished(self) -> None:
        """The loop ran to its end: nothing left to continue."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _plain(value):
    return {k: _plain(v) for k, v in value.items()} if isinstance(value, dict) else float(value)


def _seed_numpy(seed: int, worker_id: int) -> None:
    """The reference's data worker starts: NumPy's global RNG as trm_mlx's example draws start (module docstring)."""
    np.random.seed(seed)


def legacy_recipe(overrides: list[str]) -> list[str]:
    """What a continued reference run must share with the saved one: the overrides but where it stops and the path
    of the initial weights."""
    return [o for o in overrides if not o.startswith(("max_steps=", "max_minutes=", "+load_checkpoint="))]


def saved_progress(folder: Path, overrides: list[str]) -> dict | None:
    """The step of the reference's training state saved in ``folder``, if one is; an error if it trained another
    recipe than ``overrides``."""
    path = folder / "state.json"
    if not (path.exists() and (folder / "state.pt").exists()):
        return None
    progress, recipe = json.loads(path.read_text()), legacy_recipe(overrides)
    if progress["recipe"] != recipe:
        raise SystemExit(f"{folder}: the saved reference run trained {' '.join(progress['recipe'])}, not "
                         f"{' '.join(recipe)}; remove the folder to start over")  # fmt: skip
    return progress


def run_legacy(overrides: list[str], out: Path, every: int, save_every: float | None = None) -> Path:
    """``legacy/pretrain.py``'s loop as its command line runs it, its logged metrics written to ``metrics.jsonl``;
    it continues a run saved in ``out/state`` and saves its state there every ``save_every`` minutes
    (``_LegacyState``)."""
    if torch.cuda.is_available():
        os.environ["TRM_LEGACY_COMPILE"] = "1"
    config = compose([*overrides, f"+checkpoint_path={out}"])
    state = _LegacyState(out / LEGACY_STATE, overrides, config.max_steps, config.max_minutes, save_every)
    run = _MetricsRun(out / METRICS_FILE, every, state.step)
    seeded_loader = functools.partial(lp.DataLoader, worker_init_fn=functools.partial(_seed_numpy, config.seed))
    patches = {"_wandb_init": lambda config: run, "DataLoader": seeded_loader, "EMAHelper": state.ema_class(),
               "train_batch": state.wrap_train_batch(lp.train_batch), "evaluate": state.wrap_skipped(lp.evaluate),
               "save_train_state": state.wrap_skipped(lp.save_train_state)}  # fmt: skip
    originals = {name: getattr(lp, name) for name in patches}
    for name, value in patches.items():
        setattr(lp, name, value)
    try:
        lp.launch.__wrapped__(config)
        state.finished()
    except _StopTraining:
        pass
    finally:
        for name, value in originals.items():
            setattr(lp, name, value)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return out / METRICS_FILE


def _legacy_child(overrides: list[str], out: Path, every: int, save_every: float | None) -> tuple[list[str], dict]:
    """Command line and environment of ``run_legacy`` in a child process without our BLAS (module docstring), this
    checkout first on its path."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "TRM_MLX_BLAS": "off",
           "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
    code = "import sys, json, pathlib, scripts.compare_curves as c; c.run_legacy(json.loads(sys.argv[1]), " \
           "pathlib.Path(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4]))"  # fmt: skip
    return [sys.executable, "-c", code, json.dumps(overrides), str(out), str(every), json.dumps(save_every)], env


def run_legacy_apart(overrides: list[str], out: Path, every: int, save_every: float | None = None) -> Path:
    args, env = _legacy_child(overrides, out, every, save_every)
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
    gives well above 1, the same arithmetic about 0.

    A gap smaller than the spread still shows in its sign: ``train_loss_relative_gap`` is the mean of
    trm-mlx's loss over the reference's minus 1, ``train_loss_share_mlx_above`` the share of common steps where
    trm-mlx's is the higher. Neighbouring points of two diverged trajectories share their sign for a while, so
    these are read against the reference's runs against each other, not against a coin."""
    curves = {side: dict(zip(*series(records, "train", "train/lm_loss"))) for side, records in
              (("mlx", mlx), ("legacy", legacy))}  # fmt: skip
    steps = sorted(set(curves["mlx"]) & set(curves["legacy"]))
    if len(steps) < 2:
        return {}
    spread = {side: float(np.median(np.abs(np.diff([curve[s] for s in sorted(curve)])))) for side, curve in
              curves.items()}  # fmt: skip
    mlx_curve, legacy_curve = (np.array([curves[side][s] for s in steps]) for side in ("mlx", "legacy"))
    differences = np.abs(mlx_curve - legacy_curve)
    return {
        "train_loss_spread": spread,
        "train_loss_max_difference": float(differences.max()),
        "train_loss_gap_to_spread": float(np.median(differences) / max(spread.values())),
        "train_loss_relative_gap": float(np.mean(mlx_curve / legacy_curve - 1)),
        "train_loss_share_mlx_above": float(np.mean(mlx_curve > legacy_curve)),
    }


def cross_evaluate(data: str, out: Path, overrides: list[str]) -> None:
    """Score each of the reference's evaluated checkpoints (``step_N``: EMA weights where the run keeps an EMA) with
    trm-mlx's evaluation, as `trm-eval` does, in batches of the recipe's size (the same padding), and append the
    metrics to ``CROSS_FILE``. Against the reference's own score of the same weights, this separates a difference
    of the evaluation arithmetic from one of the training trajectories."""
    side, config = out / "legacy", from_hydra(compose(overrides))
    path = side / CROSS_FILE
    done = {record["step"] for record in read_metrics(path)} if path.exists() else set()
    steps = [step for step, _ in zip(*series(read_metrics(side / METRICS_FILE), "eval", "accuracy"))]
    for step in steps:
        checkpoint = side / f"step_{step}"
        if step in done or not checkpoint.exists():
            continue
        metrics = evaluate_checkpoint(EvalConfig(
            checkpoint=str(checkpoint), data_paths=[data], global_batch_size=config.global_batch_size,
            output_dir=str(side / "cross_eval" / f"step_{step}"), device=config.device, progress=False))  # fmt: skip
        with path.open("a") as lines:
            lines.write(json.dumps({"step": step, "kind": "eval", **metrics}) + "\n")
        print(f"step {step}: the reference's weights score {metrics['all']['accuracy']:.4f} in trm-mlx's evaluation")


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Every evaluation step both sides have, their test metrics (and ``cross``: the reference's weights in trm-mlx's
    evaluation, where ``runs`` has them), the largest test-accuracy difference, and how the training losses agree
    (``training_loss_agreement``)."""
    mlx, legacy = runs[SIDES["mlx"]], runs[SIDES["legacy"]]
    evals = {}
    for key in EVAL_KEYS:
        for side, records in (("mlx", mlx), ("legacy", legacy), ("cross", runs.get(CROSS, []))):
            for step, value in zip(*series(records, "eval", key)):
                evals.setdefault(step, {}).setdefault(side, {})[key] = value
    common = {step: sides for step, sides in sorted(evals.items()) if {"mlx", "legacy"} <= set(sides)}
    differences = [abs(s["mlx"]["accuracy"] - s["legacy"]["accuracy"]) for s in common.values()]
    walls = {side: max((r["wall_s"] for r in records), default=None)
             for side, records in (("mlx", mlx), ("legacy", legacy))}  # fmt: skip
    return {
        "evaluations": [{"step": step, **sides} for step, sides in common.items()],
        "max_test_accuracy_difference": max(differences, default=None),
        **training_loss_agreement(mlx, legacy),
        "wall_s": walls,
    }


def reference_paused(out: Path, base: list[str]) -> int | None:
    """The step where the reference's run in ``out`` stopped short of ``max_steps`` (``max_minutes``) with its state
    saved to continue from, or None."""
    progress = saved_progress(out / "legacy" / LEGACY_STATE, base)
    last = from_hydra(compose(base)).max_steps
    return progress["step"] if progress is not None and (last is None or progress["step"] < last) else None


def compare(data: str, out: Path, overrides: list[str], every: int = 100, sides=("legacy", "mlx"),
            concurrent: bool = False, init: str = "legacy", mlx_run: Path | None = None,
            save_every: float | None = None, cross_eval: bool = False) -> dict | None:  # fmt: skip
    """Train ``sides`` into ``out`` and, once both sides' metrics are there (this call's or an earlier one's, e.g.
    on another machine lease), write the summary and the figure; returns the summary, or None until then. With
    ``concurrent`` the reference's child process trains while trm_mlx trains in this one. ``init`` says whose
    seeded init draws the initial weights; ``mlx_run``, the metrics of a trm-train run already made (from
    trm-train's init), stands for the trm_mlx side up to ``max_steps``; ``save_every`` (minutes) has the reference
    save its training state on the way (``_LegacyState``); ``cross_eval`` scores the reference's checkpoints with
    trm-mlx's evaluation (``cross_evaluate``)."""
    out.mkdir(parents=True, exist_ok=True)
    base = [f"data_paths=[{data}]", *overrides]
    if mlx_run is not None:
        last = from_hydra(compose(base)).max_steps
        lines = [line for line in Path(mlx_run).read_text().splitlines()
                 if last is None or json.loads(line)["step"] <= last]  # fmt: skip
        (out / "mlx").mkdir(exist_ok=True)
        write_atomically(out / "mlx" / METRICS_FILE, "".join(line + "\n" for line in lines))
        sides = [side for side in sides if side != "mlx"]
    if "legacy" in sides:
        saved_progress(out / "legacy" / LEGACY_STATE, base)  # another recipe's saved run: an error before training
    start = out / "initial_weights.pt"
    if sides and not start.exists():  # seeded: an earlier call's file holds the same weights
        initial_weights(base, start, init)
    common = [*base, f"+load_checkpoint={start}"]
    timings = {}
    if concurrent and set(sides) == set(SIDES):
        began = time.perf_counter()
        args, env = _legacy_child(common, out / "legacy", every, save_every)
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
        for side, runner in (("legacy", functools.partial(run_legacy_apart, save_every=save_every)), ("mlx", run_mlx)):
            if side in sides:
                began = time.perf_counter()
                runner(common, out / side, every)
                timings[side] = time.perf_counter() - began
    if cross_eval and (out / "legacy" / METRICS_FILE).exists():
        cross_evaluate(data, out, base)
    if not all((out / side / METRICS_FILE).exists() for side in SIDES) or reference_paused(out, base) is not None:
        return None
    runs = {SIDES[side]: read_metrics(out / side / METRICS_FILE) for side in SIDES}
    if (out / "legacy" / CROSS_FILE).exists():
        runs[CROSS] = read_metrics(out / "legacy" / CROSS_FILE)
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
    parser.add_argument("--save-every", type=float, metavar="MINUTES", help="the reference saves its training "
                        "state this often without stopping, to continue from if the machine goes")  # fmt: skip
    parser.add_argument("--cross-eval", action="store_true", help="also score the reference's checkpoints with "
                        "trm-mlx's evaluation (the same weights in both evaluations)")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of cfg_pretrain, e.g. preset=sudoku_mlp")
    args = parser.parse_args(argv)
    sides = [args.only] if args.only else list(SIDES)
    summary = compare(args.data, Path(args.out), args.overrides, args.log_every, sides, args.concurrent, args.init,
                      args.mlx_run, args.save_every, args.cross_eval)  # fmt: skip
    if summary is None:
        paused = reference_paused(Path(args.out), [f"data_paths=[{args.data}]", *args.overrides])
        if paused is not None:
            print(f"the reference stopped at step {paused} (max_minutes); the same command continues it")
        else:
            print(f"trained {args.only}; the comparison needs the other side's run in {args.out}")
        return 0
    for row in summary["evaluations"]:
        mine, theirs = row["mlx"], row["legacy"]
        print(f"step {row['step']}: test accuracy {mine['accuracy']:.4f} vs {theirs['accuracy']:.4f}, "
              f"exact {mine['exact_accuracy']:.4f} vs {theirs['exact_accuracy']:.4f}"
              + (f"; the reference's weights in trm-mlx's evaluation {row['cross']['accuracy']:.4f}"
                 if "cross" in row else ""))  # fmt: skip
    print(f"{Path(args.out) / 'curves.png'}; max test accuracy difference {summary['max_test_accuracy_difference']}")
    if "train_loss_gap_to_spread" in summary:
        print(f"training LM loss: median difference {summary['train_loss_gap_to_spread']:.2f}x the step-to-step spread "
              f"(largest difference {summary['train_loss_max_difference']:.3g}, spreads "
              f"{summary['train_loss_spread']}); trm-mlx's {100 * summary['train_loss_relative_gap']:+.1f}% on average, "
              f"above at {100 * summary['train_loss_share_mlx_above']:.0f}% of the steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
