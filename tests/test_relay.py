"""trm-relay: a run stopped on one machine, packed into checksummed parts, joined on another and resumed trains on
exactly as if it had not stopped (with the carry), or restarts the rows in flight (without it); bad parts are
refused before anything is written. Also ``max_minutes`` and ``metrics.jsonl``, which relays rely on, and the model
of a training state (``trm-relay export``, ``trm_mlx.load``)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tiny_runs import TINY_RUN, saved_state, train_tiny
from trm_mlx.training.logging import METRICS_FILE, MetricsFile
from trm_mlx.checkpoint import load, read_weights
from trm_mlx.evaluation.cli import EvalConfig, run
from trm_mlx.training.relay import MANIFEST, RelayError, main, pack, parse_size, unpack

PART = 4096  # bytes: a tiny state still makes many parts


def _stop_and_relay(data, tmp_path, stop: int, end: int, carry: bool):
    """``stop`` steps on "machine A", packed; joined on "machine B" and resumed to step ``end``."""
    train_tiny(data, tmp_path / "a", f"max_steps={stop}")
    manifest = pack(tmp_path / "a", tmp_path / "parts", part_size=PART, carry=carry)
    state_dir = unpack(tmp_path / "parts", tmp_path / "b")
    assert state_dir == tmp_path / "b" / f"train_state_step_{stop}"
    return manifest, train_tiny(data, tmp_path / "b", f"max_steps={end}", f"resume={tmp_path / 'b'}")


def _timeless(path):
    """metrics.jsonl without the fields that measure time."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("wall_s", "steps_per_s", "examples_per_second")} for r in records
            if r["kind"] != "resume"]


@pytest.mark.parametrize("stop, end", [(5, 11), (8, 16)], ids=["mid_iteration", "at_an_evaluation"])
def test_relayed_run_with_the_carry_equals_the_run_straight_through(stop, end, tiny_data, tmp_path):
    """Iterations of 8 steps, each ending in an evaluation and a checkpoint; a stop on an iteration's last step
    still evaluates there, and the resumed run starts the next iteration."""
    straight = train_tiny(tiny_data, tmp_path / "straight", f"max_steps={end}")
    manifest, relayed = _stop_and_relay(tiny_data, tmp_path, stop, end, carry=True)

    assert manifest["carry"] and len(manifest["parts"]) == -(-manifest["size"] // PART) > 2
    assert all(part["size"] <= PART for part in manifest["parts"])
    assert relayed["step"] == straight["step"] == end
    expected, expected_meta = saved_state(tmp_path / "straight")
    actual, actual_meta = saved_state(tmp_path / "b")
    assert set(actual) == set(expected) and any(key.startswith("carry.") for key in expected)
    for key, value in expected.items():
        assert value.dtype == actual[key].dtype and np.array_equal(np.array(value), np.array(actual[key])), key
    assert expected_meta.split('"config"')[0] == actual_meta.split('"config"')[0]
    assert relayed["train"] == straight["train"]
    # Both evaluated at step 8 with the same result, and the relayed log reads as one run, marked where it resumed.
    records = [json.loads(line) for line in (tmp_path / "b" / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "resume"] == [stop]
    assert _timeless(tmp_path / "b" / METRICS_FILE) == _timeless(tmp_path / "straight" / METRICS_FILE)
    checkpoint = f"step_{end // 8 * 8}"  # the last evaluation's EMA weights, written after the relay
    assert (tmp_path / "b" / checkpoint).read_bytes() == (tmp_path / "straight" / checkpoint).read_bytes()


def test_relayed_run_without_the_carry_restarts_the_rows_in_flight(tiny_data, tmp_path):
    train_tiny(tiny_data, tmp_path / "straight", "max_steps=6")
    train_tiny(tiny_data, tmp_path / "a", "max_steps=5")
    pack(tmp_path / "a", tmp_path / "parts", part_size=PART, carry=False)
    unpack(tmp_path / "parts", tmp_path / "b")
    packed, _ = saved_state(tmp_path / "b")
    assert packed and not any(key.startswith("carry.") for key in packed)
    with_carry, _ = saved_state(tmp_path / "a")
    for key, value in packed.items():  # everything but the carry travels unchanged
        assert np.array_equal(np.array(value), np.array(with_carry[key])), key

    train_tiny(tiny_data, tmp_path / "b", "max_steps=6", f"resume={tmp_path / 'b'}")
    straight, straight_meta = saved_state(tmp_path / "straight")
    relayed, relayed_meta = saved_state(tmp_path / "b")
    # The documented difference: every row of the first batch after the relay starts afresh (ACT step 1), where
    # the straight run continues the rows it had in flight; the sampler position and step counters still agree.
    assert np.all(np.array(relayed["carry.steps"]) == 1)
    assert not np.all(np.array(straight["carry.steps"]) == 1)
    assert not np.array_equal(np.array(relayed["model.inner.lm_head.weight"]),
                              np.array(straight["model.inner.lm_head.weight"]))
    assert json.loads(relayed_meta)["dataset"] == json.loads(straight_meta)["dataset"]


def test_unpack_refuses_damaged_or_missing_parts_and_writes_nothing(tiny_data, tmp_path):
    train_tiny(tiny_data, tmp_path / "a", "max_steps=2")
    manifest = pack(tmp_path / "a", tmp_path / "parts", part_size=PART)
    parts = [tmp_path / "parts" / part["name"] for part in manifest["parts"]]

    damaged = bytearray(parts[1].read_bytes())
    damaged[100] ^= 1
    parts[1].write_bytes(bytes(damaged))
    with pytest.raises(RelayError, match="part-001 checksum differs"):
        unpack(tmp_path / "parts", tmp_path / "b")
    parts[2].unlink()
    parts[3].write_bytes(parts[3].read_bytes()[:-1])
    with pytest.raises(RelayError, match="part-002 missing; part-003 has"):
        unpack(tmp_path / "parts", tmp_path / "b")
    assert not (tmp_path / "b").exists()  # nothing written

    (tmp_path / "parts" / MANIFEST).write_text("{")
    with pytest.raises(SystemExit, match="trm-relay: .*relay.json: not valid JSON"):
        main(["unpack", str(tmp_path / "parts"), str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="trm-relay: .*no training state"):
        main(["pack", str(tmp_path / "parts"), str(tmp_path / "out")])


def test_resume_refuses_training_data_other_than_the_runs(tiny_data, tmp_path):
    """A relay rebuilds the data on each machine: a rebuild that differs (another seed) must not train on silently."""
    train_tiny(tiny_data, tmp_path / "a", "max_steps=2")
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    inputs_file = other / "train" / "all__inputs.npy"
    inputs = np.load(inputs_file)
    inputs[0, 0] = inputs[0, 0] % 4 + 1  # another valid token
    np.save(inputs_file, inputs)
    with pytest.raises(ValueError, match="is not the data this run trained on"):
        train_tiny(other, tmp_path / "a", "max_steps=4", f"resume={tmp_path / 'a'}")
    assert train_tiny(tiny_data, tmp_path / "a", "max_steps=4", f"resume={tmp_path / 'a'}")["step"] == 4


def test_export_writes_the_checkpoint_the_trainer_writes(tiny_data, tmp_path):
    """At an evaluation the trainer writes step_N (EMA weights, live puzzle table) and the training state: the
    model exported from the state is that checkpoint; older states without the arch config infer it."""
    train_tiny(tiny_data, tmp_path / "run", "max_steps=8")
    main(["export", str(tmp_path / "run"), str(tmp_path / "exported")])
    expected, expected_arch = read_weights(tmp_path / "run" / "step_8")
    actual, actual_arch = read_weights(tmp_path / "exported")
    assert actual_arch == expected_arch and set(actual) == set(expected)
    for key, value in expected.items():
        assert np.array_equal(np.array(value), np.array(actual[key])), key
    live, _ = saved_state(tmp_path / "run")
    assert not np.array_equal(np.array(live["model.inner.lm_head.weight"]), np.array(actual["inner.lm_head.weight"]))

    state_file = tmp_path / "run" / "train_state_step_8" / "state.json"
    meta = json.loads(state_file.read_text())
    del meta["arch"]
    state_file.write_text(json.dumps(meta))
    main(["export", str(tmp_path / "run"), str(tmp_path / "inferred")])
    inferred = read_weights(tmp_path / "inferred")[1]
    assert inferred == {k: v for k, v in expected_arch.items() if k != "batch_size"}  # no batch size in the weights


def test_export_into_a_folder_makes_a_model_folder(tiny_data, tmp_path):
    """Exported into a folder, a run's model is ``model.safetensors`` with the run's all_config.yaml beside it, so
    trm-eval finds the run's test data there; the run's later states share that config (only run-control settings
    differ), while a run with another model is refused before anything is written."""
    train_tiny(tiny_data, tmp_path / "run", "max_steps=8")
    folder = tmp_path / "models" / "tiny"
    folder.mkdir(parents=True)
    main(["export", str(tmp_path / "run"), str(folder)])
    config_text = (tmp_path / "run" / "all_config.yaml").read_text()
    assert yaml.safe_load((folder / "all_config.yaml").read_text()) == yaml.safe_load(config_text)
    common = dict(global_batch_size=8, progress=False)
    by_folder = run(EvalConfig(checkpoint=str(folder), output_dir=str(tmp_path / "e1"), **common))
    by_step = run(EvalConfig(checkpoint=str(tmp_path / "run" / "step_8"), data_paths=[str(tiny_data)],
                             output_dir=str(tmp_path / "e2"), **common))  # fmt: skip
    assert by_folder["all"] == by_step["all"]
    assert by_folder["examples"] == len(np.load(tiny_data / "test" / "all__inputs.npy"))  # the run's test split

    train_tiny(tiny_data, tmp_path / "run", "max_steps=16", "max_minutes=60", f"resume={tmp_path / 'run'}")
    assert yaml.safe_load((tmp_path / "run" / "all_config.yaml").read_text()) != yaml.safe_load(config_text)
    shared = (folder / "all_config.yaml").read_bytes()
    main(["export", str(tmp_path / "run"), str(folder / "step_16")])
    assert (folder / "all_config.yaml").read_bytes() == shared and (folder / "step_16").is_file()

    train_tiny(tiny_data, tmp_path / "other", "max_steps=8", "arch.L_cycles=2")
    with pytest.raises(SystemExit, match="tiny/all_config.yaml: the config of a run with other arch than"):
        main(["export", str(tmp_path / "other"), str(folder / "other")])
    assert not (folder / "other").exists() and (folder / "all_config.yaml").read_bytes() == shared
    with pytest.raises(SystemExit, match="other: a run's checkpoint folder .it holds training states."):
        main(["export", str(tmp_path / "other"), str(tmp_path / "other")])
    assert not (tmp_path / "other" / "model.safetensors").exists()
    main(["export", str(tmp_path / "other"), str(tmp_path / "new") + "/"])  # a folder not made yet
    assert (tmp_path / "new" / "model.safetensors").is_file() and (tmp_path / "new" / "all_config.yaml").is_file()


def test_load_takes_a_run_folder_or_its_training_state(tiny_data, tmp_path, runtime):
    """A run folder, or one of its training states, loads as the model the trainer writes as step_N (EMA)."""
    train_tiny(tiny_data, tmp_path / "run", "max_steps=8")
    inputs = np.load(tiny_data / "test" / "all__inputs.npy")
    batch = {"inputs": inputs, "puzzle_identifiers": np.arange(len(inputs), dtype=np.int32) + 1}  # trained ids
    expected = load(tmp_path / "run" / "step_8", runtime=runtime).predict(batch)
    for source in (tmp_path / "run", tmp_path / "run" / "train_state_step_8"):
        actual = load(source, runtime=runtime).predict(batch)
        assert actual.keys() == expected.keys()
        assert all(np.array_equal(actual[key], expected[key]) for key in expected), source
    shutil.rmtree(tmp_path / "run" / "train_state_step_8")
    with pytest.raises(FileNotFoundError, match="no training state .*step_8. are files to name"):
        load(tmp_path / "run", runtime=runtime)


def test_part_sizes_parse_with_units():
    assert parse_size("15MiB") == 15 * 2**20 and parse_size("16MB") == 16 * 10**6 and parse_size("512") == 512
    for bad in ("", "0", "1.5MiB", "12 parsecs"):
        with pytest.raises(ValueError, match="size"):
            parse_size(bad)


def test_max_minutes_stops_and_saves_the_state(tiny_data, tmp_path):
    result = train_tiny(tiny_data, tmp_path / "run", "max_minutes=1e-9")
    assert result["step"] == 1  # the deadline has passed when the first step ends
    _, meta = saved_state(tmp_path / "run")
    assert json.loads(meta)["step"] == 1


def test_metrics_file_averages_over_halted_rows_and_drops_lines_past_a_resume(tmp_path):
    path = tmp_path / METRICS_FILE
    log = MetricsFile(path, every=2)
    log.train_step({"train/lm_loss": 1.0, "train/count": 0.0, "train/accuracy": 0.0}, step=1)
    log.train_step({"train/lm_loss": 3.0, "train/count": 1.0, "train/accuracy": 0.5}, step=2)
    log.evaluation({"all": {"accuracy": 0.25}}, step=2)
    log.train_step({"train/lm_loss": 2.0, "train/count": 0.0, "train/accuracy": 0.0}, step=3)
    log.train_step({"train/lm_loss": 2.0, "train/count": 0.0, "train/accuracy": 0.0}, step=4)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["kind"]) for r in records] == [(2, "train"), (2, "eval"), (4, "train")]
    assert records[0]["train/lm_loss"] == 2.0 and records[0]["train/accuracy"] == 0.5
    assert records[2]["train/accuracy"] is None  # no step in the window had halted rows
    assert records[1]["all"] == {"accuracy": 0.25}

    MetricsFile(path, initial_step=3)  # resumed from step 3: the line for step 4 belongs to the abandoned future
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["kind"]) for r in records] == [(2, "train"), (2, "eval"), (3, "resume")]
    MetricsFile(path)  # a fresh run starts a fresh file
    assert path.read_text() == ""


def test_the_lease_script_relays_a_run_between_machines(tiny_data, tmp_path):
    """scripts/relay_lease.sh as two machines run it: a fresh start packed, then unpacked elsewhere and resumed."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "relay_lease.sh"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(script.parents[1]), "RELAY_PART_SIZE": "64KiB"}
    run = [f"data_paths=[{tiny_data}]", *TINY_RUN, "device=cpu", "epochs=4", "eval_interval=2", "+run_name=r"]

    first = subprocess.run(["bash", script, "1e-9", tmp_path / "machine_a", *run], capture_output=True, text=True,
                           env={**env, "RELAY_OUT": str(tmp_path / "parts")}, timeout=300)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert json.loads((tmp_path / "parts" / "step_1" / MANIFEST).read_text())["step"] == 1
    second = subprocess.run(["bash", script, "1e-9", tmp_path / "machine_b", *run], capture_output=True, text=True,
                            env={**env, "RELAY_IN": str(tmp_path / "parts" / "step_1")}, timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert "checked and joined" in second.stdout and "stopped at step 2" in second.stdout
    _, meta = saved_state(tmp_path / "machine_b")
    assert json.loads(meta)["step"] == 2


def test_the_lease_script_packs_after_every_segment(tiny_data, tmp_path):
    """RELAY_EVERY: three segments of one step each, a pack after each, the newest two kept; each pack resumes."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "relay_lease.sh"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(script.parents[1]), "RELAY_PART_SIZE": "64KiB",
           "RELAY_OUT": str(tmp_path / "parts"), "RELAY_EVERY": "1e-9"}  # fmt: skip
    run = [f"data_paths=[{tiny_data}]", *TINY_RUN, "device=cpu", "epochs=4", "eval_interval=2", "+run_name=r"]

    lease = subprocess.run(["bash", script, "3e-9", tmp_path / "machine", *run], capture_output=True, text=True,
                           env=env, timeout=300)  # fmt: skip
    assert lease.returncode == 0, lease.stderr
    assert [line for line in lease.stdout.splitlines() if line.startswith("stopped at step")] == [
        f"stopped at step {n} (max_minutes=1e-09); resume={tmp_path / 'machine'} continues" for n in (1, 2, 3)]
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["step_2", "step_3"]
    for step in (2, 3):
        unpack(tmp_path / "parts" / f"step_{step}", tmp_path / f"from_{step}")
        _, meta = saved_state(tmp_path / f"from_{step}")
        assert json.loads(meta)["step"] == step


def test_the_lease_script_ends_where_the_run_ends(tiny_data, tmp_path):
    """A lease longer than the run: segments of one step to max_steps=3, then one that finds nothing to train and
    ends the lease without a resume line for it."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "relay_lease.sh"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(script.parents[1]), "RELAY_EVERY": "1e-9"}
    run = [f"data_paths=[{tiny_data}]", *TINY_RUN, "device=cpu", "epochs=4", "eval_interval=2", "+run_name=r",
           "max_steps=3"]  # fmt: skip

    lease = subprocess.run(["bash", script, "60", tmp_path / "machine", *run], capture_output=True, text=True,
                           env=env, timeout=300)  # fmt: skip
    assert lease.returncode == 0, lease.stderr
    assert lease.stdout.count("stopped at step") == 3
    assert "nothing to train: the run is at step 3, which is its last (3)" in lease.stdout
    records = [json.loads(line) for line in (tmp_path / "machine" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "resume"] == [1, 2]
