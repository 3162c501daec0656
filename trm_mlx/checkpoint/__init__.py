"""Checkpoints: the native format (safetensors) and the original PyTorch format, both ways.

Native format: one safetensors file (any name; training writes `step_N` with no extension, as the original)
whose tensors are named like the model's parameter tree (`inner.lm_head.weight`, ...: the original state-dict
keys without the `_orig_mod.model.` prefix) and whose metadata holds `format = "trm-mlx"` and `arch`, the arch
config as JSON (class locator `name` plus every field, injected sizes included). See docs/CHECKPOINTS.md.
"""

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import yaml
from mlx.utils import tree_flatten

from ..atomic import atomic_file
from . import torch_file
from .original import arch_from_original, native_to_original_keys, original_to_native_keys

FORMAT = "trm-mlx"
MODEL_FILE = "model.safetensors"  # the checkpoint file of a model folder (weights beside their all_config.yaml)
CONFIG_FILE = "all_config.yaml"  # a run's resolved config, beside its checkpoints


def model_arrays(model) -> dict:
    return dict(tree_flatten(model.parameters()))


def save_native(path, model) -> Path:
    """Write the model's weights and arch config; the file appears complete or not at all."""
    path = Path(path)
    metadata = {"format": FORMAT, "arch": json.dumps(model.arch_config())}
    with atomic_file(path, suffix=".safetensors") as tmp:  # MLX adds .safetensors to a name without it
        mx.save_safetensors(str(tmp), model_arrays(model), metadata=metadata)
    return path


def is_torch_file(path) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def read_weights(path) -> tuple[dict, dict | None]:
    """({native key: mx.array}, arch config or None) from a native or an original checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if is_torch_file(path):
        arrays, dtypes = torch_file.load_with_dtypes(path)
        weights = {}
        for key, value in original_to_native_keys(arrays, path).items():
            dtype = mx.bfloat16 if dtypes[key] == "bfloat16" else None
            weights[value] = mx.array(arrays[key], dtype=dtype)
        return weights, None
    try:
        weights, metadata = mx.load(str(path), format="safetensors", return_metadata=True)
    except Exception as e:  # MLX raises a plain RuntimeError/ValueError for a malformed file
        raise ValueError(f"{path}: neither a torch checkpoint nor a safetensors file ({e})") from e
    if metadata.get("format") != FORMAT or "arch" not in metadata:
        raise ValueError(f"{path}: safetensors file without trm-mlx metadata (format/arch)")
    return weights, json.loads(metadata["arch"])


def resize_puzzle_table(table: mx.array, num_rows: int) -> mx.array:
    """The original's rule for a puzzle table of another size: every row becomes the mean of the old rows."""
    return mx.broadcast_to(table.mean(axis=0, keepdims=True), (num_rows, table.shape[1]))


def load_weights_into(model, weights: dict, path, resize_puzzle_embedding: bool = False) -> None:
    """Strictly load `weights` into `model`, casting to the model's dtypes; clear errors name the file and key."""
    expected = model_arrays(model)
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the model: missing {missing}, unexpected {unexpected}")
    loaded = []
    for key, ref in expected.items():
        value = weights[key]
        if value.shape != ref.shape:
            if resize_puzzle_embedding and key == "inner.puzzle_emb.weights" and value.shape[1] == ref.shape[1]:
                value = resize_puzzle_table(value, ref.shape[0])
            else:
                raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, the model expects {tuple(ref.shape)}")
        loaded.append((key, value.astype(ref.dtype)))
    model.load_weights(loaded)
    mx.eval(model.parameters())


def read_yaml(path):
    """A YAML file's content; a syntax error is a ValueError naming the file."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None


def read_config_file(path) -> dict:
    """A training config file (`all_config.yaml`, or one a user names): a mapping with an `arch` section."""
    config = read_yaml(path)
    if not isinstance(config, dict) or not isinstance(config.get("arch"), dict):
        raise ValueError(f"{path}: expected a mapping with an 'arch' section")
    return config


def read_all_config(path) -> dict | None:
    """The `all_config.yaml` the original (and our trainer) writes beside checkpoints, if there is one."""
    config_file = Path(path).parent / CONFIG_FILE
    return read_config_file(config_file) if config_file.is_file() else None


def model_file(path) -> Path:
    """The checkpoint file of a model folder (its `model.safetensors`); any other path as it is."""
    path = Path(path)
    return path / MODEL_FILE if (path / MODEL_FILE).is_file() else path


def read_model_source(path, ema: bool | None = None) -> tuple[Path, dict, dict | None, dict | None]:
    """(what was read, weights, their arch config or None, the run's config where the arch config is missing or
    comes from a training state) of a checkpoint file, a model folder (its `model.safetensors`), a trm-train run
    folder (its newest training state) or a `train_state_step_N` folder: there, the weights its `step_N` holds (the
    EMA weights with the live puzzle table where the run keeps an EMA), also where a run stopped between
    checkpoints. `ema` chooses a training state's weights as `read_state_weights` does (True: the EMA or an error,
    False: the live ones); a file holds one set."""
    path = model_file(path)
    if path.is_dir():
        from ..training.checkpointing import read_state_weights  # training imports this module

        state_dir, weights, meta = read_state_weights(path, ema=ema)
        return state_dir, weights, meta.get("arch"), meta["config"]
    if ema:
        raise ValueError(
            f"{path}: ema=true needs a trm-train training-state folder (train_state_step_N); the step_N file of "
            "a run with ema=True already holds the EMA weights"
        )
    weights, arch = read_weights(path)
    return path, weights, arch, read_all_config(path) if arch is None else None


def load(path, config: dict | None = None, forward_dtype: str | None = None, runtime=None):
    """A ready model (eval mode) from a native or original checkpoint file, a model folder, a trm-train run folder
    or one of its training states (`read_model_source`).

    `config` is a full training config (with `arch`, optionally `data_paths`) or an arch dict; without it, the
    config stored in a native file or training state, or `all_config.yaml` beside the checkpoint, is used. Sizes
    the original's config lacks (vocab, puzzle identifiers, sequence length) are inferred from the weights and
    datasets. The model runs as `runtime` (a `trm_mlx.runtime.Runtime`) says; by default `Runtime.create()`'s, on
    MLX's default device.
    """
    from ..model import create_model
    from ..runtime import Runtime

    path, weights, arch, own_config = read_model_source(path)
    if config is None and arch is None:
        config = own_config
        if config is None:
            raise ValueError(f"{path}: no config: pass one, or put the run's all_config.yaml beside the checkpoint")
    if config is not None:
        arch = arch_from_original(config, weights, path)
    if forward_dtype is not None:
        arch = {**arch, "forward_dtype": forward_dtype}
    model = create_model(arch, (runtime or Runtime.create()).execution)
    load_weights_into(model, weights, path)
    model.eval()
    return model


def save_original(path, model, compiled_prefix: bool = True) -> Path:
    """Write an original-format PyTorch checkpoint (needs torch); key order and dtypes as the original's."""
    try:
        import torch
    except ImportError as e:
        raise ImportError("writing PyTorch checkpoints needs torch: pip install 'trm-mlx[legacy]'") from e
    from collections import OrderedDict

    state = OrderedDict()
    for key, value in native_to_original_keys(model_arrays(model), compiled_prefix).items():
        if value.dtype == mx.bfloat16:
            bits = np.array(value.view(mx.uint16)).astype(np.int16)
            state[key] = torch.from_numpy(bits).view(torch.bfloat16)
        else:
            state[key] = torch.from_numpy(np.array(value))
    path = Path(path)
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
    return path
