"""What a run writes under ``checkpoint_path``: model checkpoints ``step_N`` (native format, loadable by
``trm_mlx.load`` and ``load_checkpoint=``), ``all_config.yaml``, and the full training state that
``resume=PATH`` continues from exactly.

The training state is a folder ``train_state_step_N`` holding ``arrays.safetensors`` (model incl. puzzle table,
optimizer moments and step counts, EMA, the ACT carry of the whole global batch, RNG key) and ``state.json`` (step
counters, sampler position, a fingerprint of the training data, the model's arch config, the run's config). It is
written to a temporary folder and renamed into place; older training states are then removed. Rank 0 writes it; a
run resumes from it on any number of ranks.
"""

import json
import os
import shutil
from pathlib import Path

import mlx.core as mx
import yaml
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from trm_mlx.atomic import atomic_folder, write_atomically
from trm_mlx.checkpoint import CONFIG_FILE, MODEL_FILE, load_weights_into, model_arrays, read_all_config, save_native
from trm_mlx.checkpoint.original import arch_from_original
from trm_mlx.model import create_model
from trm_mlx.training.config import PretrainConfig
from trm_mlx.training.distributed import all_gather, rank_rows
from trm_mlx.training.state import TrainState

STATE_FORMAT = "trm-mlx-train-state"
STATE_VERSION = 1
STATE_PREFIX = "train_state_step_"
ARRAYS_FILE = "arrays.safetensors"
STATE_FILE = "state.json"
# What an evaluation reads from the all_config.yaml beside a model file; runs that agree on these may share one.
EVALUATION_KEYS = ("arch", "data_paths", "data_paths_test", "evaluators")


def model_checkpoint_path(config: PretrainConfig, step: int) -> Path:
    return Path(config.checkpoint_path) / f"step_{step}"


def save_model_checkpoint(config: PretrainConfig, model, step: int) -> Path:
    return save_native(model_checkpoint_path(config, step), model)


def write_all_config(config: PretrainConfig) -> Path:
    """``all_config.yaml``: the resolved run config, as the original writes it (``trm_mlx.load`` reads it)."""
    return _write_config(Path(config.checkpoint_path) / CONFIG_FILE, config.model_dump())


def _write_config(path: Path, config: dict) -> Path:
    return write_atomically(path, yaml.safe_dump(config, sort_keys=False))


def _prefixed(prefix: str, arrays: dict) -> dict:
    return {f"{prefix}.{key}": value for key, value in arrays.items()}


def _section(arrays: dict, prefix: str) -> dict:
    start = len(prefix) + 1
    return {key[start:]: value for key, value in arrays.items() if key.startswith(prefix + ".")}


def save_train_state(config: PretrainConfig, state: TrainState, dataset, carry: dict | None) -> Path:
    """Write ``train_state_step_<step>`` under ``checkpoint_path`` and remove the older ones.

    ``dataset`` is the train split: its sampler position, and its fingerprint, which resuming checks.

    ``carry`` is the carry of the whole global batch (all ranks' rows, see :func:`global_carry`), so that a run
    resumes on any number of ranks.
    """
    root = Path(config.checkpoint_path)
    root.mkdir(parents=True, exist_ok=True)
    arrays = _prefixed("model", model_arrays(state.model))
    if state.optimizer is not None:
        arrays.update(_prefixed("optimizer", dict(tree_flatten(state.optimizer.state))))
    if state.ema is not None:
        arrays.update(_prefixed("ema", state.ema))
    if carry is not None:
        arrays.update(_prefixed("carry", dict(tree_flatten(carry))))
    arrays["rng"] = mx.random.state[0]
    meta = {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "step": state.step,
        "total_steps": state.total_steps,
        "next_iter": state.next_iter,
        "arch": state.model.arch_config(),
        "dataset": dataset.state_dict(),
        "dataset_fingerprint": dataset.fingerprint,
        "config": config.model_dump(),
    }

    target = root / f"{STATE_PREFIX}{state.step}"
    with atomic_folder(target) as tmp:
        mx.save_safetensors(str(tmp / ARRAYS_FILE), arrays)
        (tmp / STATE_FILE).write_text(json.dumps(meta, indent=1))
    for old in root.glob(f"{STATE_PREFIX}*"):
        if old != target and old.is_dir():
            shutil.rmtree(old)
    return target


def find_train_state(path: str | Path) -> Path:
    """``path`` itself when it is a training-state folder, else the newest ``train_state_step_N`` inside it."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    candidates = [p for p in path.glob(f"{STATE_PREFIX}*") if (p / STATE_FILE).is_file()] if path.is_dir() else []
    if not candidates:
        steps = sorted(int(p.name[5:]) for p in path.glob("step_*") if p.name[5:].isdigit()) if path.is_dir() else []
        models = [f"step_{step}" for step in steps]
        hint = f"; its model checkpoints ({', '.join(models[-3:])}) are files to name" if models else ""
        raise FileNotFoundError(f"{path}: no training state (a {STATE_PREFIX}N folder with {STATE_FILE}){hint}")
    return max(candidates, key=lambda p: int(p.name[len(STATE_PREFIX):]))


def read_train_state_meta(path: Path) -> dict:
    meta_file = path / STATE_FILE
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta_file}: not valid JSON ({e})") from None
    if meta.get("format") != STATE_FORMAT or meta.get("version") != STATE_VERSION:
        raise ValueError(f"{meta_file}: not a {STATE_FORMAT} v{STATE_VERSION} file")
    return meta


def read_state_arrays(file: Path) -> dict:
    """The arrays of a training state; MLX reports a truncated or damaged file as a RuntimeError."""
    try:
        return mx.load(str(file))
    except RuntimeError as e:
        raise ValueError(f"{file}: unreadable ({e})") from e


def global_carry(state: TrainState, group: mx.distributed.Group) -> dict | None:
    """The carry of the whole global batch: every rank's rows in rank order (collective: every rank calls it).

    Evaluated here on every rank: a rank that dropped its gather unevaluated would leave the others' gathers to be
    matched with its next collective.
    """
    if state.carry is None or group.size() == 1:
        return state.carry
    carry = tree_map(lambda value: all_gather(value, group), state.carry)
    mx.eval(carry)
    return carry


def read_state_weights(source: str | Path, ema: bool | None = None) -> tuple[Path, dict, dict]:
    """(folder, model weights, ``state.json``) of the newest training state under ``source``. ``ema=True`` takes
    the EMA weights with the live puzzle table (what the trainer's ``step_N`` holds; an error where the run kept no
    EMA), ``False`` the live weights, ``None`` the EMA weights where there are some."""
    state_dir = find_train_state(source)
    meta = read_train_state_meta(state_dir)
    arrays = read_state_arrays(state_dir / ARRAYS_FILE)
    weights = _section(arrays, "model")
    averaged = {name.removeprefix("model."): value for name, value in _section(arrays, "ema").items()}
    if ema and not averaged:
        raise ValueError(f"{state_dir}: no EMA weights in this training state (the run had ema=False)")
    if ema is not False:
        weights.update(averaged)
    return state_dir, weights, meta


def export_model(source: str | Path, path: str | Path) -> Path:
    """The model of the newest training state under ``source`` as a native checkpoint at ``path`` (in a folder, an
    existing one or a name ending in ``/``: its ``model.safetensors``), with the run's ``all_config.yaml`` beside it for
    the data and evaluators that trm-eval takes from there: the EMA weights where the run keeps an EMA (as the trainer's
    ``step_N``), else the live weights. An ``all_config.yaml`` already there stays; one of a run with another model,
    data or evaluators is refused before anything is written, as is a run's checkpoint folder (there a
    ``model.safetensors`` would stand for the folder, hiding its training states)."""
    state_dir, weights, meta = read_state_weights(source)
    into_folder = str(path).endswith(("/", os.sep)) or Path(path).is_dir()
    path = Path(path)
    if into_folder:
        if any(path.glob(f"{STATE_PREFIX}*")):  # trm_mlx.load would take the folder's model.safetensors instead
            raise ValueError(f"{path}: a run's checkpoint folder (it holds training states); name a file, or a "
                             "folder of its own for a model folder")
        path = path / MODEL_FILE
    config = meta["config"]
    present = read_all_config(path)
    if present is not None:
        differing = [key for key in EVALUATION_KEYS if present.get(key) != config.get(key)]
        if differing:
            raise ValueError(f"{path.parent / CONFIG_FILE}: the config of a run with other {', '.join(differing)} "
                             f"than {state_dir}'s; export into a folder of its own")
    arch = meta.get("arch") or arch_from_original(config, weights, state_dir)
    model = create_model(arch)
    load_weights_into(model, weights, state_dir / ARRAYS_FILE)
    save_native(path, model)
    if present is None:
        _write_config(path.parent / CONFIG_FILE, config)
    return path


def load_train_state(path: Path, state: TrainState, dataset, group: mx.distributed.Group | None = None) -> None:
    """Restore ``state`` (built from the same config) and the dataset's sampler position from ``path``.

    Every rank reads the folder and takes its own rows of the saved global-batch carry.
    """
    meta = read_train_state_meta(path)
    saved_fingerprint = meta.get("dataset_fingerprint")
    if saved_fingerprint is not None and saved_fingerprint != dataset.fingerprint:
        raise ValueError(f"{path}: the training data at {', '.join(dataset.paths)} is not the data this run trained "
                         "on (rebuilt with another seed or options?); rebuild it with the run's builder command")
    arrays = read_state_arrays(path / ARRAYS_FILE)
    load_weights_into(state.model, _section(arrays, "model"), path / ARRAYS_FILE)

    optimizer_arrays = _section(arrays, "optimizer")
    if (state.optimizer is None) != (not optimizer_arrays):
        raise ValueError(f"{path}: saved with{'out' if not optimizer_arrays else ''} a weight optimizer, "
                         "which this config does not match (freeze_weights?)")
    if state.optimizer is not None:
        state.optimizer.state = tree_unflatten(list(optimizer_arrays.items()))

    ema = _section(arrays, "ema")
    if (state.ema is None) != (not ema):
        raise ValueError(f"{path}: ema={bool(ema)} in the saved run, ema={state.ema is not None} now")
    if state.ema is not None:
        if set(ema) != set(state.ema):
            raise ValueError(f"{path}: the saved EMA does not match the model's parameters")
        state.ema = ema

    carry = _section(arrays, "carry")
    state.carry = tree_unflatten(list(carry.items())) if carry else None
    if state.carry is not None:
        rank, world_size = (group.rank(), group.size()) if group is not None else (0, 1)
        try:
            state.carry = rank_rows(state.carry, rank, world_size, dataset.global_batch_size)
        except ValueError as e:
            batch = dataset.global_batch_size
            raise ValueError(f"{path}: the saved carry does not fit global_batch_size={batch}: {e}") from None
    high, low = (int(v) for v in arrays["rng"].tolist())
    mx.random.seed((high << 32) | low)  # sets the global key to exactly [high, low]

    state.step = meta["step"]  # total_steps stays the current config's: resuming with more epochs extends the run
    state.next_iter = meta["next_iter"]
    dataset.load_state_dict(meta["dataset"])
