"""trm-train answers a user's mistake with one line naming it and a non-zero exit, not a traceback (the traceback
is one environment variable away); bad data and a diverged loss stop the run instead of training on."""

import json
import shutil
import sys
import zipfile

import mlx.core as mx
import numpy as np
import pytest

import trm_mlx.training.cli as cli
from tiny_runs import TINY_RUN, train_tiny
from trm_mlx.checkpoint import read_weights
from trm_mlx.evaluation.cli import EvalConfig
from trm_mlx.evaluation.cli import run as run_eval
from trm_mlx.training.checkpointing import ARRAYS_FILE, export_model
from trm_mlx.training.config import compose, from_hydra
from trm_mlx.user_errors import FULL_ERROR


def _run(monkeypatch, *args: str) -> str:
    """trm-train's last line of output when it stops on an error (SystemExit carries it)."""
    monkeypatch.setattr(sys, "argv", ["trm-train", *TINY_RUN, "device=cpu", "max_steps=1", *args])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    message = str(stopped.value.code)
    assert message.startswith("trm-train: ") and "\n" not in message and "Traceback" not in message
    return message


def _broken_copy(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    return data


def test_missing_data_path(monkeypatch, tmp_path):
    message = _run(monkeypatch, f"data_paths=[{tmp_path / 'nowhere'}]")
    assert "nowhere/train/dataset.json: not found" in message and "`trm-build-data` builds one" in message


@pytest.mark.parametrize("damage, expected", [
    ("not json", "dataset.json: not valid JSON"),
    ("missing key", "dataset.json: invalid dataset metadata (vocab_size: Field required)"),
])  # fmt: skip
def test_invalid_dataset_json(damage, expected, monkeypatch, tiny_data, tmp_path):
    data = _broken_copy(tiny_data, tmp_path)
    metadata = data / "train" / "dataset.json"
    if damage == "not json":
        metadata.write_text("{")
    else:
        values = json.loads(metadata.read_text())
        del values["vocab_size"]
        metadata.write_text(json.dumps(values))
    assert expected in _run(monkeypatch, f"data_paths=[{data}]")


def test_npy_of_the_wrong_shape(monkeypatch, tiny_data, tmp_path):
    data = _broken_copy(tiny_data, tmp_path)
    inputs = data / "train" / "all__inputs.npy"
    np.save(inputs, np.load(inputs)[:, :-1])
    assert "all__inputs.npy: expected shape [N, seq_len=6]" in _run(monkeypatch, f"data_paths=[{data}]")


def test_bad_config_value(monkeypatch, tiny_data):
    assert "lr: Input should be a valid number" in _run(monkeypatch, f"data_paths=[{tiny_data}]", "lr=abc")
    message = _run(monkeypatch, f"data_paths=[{tiny_data}]", "arch.L_cycles=abc")
    assert message.startswith("trm-train: arch.L_cycles: Input should be a valid integer"), message


@pytest.mark.parametrize("override, expected", [
    ("epochs=-5", "epochs: Input should be greater than or equal to 1"),
    ("eval_interval=0", "eval_interval: Input should be greater than or equal to 1"),
    ("max_steps=0", "max_steps: Input should be greater than or equal to 1"),
    ("lr_warmup_steps=-3", "lr_warmup_steps: Input should be greater than or equal to 0"),
    ("ema_rate=2", "ema_rate: Input should be less than or equal to 1"),
    ("beta2=1", "beta2: Input should be less than 1"),
    ("arch.num_heads=0", "arch.num_heads: Input should be greater than or equal to 1"),
    ("arch.H_cycles=0", "arch.H_cycles: Input should be greater than or equal to 1"),
    ("arch.halt_max_steps=0", "arch.halt_max_steps: Input should be greater than or equal to 1"),
    ("arch.halt_exploration_prob=2", "arch.halt_exploration_prob: Input should be less than or equal to 1"),
    ("arch.expansion=0", "arch.expansion: Input should be greater than 0"),
])
def test_a_value_out_of_range_stops_before_anything_is_written(override, expected, monkeypatch, tiny_data, tmp_path):
    out = tmp_path / "run"
    message = _run(monkeypatch, f"data_paths=[{tiny_data}]", f"+checkpoint_path={out}", override)
    assert message == f"trm-train: {expected}" and not out.exists()


def test_an_unused_key_is_a_warning_line(monkeypatch, tiny_data, tmp_path, capsys):
    _run(monkeypatch, f"data_paths=[{tmp_path / 'nowhere'}]", "+arch.hiden_size=3")
    warning = "trm-train: warning: config keys not used by trm-train (ignored): arch.hiden_size\n"
    assert warning in capsys.readouterr().err


def test_truncated_checkpoint(monkeypatch, tiny_data, tmp_path):
    train_tiny(tiny_data, tmp_path / "run", "max_steps=8")
    checkpoint = tmp_path / "step_8"
    checkpoint.write_bytes((tmp_path / "run" / "step_8").read_bytes()[:5000])
    message = _run(monkeypatch, f"data_paths=[{tiny_data}]", f"+load_checkpoint={checkpoint}")
    assert f"{checkpoint}: neither a torch checkpoint nor a safetensors file" in message


def test_resume_from_an_empty_folder(monkeypatch, tiny_data, tmp_path):
    message = _run(monkeypatch, f"data_paths=[{tiny_data}]", f"resume={tmp_path}")
    assert f"{tmp_path}: no training state" in message
    for name in ("step_4", "step_8", "step_12", "step_12_all_preds.0"):  # the original's run folder: no state
        (tmp_path / name).write_bytes(b"")
    message = _run(monkeypatch, f"data_paths=[{tiny_data}]", f"resume={tmp_path}")
    assert message.endswith("; its model checkpoints (step_4, step_8, step_12) are files to name"), message
    message = _run(monkeypatch, f"data_paths=[{tiny_data}]", f"+load_checkpoint={tmp_path}")  # the same answer
    assert message.endswith("; its model checkpoints (step_4, step_8, step_12) are files to name"), message


def test_cpu_lanes_that_do_not_divide_the_batch(monkeypatch, tiny_data):
    assert "cpu_lanes=3 must divide global_batch_size=4" in _run(monkeypatch, f"data_paths=[{tiny_data}]", "cpu_lanes=3")


def test_the_traceback_on_request(monkeypatch, tiny_data, capsys):
    monkeypatch.setenv(FULL_ERROR, "1")
    monkeypatch.setattr(sys, "argv", ["trm-train", f"data_paths=[{tiny_data}]", *TINY_RUN, "device=cpu", "cpu_lanes=3"])
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 1  # Hydra's own report of the exception, traceback included
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: cpu_lanes=3 must divide global_batch_size=4" in err


@pytest.mark.parametrize("damage, expected", [
    ("token", "all__inputs.npy: row 3, position 2: token id 7 outside [0, vocab_size=5)"),
    ("label", "all__labels.npy: row 0, position 0: token id 9 outside [0, vocab_size=5)"),
    ("float", "all__inputs.npy: token ids must be integers, got float32"),
])  # fmt: skip
def test_bad_token_ids_stop_before_training(damage, expected, monkeypatch, tiny_data, tmp_path):
    data = _broken_copy(tiny_data, tmp_path)
    field = "labels" if damage == "label" else "inputs"
    path = data / "train" / f"all__{field}.npy"
    array = np.load(path)
    if damage == "float":
        array = array.astype(np.float32)
    elif damage == "token":
        array[3, 2] = 7
    else:
        array[0, 0] = 9
    np.save(path, array)
    assert expected in _run(monkeypatch, f"data_paths=[{data}]")


def test_a_batch_larger_than_the_data_stops(monkeypatch, tiny_data):
    message = _run(monkeypatch, f"data_paths=[{tiny_data}]", "global_batch_size=1000", "epochs=2", "eval_interval=1")
    assert "global_batch_size=1000 is more than one iteration of the training data holds" in message


def test_a_nan_loss_stops_and_saves_nothing(monkeypatch, tiny_data, tmp_path):
    train_tiny(tiny_data, tmp_path / "good", "max_steps=8")
    weights, _ = read_weights(tmp_path / "good" / "step_8")
    weights["inner.lm_head.weight"] = weights["inner.lm_head.weight"] * float("nan")
    nan = tmp_path / "nan.safetensors"
    mx.save_safetensors(str(nan), weights, metadata=_native_metadata(tmp_path / "good" / "step_8"))
    run = [f"data_paths=[{tiny_data}]", f"+load_checkpoint={nan}", f"+checkpoint_path={tmp_path / 'r'}"]
    message = _run(monkeypatch, *run, "max_steps=3")
    assert "step 1: train/lm_loss = nan" in message and "training stopped" in message
    assert not list((tmp_path / "r").glob("train_state_step_*"))
    monkeypatch.setattr(sys, "argv", ["trm-train", *TINY_RUN, "device=cpu", "max_steps=3", *run, "on_nan_loss=continue"])
    cli.main()
    assert (tmp_path / "r" / "train_state_step_3").is_dir()


def test_a_misspelt_arch_key_is_named(tiny_data):
    with pytest.warns(UserWarning, match="config keys not used by trm-train \\(ignored\\): arch.hiden_size"):
        from_hydra(compose([f"data_paths=[{tiny_data}]", "+arch.hiden_size=3"]))


def _native_metadata(path) -> dict:
    return mx.load(str(path), format="safetensors", return_metadata=True)[1]


def _damaged_torch_file(tmp_path, damage: str):
    """A small original-format checkpoint (torch.save of a state dict) with one kind of damage."""
    import torch

    good = tmp_path / "good"
    torch.save({"model.inner.x": torch.arange(4.0)}, good)
    bad = tmp_path / "bad"
    if damage == "flipped byte":
        data = bytearray(good.read_bytes())
        data[data.find(np.arange(4, dtype=np.float32).tobytes()) + 5] ^= 0xFF
        bad.write_bytes(bytes(data))
        return bad
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bad, "w") as target:
        for name in source.namelist():
            if name.endswith("/data.pkl") and damage == "not a pickle":
                target.writestr(name, b"not a pickle")
            elif not (name.endswith("/data/0") and damage == "missing storage"):
                target.writestr(name, source.read(name))
    return bad


@pytest.mark.parametrize("damage, cause", [
    ("flipped byte", "Bad CRC-32"),
    ("missing storage", "There is no item named"),
    ("not a pickle", "invalid load key"),
])  # fmt: skip
def test_corrupt_original_checkpoint(damage, cause, monkeypatch, tiny_data, tmp_path):
    bad = _damaged_torch_file(tmp_path, damage)
    message = _run(monkeypatch, f"data_paths=[{tiny_data}]", f"+load_checkpoint={bad}")
    assert f"{bad}: corrupt or unsupported torch checkpoint (" in message and cause in message


def test_truncated_training_state(monkeypatch, tiny_data, tmp_path):
    train_tiny(tiny_data, tmp_path, "max_steps=8")
    arrays = tmp_path / "train_state_step_8" / ARRAYS_FILE
    arrays.write_bytes(arrays.read_bytes()[:-100])  # header whole, data cut short
    expected = f"{arrays}: unreadable ([load_safetensors] "
    assert expected in _run(monkeypatch, f"data_paths=[{tiny_data}]", f"resume={tmp_path}")
    with pytest.raises(ValueError, match="invalid data offsets"):
        export_model(tmp_path, tmp_path / "model.safetensors")


def test_convert_checkpoint_answers_in_one_line(tmp_path):
    from scripts.convert_checkpoint import main as convert

    (tmp_path / "bad.yaml").write_text("arch: [1, 2\n")
    checkpoint = tmp_path / "run" / "step_1"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"")
    shutil.copy(tmp_path / "bad.yaml", tmp_path / "run" / "all_config.yaml")
    for args, expected in [
        ([str(tmp_path / "nowhere"), "out"], f"convert_checkpoint: {tmp_path / 'nowhere'}: no such checkpoint file"),
        ([str(tmp_path / "nowhere"), "out", "--config", str(tmp_path / "bad.yaml")], "bad.yaml: not valid YAML"),
    ]:
        with pytest.raises(SystemExit) as stopped:
            convert([*args, "--to", "native"])
        message = str(stopped.value.code)
        assert expected in message and "\n" not in message
    with pytest.raises(ValueError, match="all_config.yaml: not valid YAML"):  # the run's config beside it
        run_eval(EvalConfig(checkpoint=str(checkpoint)))
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):  # a config the user names
        run_eval(EvalConfig(checkpoint=str(checkpoint), config=str(tmp_path / "bad.yaml")))
