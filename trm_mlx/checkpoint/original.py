"""The original checkpoint's naming, and the sizes its config leaves out (spec §1.5, §9)."""

import json
from pathlib import Path

COMPILED_PREFIX = "_orig_mod."
MODEL_PREFIX = "model."


def original_to_native_keys(arrays: dict, path) -> dict:
    """{original key: native key}; accepts keys with or without the `_orig_mod.` prefix."""
    mapping = {}
    for key in arrays:
        name = key[len(COMPILED_PREFIX) :] if key.startswith(COMPILED_PREFIX) else key
        if not name.startswith(MODEL_PREFIX + "inner."):
            raise ValueError(f"{path}: unexpected key {key!r}: not a TRM checkpoint (keys start with model.inner.)")
        mapping[key] = name[len(MODEL_PREFIX) :]
    return mapping


def native_to_original_keys(arrays: dict, compiled_prefix: bool = True) -> dict:
    prefix = (COMPILED_PREFIX if compiled_prefix else "") + MODEL_PREFIX
    return {prefix + key: value for key, value in arrays.items()}


def _dataset_seq_len(config: dict):
    for data_path in config.get("data_paths") or []:
        metadata = Path(data_path) / "train" / "dataset.json"
        if metadata.is_file():
            return json.loads(metadata.read_text())["seq_len"]
    return None


def arch_from_original(config: dict, weights: dict, path) -> dict:
    """The arch dict for `create_model`: the config's arch section plus sizes inferred from the weights.

    `config` is a training config (with `arch`) or an arch section itself. Sequence length comes from learned
    positions or mlp_t weights when they exist, else from a dataset under `data_paths`, else it stays unset
    (RoPE tables then follow each batch's length).
    """
    from ..model import architecture

    arch = dict(config["arch"] if "arch" in config else config)
    arch = {k: v for k, v in arch.items() if k not in ("loss", "batch_size", "causal")}
    arch.setdefault("vocab_size", int(weights["inner.embed_tokens.embedding_weight"].shape[0]))
    if "inner.puzzle_emb.weights" in weights:
        arch.setdefault("num_puzzle_identifiers", int(weights["inner.puzzle_emb.weights"].shape[0]))
    else:
        arch.setdefault("num_puzzle_identifiers", 1)
    if arch.get("seq_len") is None:
        model_class, partial = architecture({**arch, "seq_len": None})
        prefix = model_class.prefix_len(partial)
        if "inner.embed_pos.embedding_weight" in weights:
            arch["seq_len"] = int(weights["inner.embed_pos.embedding_weight"].shape[0]) - prefix
        elif "inner.L_level.layers.0.mlp_t.down_proj.weight" in weights:
            arch["seq_len"] = int(weights["inner.L_level.layers.0.mlp_t.down_proj.weight"].shape[0]) - prefix
        else:
            arch["seq_len"] = _dataset_seq_len(config)
    if arch.get("seq_len") is None:
        arch.pop("seq_len")
    return arch
