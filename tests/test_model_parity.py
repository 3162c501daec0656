"""trm_mlx against the legacy PyTorch reference, from the same (original-format) checkpoint."""

import importlib.util
import json
import re
import shutil
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from scripts import parity
from mlx.utils import tree_flatten

from trm_mlx import load
from tiny_runs import train_tiny
from trm_mlx.checkpoint import read_weights, save_native, save_original, torch_file

TRM = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"

TINY = dict(
    name=TRM,
    loss={"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
    H_cycles=2,
    L_cycles=2,
    H_layers=0,
    L_layers=2,
    hidden_size=32,
    expansion=2,
    num_heads=4,
    pos_encodings="rope",
    puzzle_emb_ndim=48,  # > hidden: the embedding spans two prefix positions, the second zero-padded
    puzzle_emb_len=2,
    halt_max_steps=3,
    halt_exploration_prob=0.1,
    forward_dtype="float32",
)
SIZES = dict(seq_len=12, vocab_size=7, num_puzzle_identifiers=5)

VARIANTS = {
    "rope": {},
    "learned": {"pos_encodings": "learned"},
    "none": {"pos_encodings": "none"},
    "mlp_t": {"mlp_t": True, "pos_encodings": "none"},
    "q_continue": {"no_ACT_continue": False},
    "bfloat16": {"forward_dtype": "bfloat16"},
    "singlez": {"name": "recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1"},
    "singlez_q_continue": {
        "name": "recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1",
        "no_ACT_continue": False,
    },
    "hier6": {"name": "recursive_reasoning.trm_hier6@TinyRecursiveReasoningModel_ACTV1", "L_cycles": 3},
    "hier6_mlp_t": {
        "name": "recursive_reasoning.trm_hier6@TinyRecursiveReasoningModel_ACTV1",
        "mlp_t": True,
        "pos_encodings": "none",
    },
    "hrm": {"name": "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1", "H_layers": 2, "L_layers": 1},
    "hrm_learned": {
        "name": "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1",
        "H_layers": 1,
        "L_layers": 2,
        "pos_encodings": "learned",
        "puzzle_emb_ndim": 32,
    },
    # 32 // 5 = 6: attention width 30 < hidden 32, as the baseline's 512 // 12 = 42 (width 504).
    "baseline": {"name": "recursive_reasoning.transformers_baseline@Model_ACTV2", "H_layers": 2, "num_heads": 5},
    "baseline_act_inference": {
        "name": "recursive_reasoning.transformers_baseline@Model_ACTV2",
        "H_layers": 1,
        "pos_encodings": "learned",
        "act_inference": True,
    },
}


def write_original_checkpoint(tmp_path, arch: dict, seed: int = 0):
    """A legacy model saved as the original trainer does: `_orig_mod.` keys, all_config.yaml beside it.

    q_head and the puzzle table start as constants in the original; they are randomised so that every path
    (halting decisions, puzzle rows) is exercised.
    """
    torch.manual_seed(seed)
    head = parity.legacy_model({**arch, **SIZES}, batch_size=4)
    inner = head.model.inner
    with torch.no_grad():
        inner.q_head.weight.normal_(0, 0.2)
        inner.q_head.bias.normal_(0, 0.5)
        if hasattr(inner, "puzzle_emb"):
            inner.puzzle_emb.weights.normal_(0, 0.5)
    state = OrderedDict(("_orig_mod." + k, v) for k, v in head.state_dict().items())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save(state, run_dir / "step_7")
    data_dir = tmp_path / "data"
    (data_dir / "train").mkdir(parents=True)
    (data_dir / "train" / "dataset.json").write_text(json.dumps({"seq_len": SIZES["seq_len"]}))
    config = {"arch": arch, "data_paths": [str(data_dir)], "global_batch_size": 4}
    (run_dir / "all_config.yaml").write_text(yaml.safe_dump(config))
    return run_dir / "step_7", state


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_and_gradients_match_legacy(tmp_path, variant):
    arch = {**TINY, **VARIANTS[variant]}
    checkpoint, _ = write_original_checkpoint(tmp_path, arch)
    result = parity.run(checkpoint, batch_size=4, seed=1, grads=True, floor=True)
    tol = parity.TOLERANCES[arch["forward_dtype"]]

    assert len(result["forward"]) == arch["halt_max_steps"]
    # The first step is a fixed amount of compute from the same weights: the plain tolerance.
    assert result["forward"][0]["logits"]["max_abs"] <= tol["logits_abs"]
    for row in result["forward"]:
        assert parity.within(row["logits"]["max_abs"], tol["logits_abs"], row), row
    grads = result["gradients"]
    assert grads["loss"]["rel"] <= tol["loss_rel"]
    assert "puzzle_rows" in grads["grads"] and grads["grads"]["puzzle_rows"]["norm"] > 0
    expected_params = {k for k, _ in tree_flatten(load(checkpoint).trainable_parameters())}
    assert set(grads["grads"]) == expected_params | {"puzzle_rows"}
    for key, g in grads["grads"].items():
        assert g["rel"] <= tol["grad_rel"], (key, g)
    assert result["pass"]


def test_parity_detects_a_wrong_model(tmp_path):
    """The comparison must fail when the MLX side computes something else (here: one more L cycle)."""
    checkpoint, _ = write_original_checkpoint(tmp_path, TINY)
    config = yaml.safe_load((checkpoint.parent / "all_config.yaml").read_text())
    legacy_cfg = dict(config)
    weights, _ = read_weights(checkpoint)
    head = parity.ACTLossHead(parity.create_model({**TINY, **SIZES, "L_cycles": 3}))
    parity.load_weights_into(head.model, weights, checkpoint)
    legacy = parity.legacy_model({**TINY, **SIZES}, batch_size=4)
    parity.load_legacy_weights(legacy, weights)
    rows = parity.compare_forward(legacy, head, parity.make_batch({**TINY, **SIZES}, 4, 0))
    assert not parity.verdict(rows, None, parity.TOLERANCES["float32"])
    assert legacy_cfg["arch"]["L_cycles"] == 2


def test_original_native_original_round_trip_is_bit_identical(tmp_path):
    checkpoint, state = write_original_checkpoint(tmp_path, {**TINY, "forward_dtype": "bfloat16"})
    model = load(checkpoint)
    native = save_native(tmp_path / "native" / "step_7", model)
    back = save_original(tmp_path / "back" / "step_7", load(native))
    restored = torch.load(back)
    assert list(restored) == list(state)
    for key, value in state.items():
        assert restored[key].dtype == value.dtype, key
        assert torch.equal(restored[key], value), key
    assert state["_orig_mod.model.inner.H_init"].dtype == torch.bfloat16


def test_conversion_script_round_trip(tmp_path):
    from scripts.convert_checkpoint import main as convert

    checkpoint, state = write_original_checkpoint(tmp_path, {**TINY, "forward_dtype": "bfloat16"})
    assert convert([str(checkpoint), str(tmp_path / "native"), "--to", "native"]) == 0
    assert convert([str(tmp_path / "native"), str(tmp_path / "back"), "--to", "original", "--no-compiled-prefix"]) == 0
    restored = torch.load(tmp_path / "back")
    assert list(restored) == [k[len("_orig_mod.") :] for k in state]
    assert all(torch.equal(restored[k[len("_orig_mod.") :]], v) for k, v in state.items())


def test_unprefixed_keys_and_native_config(tmp_path):
    checkpoint, state = write_original_checkpoint(tmp_path, TINY)
    plain = OrderedDict((k[len("_orig_mod.") :], v) for k, v in state.items())
    torch.save(plain, checkpoint.parent / "step_8")
    a, b = load(checkpoint), load(checkpoint.parent / "step_8")
    native = load(save_native(tmp_path / "n" / "model.safetensors", a))
    assert native.arch_config() == a.arch_config()
    assert a.config.seq_len == SIZES["seq_len"]  # from data_paths' dataset.json
    batch = parity.make_batch({**TINY, **SIZES}, 3, 0)
    outs = [m.predict(batch) for m in (a, b, native)]
    for out in outs[1:]:
        np.testing.assert_array_equal(out["logits"], outs[0]["logits"])


def test_torch_file_reader_matches_torch(tmp_path):
    tensors = OrderedDict(
        f32=torch.randn(3, 4),
        bf16=torch.randn(7).to(torch.bfloat16),
        transposed=torch.arange(6).reshape(2, 3).t(),
        sliced=torch.randn(4, 6)[1:, ::2],
        i32=torch.randint(0, 9, (5,), dtype=torch.int32),
        u8=torch.randint(0, 9, (2, 2), dtype=torch.uint8),
        scalar=torch.tensor(3.5),
    )
    torch.save(tensors, tmp_path / "t")
    arrays, dtypes = torch_file.load_with_dtypes(tmp_path / "t")
    for key, value in tensors.items():
        np.testing.assert_array_equal(arrays[key], value.float().numpy() if key == "bf16" else value.numpy())
    assert dtypes["bf16"] == "bfloat16" and dtypes["u8"] == "uint8"


def test_torch_file_reader_refuses_code(tmp_path):
    torch.save({"x": torch.ones(1), "f": print}, tmp_path / "evil")
    with pytest.raises(Exception, match="unsupported object"):
        torch_file.load(tmp_path / "evil")


def test_bad_checkpoints_name_the_file(tmp_path):
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage"):
        load(garbage)
    checkpoint, _ = write_original_checkpoint(tmp_path, TINY)
    (checkpoint.parent / "all_config.yaml").unlink()
    with pytest.raises(ValueError, match="all_config.yaml"):
        load(checkpoint)


def _free_running_logits_difference(checkpoint, arch: dict, batch: dict) -> list[float]:
    """Per ACT step, the largest logits difference when each implementation carries its own state."""
    weights, _ = read_weights(checkpoint)
    model = load(checkpoint)
    legacy = parity.legacy_model(arch, batch_size=len(batch["inputs"]))
    parity.load_legacy_weights(legacy, weights)
    legacy.eval()
    t_batch = {k: torch.from_numpy(v) for k, v in batch.items()}
    m_batch = {k: parity.mx.array(v) for k, v in batch.items()}
    m_carry, differences = model.initial_carry(m_batch), []
    with torch.inference_mode():
        t_carry = legacy.initial_carry(t_batch)
        for _ in range(arch["halt_max_steps"]):
            t_carry, _, _, t_out, _ = legacy(return_keys=["logits"], carry=t_carry, batch=t_batch)
            step = model(model.reset_halted(m_carry, m_batch))
            m_carry = step.carry
            differences.append(np.abs(parity._to_numpy(step.logits) - parity._to_numpy(t_out["logits"])).max())
    return differences


def test_each_step_starts_from_the_same_carry(tmp_path, capsys):
    """Random weights make the recursion chaotic: left to carry their own states, two correct fp32 programs differ
    by more than the fixed tolerance by ACT step 3 or 4. Started from one carry at every step, trm_mlx meets the
    fixed tolerances at every step, without the fp64 reference and with it."""
    arch = {**TINY, **VARIANTS["mlp_t"], "halt_max_steps": 4}
    checkpoint, _ = write_original_checkpoint(tmp_path, arch)
    free = _free_running_logits_difference(checkpoint, {**arch, **SIZES}, parity.make_batch({**arch, **SIZES}, 4, 1))
    tolerance = parity.TOLERANCES["float32"]["logits_abs"]
    assert free[0] <= tolerance < free[-1]

    fixed = parity.run(checkpoint, batch_size=4, seed=1, floor=False)
    assert fixed["pass"] and not fixed["fp64_reference"]
    judged = parity.run(checkpoint, batch_size=4, seed=1)
    assert judged["pass"] and judged["fp64_reference"]
    for row in fixed["forward"] + judged["forward"]:
        assert row["logits"]["max_abs"] <= tolerance and row["carry"] <= parity.TOLERANCES["float32"]["carry_abs"]
    assert all(row["noise_floor"] > 0 and row["carry_noise_floor"] > 0 for row in judged["forward"])

    assert parity.main(["--checkpoint", str(checkpoint), "--seed", "1", "--fixed-tolerances"]) == 0
    assert "PASS (fixed tolerances)" in capsys.readouterr().out
    assert parity.main(["--checkpoint", str(checkpoint), "--seed", "1"]) == 0
    assert "PASS (fixed tolerances, or the fp64 noise floor)" in capsys.readouterr().out


def test_parity_detects_a_wrong_carry(tmp_path, monkeypatch, capsys):
    """A step whose outputs are right but whose carry is not (here: the state it hands on, off by 1e-3) fails on the
    carry, at the first step, and the FAIL names the check and its numbers."""
    checkpoint, _ = write_original_checkpoint(tmp_path, TINY)
    model_class = type(load(checkpoint))
    right = model_class.__call__

    def wrong_carry(self, carry, *args, **kwargs):
        step = right(self, carry, *args, **kwargs)
        step.carry["inner"] = {k: v + 1e-3 for k, v in step.carry["inner"].items()}
        return step

    monkeypatch.setattr(model_class, "__call__", wrong_carry)
    result = parity.run(checkpoint, batch_size=4, seed=1)
    assert result["forward"][0]["logits"]["max_abs"] <= parity.TOLERANCES["float32"]["logits_abs"]
    assert result["failures"][0].startswith("carry after ACT step 1: trm_mlx - legacy ")
    assert parity.main(["--checkpoint", str(checkpoint), "--seed", "1"]) == 1
    assert re.search(r"FAIL \(fixed tolerances, or the fp64 noise floor\): carry after ACT step 1: trm_mlx - legacy "
                     r"[0-9.e-]+ > 0.0001, and trm_mlx - fp64 ", capsys.readouterr().out)


def test_the_command_compares_in_fp32_unless_asked(tmp_path, capsys):
    """A checkpoint trained in bf16 is compared in fp32 (the contract) by default, in bf16 on request."""
    checkpoint, _ = write_original_checkpoint(tmp_path, {**TINY, "forward_dtype": "bfloat16"})
    for args, dtype in (([], "float32"), (["--dtype", "bfloat16"], "bfloat16")):
        assert parity.main(["--checkpoint", str(checkpoint), "--json", *args]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["dtype"] == dtype and result["fp64_reference"] == (dtype == "float32")


def test_the_report_gives_each_gradients_distance_from_fp64_as_a_ratio(tmp_path, capsys):
    """Beside the reference's and trm_mlx's distances from fp64, the table prints their ratio: the number the
    verdict weighs against 2."""
    checkpoint, _ = write_original_checkpoint(tmp_path, TINY)
    args = ["--checkpoint", str(checkpoint), "--grads", "--seed", "1"]
    assert parity.main([*args, "--json"]) == 0
    grads = json.loads(capsys.readouterr().out)["gradients"]["grads"]
    assert parity.main(args) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith("  grad ")}
    for key, d in grads.items():
        ratio = re.search(r"\(([0-9.]+)x\)$", lines[key])
        assert ratio and float(ratio[1]) == pytest.approx(d["mlx_vs_exact"] / d["floor"], abs=0.005), lines[key]


@pytest.mark.parametrize("head_dim,theta", [(16, 10000.0), (42, 10000.0), (64, 10000.0), (64, 500000.0), (128, 1e6)])
def test_rotary_tables_round_once(head_dim, theta):
    """RoPE frequencies are the exact powers rounded once to fp32, within one ulp of the original's (PyTorch's fp32
    power) and equal to them at the configs' head dim 64 and theta 10,000; cos/sin are within half an ulp of the
    exact values of the fp32 angles, and at that setting within one ulp of the original's tables."""
    from legacy.models.layers import RotaryEmbedding
    from trm_mlx.kernels.rope import inverse_frequencies
    from trm_mlx.model.layers import RotaryTables

    length = 916
    tables = RotaryTables(head_dim, theta)
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    exact_power = np.float64(theta) ** exponent.astype(np.float64)
    power = exact_power.astype(np.float32)
    np.testing.assert_array_equal(inverse_frequencies(head_dim, theta), np.float32(1.0) / power)
    original_power = (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)).numpy()
    assert np.all(np.abs(power - original_power) <= np.spacing(original_power))
    if (head_dim, theta) == (64, 10000.0):
        np.testing.assert_array_equal(power, original_power)
    angles = np.outer(np.arange(length, dtype=np.float32), np.float32(1.0) / power).astype(np.float64)
    angles = np.concatenate([angles, angles], axis=-1)
    original = RotaryEmbedding(head_dim, length, theta)()
    for table, original_table, exact in zip(tables(length), original, (np.cos(angles), np.sin(angles))):
        table, ulp = np.array(table).astype(np.float64), np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
        assert np.all(np.abs(table - exact) <= ulp / 2)
        if (head_dim, theta) == (64, 10000.0):
            assert np.all(np.abs(table - original_table.double().numpy()) <= ulp)


def test_the_fp64_reference_normalises_in_fp64():
    """The original's RMSNorm computes in fp32 whatever its input; the fp64 reference computes fp64 inputs in fp64,
    and every other input as before."""
    import legacy.models.layers as layers
    import legacy.models.recursive_reasoning.trm as trm

    original = getattr(layers.rms_norm, "original", layers.rms_norm)
    parity._exact_norms()
    x = torch.randn(3, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 10
    exact = x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-5)
    assert trm.rms_norm is layers.rms_norm
    assert torch.allclose(layers.rms_norm(x, 1e-5), exact, rtol=1e-14, atol=0)
    assert not torch.allclose(original(x, 1e-5), exact, rtol=1e-9, atol=0)  # the original rounds to fp32
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(layers.rms_norm(x.to(dtype), 1e-5), original(x.to(dtype), 1e-5))


def test_sequence_length_from_the_data_path_or_the_command_line(tmp_path, capsys):
    """A RoPE checkpoint whose all_config.yaml names a dataset that is not on this machine."""
    checkpoint, _ = write_original_checkpoint(tmp_path, TINY)
    shutil.rmtree(tmp_path / "data")
    with pytest.raises(SystemExit, match="sequence length unknown: pass --seq-len or --data-path"):
        parity.main(["--checkpoint", str(checkpoint)])
    assert parity.main(["--checkpoint", str(checkpoint), "--seq-len", str(SIZES["seq_len"])]) == 0

    from tiny_dataset import write_split

    data = tmp_path / "here"
    tokens = np.random.default_rng(0).integers(1, SIZES["vocab_size"], size=(4, SIZES["seq_len"]))
    for split in ("train", "test"):
        write_split(data, split, tokens, tokens, [1], [0, 4], [0, 1], num_ids=SIZES["num_puzzle_identifiers"],
                    vocab_size=SIZES["vocab_size"])
    assert parity.main(["--checkpoint", str(checkpoint), "--data-path", str(data), "--grads"]) == 0
    assert "PASS" in capsys.readouterr().out


def test_a_trm_train_run_folder(tiny_data, tmp_path, capsys):
    """trm-parity on a run folder compares the model its training state holds (the step_N it writes)."""
    train_tiny(tiny_data, tmp_path / "run", "max_steps=8", "arch.forward_dtype=float32")
    assert parity.main(["--checkpoint", str(tmp_path / "run"), "--grads"]) == 0
    assert "PASS" in capsys.readouterr().out


def test_gradients_of_a_model_without_puzzle_embedding(tmp_path):
    checkpoint, _ = write_original_checkpoint(tmp_path, {**TINY, "puzzle_emb_ndim": 0, "puzzle_emb_len": 0})
    result = parity.run(checkpoint, batch_size=4, seed=1, grads=True)
    assert result["pass"] and "puzzle_rows" not in result["gradients"]["grads"]
    assert set(result["gradients"]["grads"]) == {k for k, _ in tree_flatten(load(checkpoint).trainable_parameters())}


def test_without_torch_one_line_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch then fails as on a machine without it
    spec = importlib.util.spec_from_file_location("parity_without_torch", Path(parity.__file__))
    with pytest.raises(SystemExit, match=r'the PyTorch reference needs torch: pip install -e "\.\[legacy\]"'):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_gradients_round_no_further_from_fp64_than_the_reference(tmp_path, seed):
    """`--fp64` in bf16: one training step's gradients of each side against the fp64 reference. trm_mlx's rounding
    is the reference's kind (bf16 operands, fp32 accumulation): its distance from fp64 stays within FLOOR_FACTOR
    of the bf16 reference's for every gradient, the puzzle rows included."""
    checkpoint, _ = write_original_checkpoint(tmp_path, {**TINY, "forward_dtype": "bfloat16"}, seed=seed)
    result = parity.run(checkpoint, batch_size=4, seed=1, grads=True, floor=True)
    assert result["dtype"] == "bfloat16" and result["fp64_reference"] and result["pass"]
    for key, g in result["gradients"]["grads"].items():
        assert 0 < g["mlx_vs_exact"] <= parity.FLOOR_FACTOR * g["floor"], (key, g)


def test_a_training_batch_has_one_example_of_each_drawn_puzzle_with_its_own_identifier(tmp_path, capsys):
    """`--split train`: the first example of each of batch-size puzzles, drawn without repeats, and that puzzle's
    identifier; the test split keeps its first rows."""
    from tiny_dataset import write_split

    data = tmp_path / "built"
    rows = np.repeat(np.arange(9)[:, None], SIZES["seq_len"], axis=1)  # row r holds r everywhere
    write_split(data, "train", rows, rows, [7, 8, 9], [0, 3, 5, 9], [0, 1, 2, 3], num_ids=10, vocab_size=10)
    write_split(data, "test", rows[::-1], rows[::-1], [1, 2], [0, 4, 9], [0, 1, 2], num_ids=10, vocab_size=10)
    arch = {**TINY, **SIZES}
    for seed in range(4):
        batch = parity.make_batch(arch, 2, seed, data, split="train")
        first = batch["inputs"][:, 0].tolist()
        assert len(set(first)) == 2 and set(first) <= {0, 3, 5}
        assert batch["puzzle_identifiers"].tolist() == [{0: 7, 3: 8, 5: 9}[r] for r in first]
        assert ((batch["labels"] == -100) == (batch["inputs"] == 0)).all()  # the ignore label mapped
    with pytest.raises(ValueError, match="3 puzzles, fewer than the batch size 4"):
        parity.make_batch(arch, 4, 0, data, split="train")
    test = parity.make_batch(arch, 3, 0, data)
    assert test["inputs"][:, 0].tolist() == [8, 7, 6] and test["labels"].dtype == np.int32
    assert len(test["puzzle_identifiers"]) == 3
    assert len(parity.make_batch(arch, 20, 0, data)["inputs"]) == 9  # no more rows than the split has

    checkpoint, _ = write_original_checkpoint(tmp_path, TINY)
    with pytest.raises(SystemExit):
        parity.main(["--checkpoint", str(checkpoint), "--split", "train"])
    assert "--split train takes its batch from --data-path" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parity.main(["--checkpoint", str(checkpoint), "--fp64", "--fixed-tolerances"])
    assert "contradict" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            parity.main(["--checkpoint", str(checkpoint), "--torch-device", "cuda"])
        assert "PyTorch sees no CUDA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parity.main(["--checkpoint", str(checkpoint), "--compile"])
    assert "--compile compiles the reference's training step: pass --grads" in capsys.readouterr().err


def test_the_reference_compiled(tmp_path, monkeypatch):
    """`--compile`: the reference's training step runs under torch.compile (as the original trains: fused kernels
    round elsewhere), and trm_mlx's bf16 gradients pass against it, judged against the fp64 reference."""
    compiled = []
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or compile_(module))
    checkpoint, _ = write_original_checkpoint(tmp_path, {**TINY, "forward_dtype": "bfloat16"})
    result = parity.run(checkpoint, batch_size=4, seed=1, grads=True, floor=True, compiled=True)
    assert len(compiled) == 1 and isinstance(compiled[0], parity.LegacyLossHead)
    assert result["fp64_reference"] and result["pass"], result["failures"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU for the reference's side")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_reference_on_cuda(tmp_path, dtype):
    """`--torch-device cuda`: the reference's models are built on the GPU and the batch follows them; trm_mlx
    passes against it, judged against the fp64 reference (also on the GPU)."""
    checkpoint, _ = write_original_checkpoint(tmp_path, {**TINY, "forward_dtype": dtype})
    result = parity.run(checkpoint, batch_size=4, seed=1, grads=True, floor=True, torch_device="cuda")
    assert result["fp64_reference"] and result["pass"], result["failures"]
