"""`trm-eval`: evaluate a checkpoint on built datasets, or re-score saved predictions without a model.

Settings and their defaults are in configs/eval.yaml. Run it under `mlx.launch` for data-parallel evaluation: every
rank evaluates its slice of each batch, rank 0 writes the results.
"""

import json
import sys
from pathlib import Path
from typing import Annotated, Literal, Union

from trm_mlx.blas import load_fast_blas

load_fast_blas()  # trm-eval's entry module: the CPU BLAS loads before MLX does

import hydra  # noqa: E402
import mlx.core as mx  # noqa: E402
import pydantic  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from trm_mlx.checkpoint import (  # noqa: E402
    load_weights_into,
    model_file,
    read_all_config,
    read_config_file,
    read_model_source,
)
from trm_mlx.checkpoint.original import arch_from_original  # noqa: E402
from trm_mlx.data.dataset import PuzzleDataset  # noqa: E402
from trm_mlx.data.metadata import load_metadata, merge_metadata  # noqa: E402
from trm_mlx.evaluation import render  # noqa: E402
from trm_mlx.evaluation.arc import ARCEvaluator, write_json_atomic  # noqa: E402
from trm_mlx.evaluation.evaluators import create_evaluator, default_evaluator_names  # noqa: E402
from trm_mlx.evaluation.loop import evaluate  # noqa: E402
from trm_mlx.evaluation.preds import load_predictions  # noqa: E402
from trm_mlx.model import ACTLossHead, create_model  # noqa: E402
from trm_mlx.runtime import Runtime  # noqa: E402
from trm_mlx.training.checkpointing import find_train_state, read_train_state_meta  # noqa: E402
from trm_mlx.training.config import hydra_config_path  # noqa: E402
from trm_mlx.user_errors import one_line_errors  # noqa: E402

DEFAULT_LOSS_TYPE = "stablemax_cross_entropy"
DEFAULT_BATCH = 256
NO_DATA = "give the built dataset(s) to evaluate on, e.g. data_paths=[data/x]"


class EvalConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    checkpoint: str | None = None
    config: str | None = None
    arch: dict = {}
    ema: bool | None = None
    forward_dtype: str | None = None
    loss_type: str | None = None
    data_paths: list[str] = []
    evaluators: list[str | dict] | None = None
    preds: list[str] | str | None = None
    output_dir: str | None = None
    global_batch_size: int | None = pydantic.Field(None, ge=1)
    save_outputs: list[str] = []
    render: bool = False
    render_limit: int = pydantic.Field(20, ge=0)
    render_select: Literal["first", "wrong", "random"] = "first"
    halt: Literal["max", "q"] = "max"
    halt_threshold: float = pydantic.Field(0.5, gt=0, lt=1)
    device: Literal["auto", "cpu", "gpu"] = "auto"
    cpu_lanes: Union[Literal["auto"], Annotated[int, pydantic.Field(ge=1)]] = "auto"
    progress: bool = True

    @pydantic.model_validator(mode="after")
    def _one_source(self):
        if (self.checkpoint is None) == (self.preds is None):
            raise ValueError("give exactly one of checkpoint=FILE (run a model) or preds=FILE (re-score predictions)")
        if self.preds is not None and not self.data_paths:
            raise ValueError(f"data_paths is empty: {NO_DATA}")
        return self

    @property
    def preds_files(self) -> list[str]:
        return [self.preds] if isinstance(self.preds, str) else list(self.preds or [])

    def default_output_dir(self) -> Path:
        """outputs/eval/<run folder>/<checkpoint>[_ema|_live][_halt-q-<threshold>]: the step_N of two runs, and the
        weights or halting protocols of one, do not overwrite each other."""
        source = Path(self.checkpoint or self.preds_files[0]).resolve()
        weights = {True: ["ema"], False: ["live"] if model_file(source).is_dir() else [], None: []}[self.ema]
        name = "_".join([source.name, *weights] + [f"halt-q-{self.halt_threshold:g}"] * (self.halt == "q"))
        return Path("outputs") / "eval" / source.parent.name / name


def _checkpoint_config(cfg: EvalConfig) -> dict | None:
    """The checkpoint's training config: `config=FILE`, a training state's own, or the all_config.yaml beside it."""
    path = model_file(cfg.checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file, model folder or training-state folder")
    if cfg.config is not None:
        return read_config_file(cfg.config)
    if path.is_dir():
        return read_train_state_meta(find_train_state(path))["config"]
    return read_all_config(path)


def _with_training_data(cfg: EvalConfig, config: dict | None) -> EvalConfig:
    """Without `data_paths`, a checkpoint is evaluated on the test split its run evaluated on (`data_paths_test`,
    else `data_paths` of its `config`), as the path is written there (relative to where the run was started)."""
    config = config or {}
    paths = list(config.get("data_paths_test") or config.get("data_paths") or [])
    if not paths:
        raise ValueError(f"data_paths is empty and {cfg.checkpoint}'s config names no data: {NO_DATA}")
    return cfg.model_copy(update={"data_paths": paths})


def _load_model(cfg: EvalConfig, config: dict | None, runtime: Runtime):
    """The model to evaluate and its loss type; `config`: `_checkpoint_config`'s.

    `checkpoint` is a checkpoint file (native, or original with all_config.yaml beside it) or a trm-train
    training-state folder: by default the weights its step_N holds (the EMA ones where the run keeps an EMA, with
    the live puzzle table, as in the original's EMA checkpoints); `ema=true` insists on the EMA, `ema=false` takes
    the live weights. `config=FILE` replaces the checkpoint's config; `arch` entries override it.
    """
    path = Path(cfg.checkpoint)
    _, weights, own_arch, _ = read_model_source(path, ema=cfg.ema)  # the config: `_checkpoint_config`'s
    config = config or ({"arch": own_arch} if own_arch else None)
    if config is None:
        raise ValueError(f"{path}: no config: pass config=FILE, or put the run's all_config.yaml beside it")
    # The length the model was trained for: the checkpoint's own, else its run's training data (the evaluation
    # data only for a config that names none), so that evaluation data of another length is refused.
    arch_section = {**config["arch"], **cfg.arch}
    if own_arch and own_arch.get("seq_len") is not None:
        arch_section.setdefault("seq_len", own_arch["seq_len"])
    merged = {**config, "arch": arch_section}
    if not merged.get("data_paths"):
        merged["data_paths"] = cfg.data_paths
    arch = arch_from_original(merged, weights, path)
    if cfg.forward_dtype is not None:
        arch["forward_dtype"] = cfg.forward_dtype
    model = create_model(arch, runtime.execution)
    load_weights_into(model, weights, path)
    model.eval()
    loss_type = cfg.loss_type or (merged["arch"].get("loss") or {}).get("loss_type", DEFAULT_LOSS_TYPE)
    return model, loss_type


def _multiple(rows: int, ranks: int) -> int:
    return -(-rows // ranks) * ranks


def _make_evaluators(cfg: EvalConfig, metadata):
    names = cfg.evaluators if cfg.evaluators is not None else default_evaluator_names(cfg.data_paths[0], metadata)
    keep = cfg.render_limit if cfg.render else 0
    return [create_evaluator(spec, cfg.data_paths, metadata, keep_examples=keep, keep=cfg.render_select)
            for spec in names]  # fmt: skip


def _evaluate_checkpoint(cfg: EvalConfig, config: dict | None, output_dir: Path, runtime: Runtime):
    model, loss_type = _load_model(cfg, config, runtime)
    head = ACTLossHead(model, loss_type=loss_type)
    if cfg.global_batch_size is not None and cfg.global_batch_size % runtime.ranks:
        raise ValueError(f"global_batch_size {cfg.global_batch_size} is not a multiple of {runtime.ranks} processes")
    batch = cfg.global_batch_size or _multiple(DEFAULT_BATCH, runtime.ranks)
    dataset = PuzzleDataset(cfg.data_paths, "test", batch, rank=runtime.rank, world_size=runtime.ranks)
    if cfg.global_batch_size is None:  # padding rows cost as much as real ones: a small test split, a small batch
        largest = max(len(arrays.inputs) for arrays in dataset.sets.values())
        smaller = _multiple(1 << max(largest - 1, 0).bit_length(), runtime.ranks)
        if smaller < batch:
            dataset = PuzzleDataset(cfg.data_paths, "test", smaller, rank=runtime.rank, world_size=runtime.ranks)
    data, arch = dataset.metadata, model.config
    if arch.seq_len is not None and data.seq_len != arch.seq_len:
        raise ValueError(f"{cfg.data_paths}: sequence length {data.seq_len} differs from the model's {arch.seq_len}")
    if data.vocab_size != arch.vocab_size:
        raise ValueError(f"{cfg.data_paths}: a vocabulary of {data.vocab_size} tokens, the model's has "
                         f"{arch.vocab_size} (was it trained on this dataset?)")
    if data.num_puzzle_identifiers > arch.num_puzzle_identifiers:
        raise ValueError(
            f"{cfg.data_paths}: {data.num_puzzle_identifiers} puzzle identifiers, but the checkpoint's puzzle "
            f"embedding has {arch.num_puzzle_identifiers} rows (was it trained on this dataset?)"
        )
    evaluators = _make_evaluators(cfg, dataset.metadata)
    metrics = evaluate(
        head, dataset, runtime, evaluators, cfg.save_outputs, save_dir=output_dir, progress=cfg.progress,
        halt_threshold=cfg.halt_threshold if cfg.halt == "q" else None,
    )
    return metrics, evaluators


def _rescore(cfg: EvalConfig, output_dir: Path):
    metadata = merge_metadata(cfg.data_paths, [load_metadata(p, "test") for p in cfg.data_paths])
    evaluators = _make_evaluators(cfg, metadata)
    if not evaluators:
        raise ValueError(f"no evaluator for {cfg.data_paths[0]}; name one, e.g. evaluators=[ARC]")
    required = set().union(*(e.required_outputs for e in evaluators))
    rows = load_predictions(cfg.preds_files, required=required)
    for key, array in rows.items():
        if key in ("inputs", "labels", "preds") and array.shape[1:] != (metadata.seq_len,):
            raise ValueError(f"{', '.join(cfg.preds_files)}: {key} of shape {list(array.shape)}, but {cfg.data_paths} "
                             f"holds sequences of {metadata.seq_len} tokens")
    metrics = {}
    for evaluator in evaluators:
        evaluator.begin_eval()
        evaluator.update_batch(rows, rows)
        metrics.update(evaluator.result(output_dir))
    return metrics, evaluators


def _write_report(cfg: EvalConfig, output_dir: Path, evaluators, metrics: dict) -> Path:
    sections = []
    for evaluator in evaluators:
        if isinstance(evaluator, ARCEvaluator):
            rows = render.arc_rows(evaluator.test_puzzles, evaluator.submission, cfg.render_limit, cfg.render_select)
            sections.append(render.Section("ARC", rows))
        else:
            sections.append(render.Section(evaluator.name, render.board_rows(evaluator.name, evaluator.examples)))
    title = f"trm-eval · {cfg.checkpoint or ', '.join(cfg.preds_files)} · {', '.join(cfg.data_paths)}"
    what = {"first": "the first", "wrong": "the first wrong", "random": "a random sample of"}[cfg.render_select]
    return render.write_report(output_dir / "report", title, sections, metrics,
                               selection=f"Showing {what} {cfg.render_limit} (render_select, render_limit).")


def run(cfg: EvalConfig) -> dict:
    """Evaluate (or re-score), write metrics.json (and submission.json, the report) on rank 0; return the metrics."""
    runtime = Runtime.create(device=cfg.device, cpu_lanes=cfg.cpu_lanes, group=mx.distributed.init())
    output_dir = Path(cfg.output_dir) if cfg.output_dir else cfg.default_output_dir()
    if cfg.preds is not None:
        metrics, evaluators = _rescore(cfg, output_dir)
    else:
        config = _checkpoint_config(cfg)
        if not cfg.data_paths:
            cfg = _with_training_data(cfg, config)
            if runtime.rank == 0:
                print(f"data_paths: {cfg.data_paths} (from the checkpoint's config)", file=sys.stderr)
        metrics, evaluators = _evaluate_checkpoint(cfg, config, output_dir, runtime)
    if runtime.rank == 0:
        write_json_atomic(output_dir / "metrics.json", metrics)
        if cfg.render:
            report = _write_report(cfg, output_dir, evaluators, metrics)
            print(f"report: {report}", file=sys.stderr)
        _warn_of_earlier_outputs(cfg, output_dir, evaluators)
    return metrics


def _warn_of_earlier_outputs(cfg: EvalConfig, output_dir: Path, evaluators) -> None:
    """Outputs an earlier evaluation left in ``output_dir`` that this one did not rewrite would read as its own."""
    stale = [] if cfg.render or not (output_dir / "report").is_dir() else ["report/"]
    if not cfg.save_outputs and cfg.preds is None:  # re-scoring reads such files, perhaps these
        stale += sorted(path.name for path in output_dir.glob("all_preds.*.npz"))
    arc = any(isinstance(evaluator, ARCEvaluator) for evaluator in evaluators)
    if not arc and (output_dir / "submission.json").exists():
        stale.append("submission.json")
    if stale:
        print(f"trm-eval: warning: {output_dir} still holds {', '.join(stale)} of an earlier evaluation, not this "
              "one's", file=sys.stderr)


@hydra.main(config_path=hydra_config_path(), config_name="eval", version_base=None)
def _hydra_main(hydra_cfg: DictConfig) -> None:
    with one_line_errors("trm-eval"):
        cfg = EvalConfig.model_validate(OmegaConf.to_container(hydra_cfg, resolve=True))
        metrics = run(cfg)
    if mx.distributed.init().rank() == 0:
        print(json.dumps(metrics), flush=True)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
