"""Hydra composition of cfg_pretrain: the original README command lines give the values the original would,
and the PretrainConfig rules (naming defaults, injected arch keys) behave like the original's."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.errors import ConfigCompositionException

from readme_commands import DEFAULTS, README_COMMANDS, TRM_ARCH, overrides
from trm_mlx.training.config import (
    PretrainConfig,
    compose,
    from_hydra,
    model_arch_config,
    with_naming_defaults,
)

REPO = Path(__file__).resolve().parents[1]


def _resolved(args) -> dict:
    return from_hydra(compose(args)).model_dump()


def test_defaults_are_the_originals():
    assert _resolved([]) == DEFAULTS


@pytest.mark.parametrize("name", list(README_COMMANDS))
def test_readme_command_line(name):
    command, changes = README_COMMANDS[name]
    assert _resolved(overrides(command)) == {**DEFAULTS, **changes}


@pytest.mark.parametrize("preset, readme", [(p, p) for p in ("sudoku_mlp", "sudoku_att", "maze", "arc1", "arc2")])
def test_presets_equal_readme_command_lines(preset, readme):
    """A preset adds only its data's shapes for the benchmarks (``benchmark``) to the README's command line."""
    command, changes = README_COMMANDS[readme]
    resolved = _resolved([f"preset={preset}", f"+run_name={changes['run_name']}"])
    assert {**resolved, "benchmark": None} == _resolved(overrides(command))


def test_preset_values_yield_to_the_command_line():
    resolved = _resolved(["preset=sudoku_mlp", "arch.mlp_t=False", "epochs=10"])
    assert resolved["arch"]["mlp_t"] is False and resolved["epochs"] == 10 and resolved["eval_interval"] == 5000


def test_other_arch_groups():
    common = {
        "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
        "halt_exploration_prob": 0.1,
        "halt_max_steps": 16,
        "hidden_size": 512,
        "expansion": 4,
        "puzzle_emb_ndim": 512,
        "pos_encodings": "rope",
    }
    assert _resolved(["arch=hrm"])["arch"] == {
        **common,
        "name": "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1",
        "H_cycles": 2,
        "L_cycles": 2,
        "H_layers": 4,
        "L_layers": 4,
        "num_heads": 8,
        "forward_dtype": "bfloat16",
        "mlp_t": False,
    }
    assert _resolved(["arch=transformers_baseline"])["arch"] == {
        **common,
        "name": "recursive_reasoning.transformers_baseline@Model_ACTV2",
        "H_cycles": 1,
        "H_layers": 8,
        "num_heads": 12,
    }
    for variant in ("trm_singlez", "trm_hier6"):
        name = f"recursive_reasoning.{variant}@TinyRecursiveReasoningModel_ACTV1"
        assert _resolved([f"arch={variant}"])["arch"] == {**TRM_ARCH, "name": name}


def test_puzzle_emb_ndim_follows_hidden_size():
    assert _resolved(["arch.hidden_size=256"])["arch"]["puzzle_emb_ndim"] == 256
    assert _resolved(["arch=hrm", "arch.hidden_size=128"])["arch"]["puzzle_emb_ndim"] == 128
    explicit = _resolved(["arch.hidden_size=256", "arch.puzzle_emb_ndim=0"])["arch"]
    assert (explicit["hidden_size"], explicit["puzzle_emb_ndim"]) == (256, 0)


def test_keys_absent_from_the_yaml_need_append_syntax():
    with pytest.raises(ConfigCompositionException, match=r"\+run_name"):
        compose(["run_name=x"])
    with pytest.raises(ConfigCompositionException):
        compose(["+ema=True"])  # present in the yaml: override without +
    resolved = _resolved(
        ["+project_name=P", "+checkpoint_path=ck/run", "+load_checkpoint=ck/step_5", "+eval_save_outputs=[inputs,preds]"]
    )
    assert resolved["project_name"] == "P"
    assert resolved["checkpoint_path"] == "ck/run"
    assert resolved["load_checkpoint"] == "ck/step_5"
    assert resolved["eval_save_outputs"] == ["inputs", "preds"]


def test_lists_nested_loss_and_arch_extras():
    resolved = _resolved(
        [
            "data_paths=[data/a,data/b]",
            "data_paths_test=[data/c]",
            "evaluators=[{name: arc@ARC, submission_K: 3}]",
            "arch.loss.loss_type=softmax_cross_entropy",
            "+arch.loss.extra_kwarg=1",
            "+arch.rope_theta=500.0",
        ]
    )
    assert resolved["data_paths"] == ["data/a", "data/b"]
    assert resolved["data_paths_test"] == ["data/c"]
    assert resolved["evaluators"] == [{"name": "arc@ARC", "submission_K": 3}]
    assert resolved["arch"]["loss"] == {"name": "losses@ACTLossHead", "loss_type": "softmax_cross_entropy", "extra_kwarg": 1}
    assert resolved["arch"]["rope_theta"] == 500.0


def test_unknown_top_level_keys_are_ignored_with_a_warning():
    with pytest.warns(UserWarning, match="not_a_field"):
        config = from_hydra(compose(["+not_a_field=3"]))
    assert "not_a_field" not in config.model_dump()


def _config(**changes) -> PretrainConfig:
    return from_hydra(compose([f"{key}={value}" for key, value in changes.items()]))


def test_naming_defaults():
    config = with_naming_defaults(_config(data_paths="[data/Sudoku-Extreme-1k-aug-1000,data/other]"))
    assert config.project_name == "Sudoku-extreme-1k-aug-1000-ACT-torch"  # str.capitalize lower-cases the rest
    class_name, slug = config.run_name.split(" ")
    assert class_name == "TinyRecursiveReasoningModel_ACTV1"
    assert len(slug.split("-")) >= 2 and slug == slug.lower()
    # the folder takes an underscore for the run name's space
    assert config.checkpoint_path == os.path.join("checkpoints", config.project_name, f"{class_name}_{slug}")

    hrm = with_naming_defaults(_config(arch="hrm"))
    assert hrm.project_name == "Arc-aug-1000-ACT-torch"
    assert hrm.run_name.startswith("HierarchicalReasoningModel_ACTV1 ")

    given = with_naming_defaults(from_hydra(compose(["+project_name=p", "+run_name=r"])))
    assert (given.project_name, given.run_name, given.checkpoint_path) == ("p", "r", os.path.join("checkpoints", "p", "r"))


def test_model_arch_config_injects_dataset_keys():
    config = _config(global_batch_size=64)
    metadata = SimpleNamespace(vocab_size=11, seq_len=81, num_puzzle_identifiers=1001)
    arch = model_arch_config(config, metadata, world_size=2)
    expected = {key: value for key, value in TRM_ARCH.items() if key != "loss"}
    expected.update(batch_size=32, vocab_size=11, seq_len=81, num_puzzle_identifiers=1001, causal=False)
    assert arch == expected

    clashing = from_hydra(compose(["+arch.seq_len=10"]))
    with pytest.raises(ValueError, match="arch.seq_len"):
        model_arch_config(clashing, metadata)


def _not_source(directory, names):
    """Leave out what a build does not need (environments, data, outputs) when copying the checkout."""
    top_level = {".git", ".venv", "data", "checkpoints", "outputs", "wandb", "build", "dist"}
    return [
        name
        for name in names
        if (Path(directory) == REPO and name in top_level)
        or name in {"__pycache__", ".pytest_cache"}
        or name.endswith(".egg-info")
    ]


def test_wheel_ships_the_configs(tmp_path):
    """Build a wheel of this checkout and compose cfg_pretrain from the installed copy (pkg://trm_mlx.configs)."""
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=_not_source)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("trm_mlx-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for stem in ("trm", "trm_singlez", "trm_hier6", "hrm", "transformers_baseline"):
        assert f"trm_mlx/configs/arch/{stem}.yaml" in names
    assert "trm_mlx/configs/cfg_pretrain.yaml" in names

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from trm_mlx.training.config import compose, hydra_config_path;"
        "assert hydra_config_path() == 'pkg://trm_mlx.configs', hydra_config_path();"
        "print(compose(['arch=hrm']).arch.H_layers)"
    )
    # Run outside the checkout and without the editable install's path hook, so only the wheel's files are seen.
    result = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(site)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p.endswith("site-packages"))},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "4"
