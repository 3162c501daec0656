"""The other four architectures end to end: trm-train equals the PyTorch reference for several steps, and a
checkpoint it writes evaluates with trm-eval."""

import pytest

from scripts.train_parity import run_parity
from tiny_dataset import BATCH, TINY_ARCH
from trm_mlx.evaluation.cli import EvalConfig, run
from trm_mlx.training.config import compose, from_hydra
from trm_mlx.training.trainer import train

ARCHS = {
    "trm_singlez": [],
    "trm_hier6": ["arch.L_cycles=2"],
    "hrm": ["arch.H_layers=1"],
    "transformers_baseline": ["arch.H_layers=2"],
}
TINY_RUN = [f"global_batch_size={BATCH}", "lr_warmup_steps=2", "evaluators=[]"]


def arch_overrides(arch: str) -> list[str]:
    """The tiny sizes; the baseline's yaml has no L_* keys (it has no low level) and no forward_dtype."""
    tiny = [o for o in TINY_ARCH if not (arch == "transformers_baseline" and o.startswith("arch.L_"))]
    tiny = ["++" + o if o.startswith("arch.forward_dtype") else o for o in tiny]
    return [f"arch={arch}", *tiny, *ARCHS[arch]]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_training_equals_the_pytorch_reference(arch, tiny_data, tmp_path):
    steps = 8
    report = run_parity([f"data_paths=[{tiny_data}]", *TINY_RUN, *arch_overrides(arch)], steps, tmp_path)
    assert any(m["train/count"] > 0 for m in report.legacy_metrics)
    for ours, theirs in zip(report.mlx_metrics, report.legacy_metrics):
        for key in ("train/lm_loss", "train/q_halt_loss"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-4)
        if arch == "hrm":  # HRM always learns the Q-continue target (see below for the looser bound)
            assert ours["train/q_continue_loss"] == pytest.approx(theirs["train/q_continue_loss"], rel=1e-3)
        for key in ("train/count", "train/accuracy", "train/exact_accuracy", "train/steps"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6)
    errors = dict(report.weight_errors)
    if arch == "hrm":
        # q_head starts at zero, so the Q-continue target equals the prediction up to rounding and the Q-continue
        # gradient of q_head.weight is rounding noise; AdamATan2 turns any nonzero gradient into a step of about
        # lr, so both implementations move those weights by lr-sized steps of noise-driven sign. Every weight
        # that sees real gradient is held to the usual bound.
        assert errors.pop("inner.q_head.weight") < 1.0
    assert max(errors.values()) <= 1e-4


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_trained_checkpoint_evaluates(arch, tiny_data, tmp_path):
    overrides = [f"data_paths=[{tiny_data}]", *TINY_RUN, *arch_overrides(arch)]
    config = from_hydra(compose([*overrides, "epochs=2", "eval_interval=2", f"+checkpoint_path={tmp_path / 'run'}"]))
    result = train(config, show_progress=False)
    checkpoints = sorted((tmp_path / "run").glob("step_*"))
    checkpoint = next(p for p in checkpoints if p.is_file())
    metrics = run(EvalConfig(checkpoint=str(checkpoint), data_paths=[str(tiny_data)], output_dir=str(tmp_path / "eval"), progress=False, device="cpu"))
    assert set(metrics["all"]) >= {"accuracy", "exact_accuracy", "lm_loss", "q_halt_accuracy", "steps"}
    # Evaluation runs every row for halt_max_steps (3) steps, unless the baseline halts adaptively (it doesn't here).
    assert metrics["all"]["steps"] == pytest.approx(3.0)
    assert metrics["all"]["accuracy"] == pytest.approx(result["eval"]["all"]["accuracy"], rel=1e-5)


def test_the_baseline_ignores_mlp_t_as_the_original_does(tiny_data, tmp_path):
    """The original's baseline has no mlp_t option (its config drops the key): its blocks attend either way."""
    overrides = [f"data_paths=[{tiny_data}]", *TINY_RUN, *arch_overrides("transformers_baseline"), "+arch.mlp_t=True"]
    report = run_parity(overrides, 2, tmp_path)
    errors = dict(report.weight_errors)
    assert not any("mlp_t" in name for name in errors)
    assert max(errors.values()) <= 1e-4
