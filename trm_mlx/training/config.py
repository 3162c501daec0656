"""The training config: the original ``PretrainConfig`` (same fields, defaults and naming rules) plus a few keys of ours.

Hydra composes ``configs/cfg_pretrain.yaml``; :func:`from_hydra` turns the result into a :class:`PretrainConfig`.
"""

import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Sequence, Union

import coolname
import hydra
from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from trm_mlx.data.metadata import PuzzleDatasetMetadata

CONFIG_NAME = "cfg_pretrain"

# Keys the trainer adds to the architecture config; supplying one under ``arch.`` is an error, as in the original.
INJECTED_ARCH_KEYS = ("batch_size", "vocab_size", "seq_len", "num_puzzle_identifiers", "causal")


def hydra_config_path() -> str:
    """Where Hydra finds ``cfg_pretrain.yaml``: the ``configs/`` folder of the checkout this package runs from, else
    (a wheel) the installed package ``trm_mlx.configs``.

    The checkout comes first: an editable install maps ``trm_mlx.configs`` to the checkout it was made from, which
    is another tree's configs when this package runs from a second worktree (``PYTHONPATH``).
    """
    checkout = Path(__file__).resolve().parents[2] / "configs"
    if (checkout / f"{CONFIG_NAME}.yaml").is_file():
        return str(checkout)
    return "pkg://trm_mlx.configs"


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """``cfg_pretrain`` with command-line overrides, composed as ``trm-train <overrides>`` would (scripts, tests)."""
    path = hydra_config_path()
    if path.startswith("pkg://"):
        context = hydra.initialize_config_module(path.removeprefix("pkg://"), version_base=None)
    else:
        context = hydra.initialize_config_dir(path, version_base=None)
    with context:
        return hydra.compose(CONFIG_NAME, overrides=list(overrides))


class LossConfig(BaseModel):
    """``arch.loss``: the loss-head locator; every other key is a keyword argument of the loss head."""

    model_config = ConfigDict(extra="allow")

    name: str


class ArchConfig(BaseModel):
    """``arch``: the model locator and loss; every other key goes to the model constructor."""

    model_config = ConfigDict(extra="allow")

    name: str
    loss: LossConfig


class EvaluatorConfig(BaseModel):
    """One ``evaluators`` entry: the evaluator locator; other keys are its keyword arguments."""

    model_config = ConfigDict(extra="allow")

    name: str


class BenchmarkShapes(BaseModel):
    """``benchmark`` (presets): the shapes of the preset's dataset and the GPUs of the README run, so that the
    benchmarks run the recipe without its data; training reads the dataset's own shapes."""

    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int
    gpus: int = 1


class PretrainConfig(BaseModel):
    """All fields and defaults of the original ``pretrain.py`` config, then ours (documented in cfg_pretrain.yaml)."""

    # Config
    arch: ArchConfig
    # Data
    data_paths: list[str]
    data_paths_test: list[str] = []
    # Evaluators
    evaluators: list[EvaluatorConfig] = []

    # Hyperparams
    global_batch_size: Annotated[int, Field(ge=1)]
    epochs: Annotated[int, Field(ge=1)]

    lr: Annotated[float, Field(ge=0)]
    lr_min_ratio: Annotated[float, Field(ge=0)]
    lr_warmup_steps: Annotated[int, Field(ge=0)]

    weight_decay: Annotated[float, Field(ge=0)]
    beta1: Annotated[float, Field(ge=0, lt=1)]
    beta2: Annotated[float, Field(ge=0, lt=1)]

    # Puzzle embedding
    puzzle_emb_lr: Annotated[float, Field(ge=0)]
    puzzle_emb_weight_decay: Annotated[float, Field(ge=0)]

    # Names
    project_name: Optional[str] = None
    run_name: Optional[str] = None
    load_checkpoint: Optional[str] = None
    checkpoint_path: Optional[str] = None

    # Extras
    seed: int = 0
    checkpoint_every_eval: bool = False
    eval_interval: Optional[Annotated[int, Field(ge=1)]] = None
    min_eval_interval: Optional[Annotated[int, Field(ge=0)]] = 0
    eval_save_outputs: list[str] = []

    ema: bool = False
    ema_rate: Annotated[float, Field(ge=0, le=1)] = 0.999
    freeze_weights: bool = False

    # trm-mlx additions
    benchmark: Optional[BenchmarkShapes] = None
    resume: Optional[str] = None
    max_steps: Optional[Annotated[int, Field(ge=1)]] = None
    max_minutes: Optional[Annotated[float, Field(gt=0)]] = None
    on_nan_loss: Literal["stop", "continue"] = "stop"
    wandb_mode: Optional[Literal["online", "offline", "disabled"]] = None
    device: Literal["auto", "cpu", "gpu"] = "auto"
    kernels: Literal["auto", "fused", "reference"] = "auto"
    recompute: Union[Literal["auto", "blocks", "none"], Annotated[float, Field(ge=0, le=1)]] = "auto"
    memory_limit: Optional[Annotated[float, Field(gt=0)]] = None
    cpu_lanes: Union[Literal["auto"], Annotated[int, Field(ge=1)]] = "auto"


def from_hydra(hydra_config: DictConfig) -> PretrainConfig:
    """Resolve interpolations (``${.hidden_size}``) and validate; unknown keys (top-level, or under ``arch``) are
    ignored, as in the original, but named in a warning so that a misspelt ``+key`` does not go unnoticed."""
    values: dict[str, Any] = OmegaConf.to_container(hydra_config, resolve=True)  # type: ignore[assignment]
    unknown = sorted(set(values) - set(PretrainConfig.model_fields))
    config = PretrainConfig(**values)
    from trm_mlx.model import TRMConfig  # the model package loads MLX: not before the command line is parsed

    unknown += [f"arch.{key}" for key in sorted(set(config.arch.model_extra) - set(TRMConfig.model_fields))]
    if unknown:
        warnings.warn(f"config keys not used by trm-train (ignored): {', '.join(unknown)}", stacklevel=2)
    return config


def preset_run(
    preset: str, overrides: Sequence[str] = (), batch_size: Optional[int] = None
) -> tuple[PretrainConfig, "PuzzleDatasetMetadata"]:
    """A preset's recipe as the benchmarks train it, and metadata of its dataset's shapes (its ``benchmark`` key).

    No EMA and no evaluators; ``batch_size`` rows a step, by default one GPU's share of the recipe's global batch.
    The metadata's counts only size the LR schedule, far beyond any benchmark.
    """
    from trm_mlx.data.metadata import PuzzleDatasetMetadata

    config = from_hydra(compose([f"preset={preset}", "ema=False", "evaluators=[]", *overrides]))
    shapes = config.benchmark
    if shapes is None:
        raise ValueError(f"preset {preset!r} has no `benchmark` key (its dataset's shapes) in configs/preset/")
    config = config.model_copy(update={"global_batch_size": batch_size or config.global_batch_size // shapes.gpus})
    metadata = PuzzleDatasetMetadata(
        pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=shapes.vocab_size, seq_len=shapes.seq_len,
        num_puzzle_identifiers=shapes.num_puzzle_identifiers, total_groups=10**7, mean_puzzle_examples=1.0,
        total_puzzles=10**7, sets=["all"],
    )  # fmt: skip
    return config, metadata


def with_naming_defaults(config: PretrainConfig) -> PretrainConfig:
    """Fill ``project_name``, ``run_name`` and ``checkpoint_path`` the way the original does.

    ``project_name`` = basename of the first data path, ``str.capitalize``d (rest lower-cased), + ``-ACT-torch``;
    ``run_name`` = model class name + a random two-word slug; ``checkpoint_path`` = checkpoints/<project>/<run>,
    where the original keeps the run name's space and we put an underscore.
    The ``-ACT-torch`` suffix is kept so that runs land in the same wandb project as the original's.
    """
    project_name = config.project_name
    if project_name is None:
        project_name = f"{os.path.basename(config.data_paths[0]).capitalize()}-ACT-torch"
    run_name = config.run_name
    if run_name is None:
        run_name = f"{config.arch.name.split('@')[-1]} {coolname.generate_slug(2)}"
    checkpoint_path = config.checkpoint_path
    if checkpoint_path is None:  # the folder's name without spaces (the default run name has one)
        checkpoint_path = os.path.join("checkpoints", project_name, re.sub(r"\s+", "_", run_name))
    return config.model_copy(
        update={"project_name": project_name, "run_name": run_name, "checkpoint_path": checkpoint_path}
    )


def model_arch_config(config: PretrainConfig, metadata: Any, world_size: int = 1) -> dict[str, Any]:
    """The dict the model is built from: ``arch.name``, every extra ``arch`` key, and the injected keys.

    ``metadata`` is the train split's dataset metadata (``vocab_size``, ``seq_len``, ``num_puzzle_identifiers``).
    """
    extras = dict(config.arch.model_extra or {})
    clashes = [key for key in INJECTED_ARCH_KEYS if key in extras]
    if clashes:
        raise ValueError(
            f"arch.{clashes[0]} is set by the trainer from the dataset and batch size; remove it from the config"
        )
    return {
        "name": config.arch.name,
        **extras,
        "batch_size": config.global_batch_size // world_size,
        "vocab_size": metadata.vocab_size,
        "seq_len": metadata.seq_len,
        "num_puzzle_identifiers": metadata.num_puzzle_identifiers,
        "causal": False,
    }
