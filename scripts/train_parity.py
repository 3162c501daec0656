"""Train legacy (PyTorch) and trm_mlx side by side for N steps and compare them.

Both start from the same weights (the legacy model's initial state, saved as an original checkpoint and loaded by
trm_mlx), see the same batches, run in fp32 on the CPU with ACT exploration off, and are compared step by step
(every ``train/*`` metric) and at the end (every weight, puzzle table included)::

    python -m scripts.train_parity --steps 20 --data data/builtin-sudoku arch.hidden_size=64 arch.num_heads=2

Extra arguments are Hydra overrides of cfg_pretrain, as for trm-train.
"""

import argparse
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trm_mlx.blas import load_fast_blas

load_fast_blas()  # before MLX loads

import mlx.core as mx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import legacy.pretrain as lp  # noqa: E402
from legacy.dataset.common import PuzzleDatasetMetadata as LegacyMetadata  # noqa: E402
from trm_mlx.checkpoint import model_arrays  # noqa: E402
from trm_mlx.data import PuzzleDataset  # noqa: E402
from trm_mlx.data.builtin import DEFAULT_PATH as BUILTIN_SUDOKU_PATH  # noqa: E402
from trm_mlx.data.builtin import ensure_builtin_sudoku  # noqa: E402
from trm_mlx.training.config import compose, from_hydra  # noqa: E402
from trm_mlx.training.state import create_train_state  # noqa: E402
from trm_mlx.training.trainer import make_train_step, reduce_train_metrics, train_batch, training_runtime  # noqa: E402

# Exploration draws differ between torch and MLX generators; fp32 everywhere so the comparison is tight.
PARITY_OVERRIDES = ["arch.halt_exploration_prob=0.0", "++arch.forward_dtype=float32", "device=cpu"]  # ++: the baseline yaml has no forward_dtype


@dataclass
class ParityReport:
    steps: int
    legacy_metrics: list[dict] = field(default_factory=list)
    mlx_metrics: list[dict] = field(default_factory=list)
    weight_errors: dict[str, float] = field(default_factory=dict)  # ||mlx - legacy|| / ||legacy|| per tensor

    @property
    def max_metric_error(self) -> float:
        """Largest relative difference of any train/* value at any step (absolute where the value is ~0)."""
        worst = 0.0
        for ours, theirs in zip(self.mlx_metrics, self.legacy_metrics):
            for key, reference in theirs.items():
                worst = max(worst, abs(ours[key] - reference) / max(abs(reference), 1e-6))
        return worst

    @property
    def max_weight_error(self) -> float:
        return max(self.weight_errors.values())

    def summary(self) -> str:
        lines = [f"{self.steps} steps: max relative metric difference {self.max_metric_error:.3g}, "
                 f"max relative weight difference {self.max_weight_error:.3g}"]
        for step, (ours, theirs) in enumerate(zip(self.mlx_metrics, self.legacy_metrics), start=1):
            lines.append(f"  step {step:3d}: lm_loss legacy {theirs['train/lm_loss']:.8f} mlx {ours['train/lm_loss']:.8f}")
        worst = sorted(self.weight_errors.items(), key=lambda kv: -kv[1])[:5]
        lines += [f"  {name}: {error:.3g}" for name, error in worst]
        return "\n".join(lines)


def parity_batches(config, steps: int) -> list[dict]:
    """The first ``steps`` training batches of the run (NumPy), as trm_mlx's sampler yields them."""
    dataset = PuzzleDataset(config.data_paths, "train", config.global_batch_size, seed=config.seed, epochs_per_iter=1)
    batches = []
    while len(batches) < steps:
        for _set_name, batch, _ in dataset.iter_train():
            batches.append(batch)
            if len(batches) == steps:
                break
    return batches


def run_parity(overrides: list[str], steps: int, work_dir: Path, q_head_std: float = 0.0) -> ParityReport:
    """``q_head_std`` > 0 starts the Q head from N(0, std) weights and a zero bias (the original: zeros and -5), so
    that rows halt on the Q head at different steps and the carry of the halted rows alone is reset."""
    config = from_hydra(compose([*overrides, *PARITY_OVERRIDES]))
    legacy_config = lp.PretrainConfig(**config.model_dump())
    dataset = PuzzleDataset(config.data_paths, "train", config.global_batch_size)
    metadata = LegacyMetadata(**dataset.metadata.model_dump())

    torch.manual_seed(config.seed)
    legacy = lp.init_train_state(legacy_config, metadata, rank=0, world_size=1, device=torch.device("cpu"))
    legacy.model.train()
    if q_head_std > 0:
        q_head = legacy.model.model.inner.q_head
        with torch.no_grad():
            q_head.weight.normal_(0, q_head_std)
            q_head.bias.zero_()
    start = work_dir / "start"
    torch.save(lp.checkpoint_state_dict(legacy.model), start)

    runtime = training_runtime(config)  # device=cpu
    ours = create_train_state(config.model_copy(update={"load_checkpoint": str(start)}), dataset.metadata, runtime)
    step_fn, compiled_state = make_train_step(ours, config, runtime)

    report = ParityReport(steps=steps)
    for batch in parity_batches(config, steps):
        torch_batch = {key: torch.from_numpy(value) for key, value in batch.items()}
        report.legacy_metrics.append(
            {k: float(v) for k, v in lp.train_batch(legacy_config, legacy, torch_batch, config.global_batch_size, 0, 1).items()}
        )
        metrics, lr = train_batch(config, ours, step_fn, compiled_state, batch)
        report.mlx_metrics.append(reduce_train_metrics(metrics, config.global_batch_size, lr))

    legacy_weights = {k.removeprefix("model."): v.detach().numpy() for k, v in legacy.model.state_dict().items()}
    for name, value in model_arrays(ours.model).items():
        reference = legacy_weights[name].astype(np.float64)
        difference = np.linalg.norm(np.array(value.astype(mx.float32), dtype=np.float64) - reference)
        report.weight_errors[name] = difference / max(np.linalg.norm(reference), 1e-12)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data", default=BUILTIN_SUDOKU_PATH, help="dataset folder (default: the built-in Sudoku)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="relative; exit status 1 when exceeded")
    parser.add_argument("--q-head-std", type=float, default=0.0,
                        help="start the Q head from N(0, std) weights: rows halt at different steps")  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. arch.hidden_size=64")
    args = parser.parse_args(argv)
    if Path(args.data).resolve() == Path(BUILTIN_SUDOKU_PATH).resolve():
        ensure_builtin_sudoku(args.data)
    overrides = [f"data_paths=[{args.data}]", "evaluators=[]", *args.overrides]
    with tempfile.TemporaryDirectory() as work_dir:
        report = run_parity(overrides, args.steps, Path(work_dir), args.q_head_std)
    print(report.summary())
    ok = report.max_metric_error <= args.tolerance and report.max_weight_error <= args.tolerance
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
