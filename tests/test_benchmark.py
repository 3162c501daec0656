"""The benchmarks (scripts/benchmark.py, scripts/bench_kernels.py, trm_mlx.training.throughput): presets' shapes
read from configs/preset/, one start for both implementations, and the CPU path end to end."""

import json
import re
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
import torch

import legacy.pretrain as lp
from legacy.dataset.common import PuzzleDatasetMetadata as LegacyMetadata
from scripts import bench_kernels, benchmark
from trm_mlx.checkpoint import model_arrays
from trm_mlx.data.cli import main as build_main
from trm_mlx.data.metadata import PuzzleDatasetMetadata
from trm_mlx.training import config as training_config
from trm_mlx.training import throughput
from trm_mlx.training.config import PretrainConfig
from trm_mlx.training.state import create_train_state

SMALL_ARCH = ["arch.hidden_size=16", "arch.num_heads=2", "arch.halt_max_steps=2"]
REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("on_the_cpu")


@pytest.mark.parametrize(
    "name, l_cycles, mlp_t, data_shape, batch",
    [
        ("sudoku_mlp", 6, True, (81, 11, 1), 768),
        ("sudoku_att", 6, False, (81, 11, 1), 768),
        ("maze_att", 4, False, (900, 6, 1), 192),  # one GPU's share of the README's 768 on 4 GPUs
        ("arc_att", 4, False, (900, 12, 960_961), 192),
    ],
)
def test_paper_presets(name, l_cycles, mlp_t, data_shape, batch):
    config, metadata = benchmark.resolve_run(name, None, None, [])
    arch = config["arch"]
    assert (arch["hidden_size"], arch["L_layers"], arch["H_cycles"], arch["L_cycles"]) == (512, 2, 3, l_cycles)
    assert (arch["halt_max_steps"], arch["mlp_t"], arch["forward_dtype"]) == (16, mlp_t, "bfloat16")
    assert arch["pos_encodings"] == ("none" if mlp_t else "rope")
    assert not config["ema"] and config["evaluators"] == []
    assert (metadata["seq_len"], metadata["vocab_size"], metadata["num_puzzle_identifiers"]) == data_shape
    assert config["global_batch_size"] == batch
    assert benchmark.resolve_run(name, 16, "float32", [])[0]["global_batch_size"] == 16


def test_tiny_is_the_demo_with_attention():
    config, metadata = benchmark.resolve_run("tiny", None, None, [])
    arch = config["arch"]
    assert (arch["hidden_size"], arch["H_cycles"], arch["L_cycles"], arch["halt_max_steps"]) == (64, 2, 3, 8)
    assert (arch["mlp_t"], arch["pos_encodings"], arch["forward_dtype"]) == (False, "rope", "float32")
    assert config["global_batch_size"] == 64 and metadata["seq_len"] == 81


def test_preset_shapes_come_from_the_preset_yaml(tmp_path, monkeypatch, request):
    """Each benchmark reads a preset's shapes from its YAML: edited there, they change in every one of them."""
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs", configs)
    arc1 = configs / "preset" / "arc1.yaml"
    edited = "benchmark: {seq_len: 30, vocab_size: 7, num_puzzle_identifiers: 5, gpus: 8}"
    arc1.write_text(re.sub(r"^benchmark: .*$", edited, arc1.read_text(), count=1, flags=re.M))
    monkeypatch.setattr(training_config, "hydra_config_path", lambda: str(configs))
    bench_kernels.preset_arch.cache_clear()
    request.addfinalizer(bench_kernels.preset_arch.cache_clear)

    config, metadata = benchmark.resolve_run("arc_att", None, None, [])
    assert (metadata["seq_len"], metadata["vocab_size"], metadata["num_puzzle_identifiers"]) == (30, 7, 5)
    assert config["global_batch_size"] == 768 // 8
    arch = bench_kernels.preset_arch("arc_attention")
    assert (arch["seq_len"], arch["vocab_size"], arch["batch_size"]) == (30, 7, 96)
    assert bench_kernels.sizes("arc_attention")[:3] == (96, 30 + 16, 512)

    arc2 = configs / "preset" / "arc2.yaml"
    arc2.write_text(re.sub(r"^benchmark: .*\n", "", arc2.read_text(), flags=re.M))
    with pytest.raises(ValueError, match="no `benchmark` key"):
        training_config.preset_run("arc2")


def test_every_preset_has_benchmark_shapes():
    """The benchmarks run any preset without its data (``preset_run`` raises for a preset without shapes)."""
    for path in sorted((REPO / "configs" / "preset").glob("*.yaml")):
        training_config.preset_run(path.stem, [], 8)


@pytest.mark.parametrize("preset, subsets", [("arc1", "training evaluation concept"),
                                             ("arc2", "training2 evaluation2 concept")])  # fmt: skip
def test_arc_presets_shapes_match_their_data(preset, subsets, shared_data, tmp_path):
    """An ARC preset's identifiers: the groups its README build makes, each with 1,000 augmentations, + blank."""
    out = tmp_path / preset
    build_main(["arc", "--input-file-prefix", str(shared_data / "arc" / "arc-agi"), "--output-dir", str(out),
                "--subsets", *subsets.split(), "--test-set-name", subsets.split()[1], "--num-aug", "0"])  # fmt: skip
    built = json.loads((out / "train" / "dataset.json").read_text())
    _, metadata = training_config.preset_run(preset, [], 8)
    assert (metadata.seq_len, metadata.vocab_size) == (built["seq_len"], built["vocab_size"])
    assert metadata.num_puzzle_identifiers == built["total_groups"] * 1001 + 1


def test_bench_kernels_cases_follow_the_presets():
    labels = [(op, label) for op, label, _, _ in bench_kernels.kernel_cases()]
    assert labels == [
        ("add_rms_norm", "Sudoku h [768,97,512]"), ("add_rms_norm", "ARC h [192,916,512]"),
        ("add_rms_norm_seq", "Sudoku h [768,97,512]"), ("swiglu", "Sudoku mlp [768,97,3072]"),
        ("swiglu", "Sudoku mlp_t [768,2x512x512]"), ("swiglu", "ARC mlp [192,916,3072]"),
        ("rope_split", "ARC qkv [192,916,1536]"), ("inject_add", "Sudoku h [768,97,512]"),
        ("inject_add", "ARC h [192,916,512]"),
    ]  # fmt: skip


def test_throughput_runs_a_preset():
    result = throughput.measure("demo", 4, warmup=1, steps=1, overrides=SMALL_ARCH)
    assert (result["preset"], result["ranks"], result["global_batch"], result["steps"]) == ("demo", 1, 4, 1)
    assert result["dtype"] == "float32" and result["examples_per_s"] == pytest.approx(4 / result["step_s"], rel=1e-2)


def test_both_sides_start_from_the_same_weights(tmp_path, runtime):
    config, metadata = benchmark.resolve_run("tiny", 4, None, SMALL_ARCH)
    metadata = {**metadata, "num_puzzle_identifiers": 7}
    path = tmp_path / "start"
    benchmark.write_initial_weights(config, metadata, path)

    config["load_checkpoint"] = str(path)
    legacy = lp.init_train_state(lp.PretrainConfig(**config), LegacyMetadata(**metadata), 0, 1, torch.device("cpu"))
    ours = create_train_state(PretrainConfig(**config), PuzzleDatasetMetadata(**metadata), runtime)
    theirs = {k.removeprefix("model."): v.float().numpy() for k, v in legacy.model.state_dict().items()}
    arrays = model_arrays(ours.model)
    assert arrays["inner.puzzle_emb.weights"].shape == (7, 16)  # widened from the saved one-row table
    assert set(arrays) <= set(theirs)
    for key, value in arrays.items():
        np.testing.assert_array_equal(np.array(value.astype(mx.float32)), theirs[key], err_msg=key)
    assert np.abs(theirs["inner.lm_head.weight"]).max() > 0  # a real (seeded) init, not zeros


def test_synthetic_batches_have_the_loader_layout():
    metadata = benchmark.resolve_run("arc_att", 3, None, [])[1]
    batches = benchmark.synthetic_batches(metadata, 3, 2)
    assert len(batches) == 2 and not np.array_equal(batches[0]["inputs"], batches[1]["inputs"])
    for batch in batches:
        assert {key: (value.shape, value.dtype) for key, value in batch.items()} == {
            "inputs": ((3, 900), np.int32), "labels": ((3, 900), np.int32), "puzzle_identifiers": ((3,), np.int32)
        }
        assert batch["inputs"].min() >= 1 and batch["inputs"].max() < metadata["vocab_size"]
        assert batch["puzzle_identifiers"].max() < metadata["num_puzzle_identifiers"]


def test_overrides_may_follow_impl():
    """`--impl` takes every word after it: Hydra overrides are read as overrides wherever they stand."""
    args = benchmark.parse_args(["--impl", "mlx", "torch", "cpu_lanes=2", "+run_name=x", "--steps", "4", "--out",
                                 "a/b.jsonl", "arch.L_cycles=4", "--", "recompute=none"])
    assert args.impl == ["mlx", "torch"] and args.steps == 4 and str(args.out) == "a/b.jsonl"
    assert args.overrides == ["cpu_lanes=2", "+run_name=x", "arch.L_cycles=4", "recompute=none"]
    assert benchmark.parse_args(["--impl", "mlx"]).overrides == []


def test_cpu_run_reports_both_implementations(tmp_path, capsys):
    out = tmp_path / "bench.jsonl"
    argv = ["--preset", "tiny", "--batch", "4", "--steps", "2", "--warmup", "1", "--eval-batches", "1",
            "--impl", "mlx", "torch", "--out", str(out), *SMALL_ARCH, "device=cpu"]  # both on the CPU, even with a GPU
    assert benchmark.main(argv) == 0

    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert printed == [json.loads(line) for line in out.read_text().splitlines()]
    ours, theirs, summary = printed
    assert (ours["impl"], theirs["impl"]) == ("mlx", "torch")
    for line in (ours, theirs):
        assert (line["batch"], line["steps"], line["dtype"], line["memory"]) == (4, 2, "float32", "peak RSS")
        assert line["train_examples_per_s"] == pytest.approx(4 / line["step_s"], rel=1e-3, abs=0.1)
        assert line["eval_examples_per_s"] == pytest.approx(4 / line["eval_batch_s"], rel=1e-3, abs=0.1)
        assert line["peak_memory_gib"] > 0.05
    assert "mlx" in ours["device"] and "torch" in theirs["device"]
    assert ours["execution"].startswith("backend: cpu") and theirs["device"].split(" [")[0].endswith("threads")
    ratio = summary["ratios"]["mlx_vs_torch"]
    assert ratio["train_speed"] == pytest.approx(ours["train_examples_per_s"] / theirs["train_examples_per_s"], rel=1e-2)
    assert ratio["eval_speed"] == pytest.approx(ours["eval_examples_per_s"] / theirs["eval_examples_per_s"], rel=1e-2)


def test_a_worker_out_of_time_is_reported_not_hidden(capsys):
    argv = ["--preset", "tiny", "--batch", "4", "--steps", "1", "--impl", "mlx", "--worker-timeout", "0.01", *SMALL_ARCH]
    assert benchmark.main(argv) == 1
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line["impl"] == "mlx" and line["error"].startswith("stopped after --worker-timeout")
    assert line["reached"] == {}
