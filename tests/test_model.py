"""Properties of trm_mlx.model that need no reference implementation: init statistics, memory, shapes."""

import math
import re
import types

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from trm_mlx.model import ACTLossHead, create_model
from trm_mlx.model import trm as trm_module
from trm_mlx.model.init import truncated_normal
from trm_mlx.runtime import ATTENTION_TILE, Runtime


def tiny_arch(**overrides):
    arch = dict(
        seq_len=32, vocab_size=11, num_puzzle_identifiers=3, puzzle_emb_ndim=64, H_cycles=2, L_cycles=2,
        L_layers=2, hidden_size=64, expansion=4, num_heads=4, pos_encodings="rope", halt_max_steps=4,
        halt_exploration_prob=0.1, forward_dtype="float32",
    )
    return {**arch, **overrides}


def test_truncated_normal_statistics():
    mx.random.seed(0)
    x = np.array(truncated_normal((400_000,), std=0.3))
    # comp_std = std * 1.1368472343385565 (spec §2.3.1); samples are clipped to +-2 comp_std.
    bound = 2 * 0.3 * 1.1368472343385565
    assert np.abs(x).max() <= bound + 1e-6
    assert np.abs(x).max() > 0.99 * bound
    assert abs(x.std() - 0.3) < 0.003
    assert abs(x.mean()) < 0.003
    assert not np.any(np.array(truncated_normal((10,), std=0.0)))


def test_initialisation_rules():
    model = create_model(tiny_arch(forward_dtype="bfloat16"))
    inner = model.inner
    assert not np.any(np.array(inner.q_head.weight))
    assert np.all(np.array(inner.q_head.bias) == -5)
    assert not np.any(np.array(inner.puzzle_emb.weights))
    assert inner.H_init.dtype == mx.bfloat16 and inner.L_init.dtype == mx.bfloat16
    assert inner.lm_head.weight.dtype == mx.float32
    # LeCun std 1/sqrt(fan_in) for a projection, 1/sqrt(D) for the token embedding.
    w = np.array(inner.L_level.layers[0].mlp.gate_up_proj.weight)
    assert abs(w.std() - 1 / math.sqrt(64)) < 0.01
    trainable = {k for k, _ in tree_flatten(model.trainable_parameters())}
    assert "inner.puzzle_emb.weights" not in trainable and "inner.H_init" not in trainable
    assert "inner.q_head.bias" in trainable


def test_eval_runs_every_row_for_halt_max_steps():
    model = create_model(tiny_arch())
    rng = np.random.default_rng(0)
    batch = {"inputs": rng.integers(0, 11, (5, 32)), "puzzle_identifiers": np.array([0, 1, 2, 0, 1])}
    out = model.predict(batch)
    assert out["logits"].shape == (5, 32, 11) and out["logits"].dtype == np.float32
    assert np.all(out["steps"] == 4)
    np.testing.assert_array_equal(out["preds"], out["logits"].argmax(-1))


def _step_peak_memory(H_cycles: int) -> int:
    model = create_model(tiny_arch(H_cycles=H_cycles, L_cycles=3), Runtime("cpu").execution)
    head = ACTLossHead(model)
    model.train()
    rng = np.random.default_rng(0)
    batch = {
        "inputs": mx.array(rng.integers(0, 11, (16, 32)).astype(np.int32)),
        "labels": mx.array(rng.integers(0, 11, (16, 32)).astype(np.int32)),
        "puzzle_identifiers": mx.zeros((16,), dtype=mx.int32),
    }
    carry = model.reset_halted(model.initial_carry(batch), batch)
    rows = model.puzzle_rows(carry)
    mx.eval(carry, rows, model.parameters())

    def loss_fn(params, rows):
        model.update(params)
        return head.loss_and_metrics(model(carry, rows))[0]

    mx.reset_peak_memory()
    base = mx.get_active_memory()
    loss, grads = mx.value_and_grad(loss_fn, argnums=(0, 1))(model.trainable_parameters(), rows)
    mx.eval(loss, grads)
    return mx.get_peak_memory() - base


def test_no_gradient_cycles_hold_no_memory(monkeypatch, on_the_cpu):
    """A training step's peak memory must not grow with H_cycles: the no-grad cycles' graph is released.

    Measured on the CPU device everywhere: a GPU queues a step this small whole before it can release any buffer
    (tests/test_recompute.py), which says nothing about the graph."""
    short, long = _step_peak_memory(1), _step_peak_memory(4)
    assert long < 1.05 * short, (short, long)
    # Control: without the stop_gradient the same measurement grows, so the check above can fail.
    no_stop = types.SimpleNamespace(**{k: getattr(mx, k) for k in dir(mx) if not k.startswith("__")})
    no_stop.stop_gradient = lambda x: x
    monkeypatch.setattr(trm_module, "mx", no_stop)
    assert _step_peak_memory(4) > 1.5 * short


def test_embedding_gradient_sums_every_row_exactly():
    """4096 lookups of one token: a bf16 scatter-add stalls at 256 (256 + 1 rounds back to 256); the gradient as
    one product accumulates in fp32, as PyTorch's embedding backward, and gives 4096."""
    from trm_mlx.model.layers import CastedEmbedding

    table = CastedEmbedding(3, 8, 1.0, Runtime("cpu").execution)
    ids = mx.zeros((4096,), dtype=mx.int32)

    def total(weight):
        table.embedding_weight = weight
        return table(ids, mx.bfloat16).astype(mx.float32).sum()

    grad = mx.grad(total)(table.embedding_weight)
    np.testing.assert_array_equal(np.array(grad), np.array([[4096.0] * 8, [0.0] * 8, [0.0] * 8]))


def test_embedding_gradient_matches_the_gather_gradient():
    """fp32 on the CPU, where the product is exact (a GPU's fp32 products may round their operands to TF32)."""
    from trm_mlx.model.layers import lookup_rows

    rng = np.random.default_rng(0)
    weight = mx.array(rng.standard_normal((11, 16)), dtype=mx.float32)
    ids = mx.array(rng.integers(0, 11, (5, 9)), dtype=mx.int32)
    cotangent = mx.array(rng.standard_normal((5, 9, 16)), dtype=mx.float32)
    with mx.stream(mx.cpu):
        ours = mx.vjp(lambda w: lookup_rows(fp32_products=True)(w, ids), [weight], [cotangent])
        plain = mx.vjp(lambda w: w[ids], [weight], [cotangent])
    np.testing.assert_array_equal(np.array(ours[0][0]), np.array(plain[0][0]))
    np.testing.assert_allclose(np.array(ours[1][0]), np.array(plain[1][0]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["trm", "hrm"])
def test_only_differentiated_passes_pad_attention_and_recompute(monkeypatch, name):
    """On CUDA a training pass pads attention to the fused backward's tile and recomputes its blocks; the
    no-gradient cycles need neither and run as in evaluation. TRM, H2 x L2 with 2 layers: the last cycle's
    3 applications x 2 layers are differentiated, the first cycle's 6 are not. HRM (L_layers = H_layers = 2): of
    its 2 x 2 L and 2 H applications, the last L and the last H are; its second forward (the Q-learning target,
    6 applications) is not."""
    from trm_mlx.model import layers

    lengths, recomputed = [], []
    attention = layers.fused_attention
    counted = lambda q, *a, **k: lengths.append(q.shape[2]) or attention(q, *a, **k)  # noqa: E731
    monkeypatch.setattr(layers, "fused_attention", counted)
    block = layers.recomputed
    monkeypatch.setattr(layers, "recomputed", lambda *a: recomputed.append(1) or block(*a))
    arch = tiny_arch(halt_max_steps=2, halt_exploration_prob=0.0)
    if name == "hrm":
        arch.update(name="recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1", H_layers=2)
    mx.random.seed(0)
    model = create_model(arch, Runtime("cuda", "reference", recompute=1.0).execution)
    head = ACTLossHead(model)
    batch = {
        "inputs": mx.array(np.ones((2, 32)), dtype=mx.int32),
        "labels": mx.array(np.ones((2, 32)), dtype=mx.int32),
        "puzzle_identifiers": mx.array([0, 1], dtype=mx.int32),
    }
    mx.eval(head.loss_and_metrics(model(model.reset_halted(model.initial_carry(batch), batch)))[0])
    differentiated, plain = (2 * 3, 2 * 3) if name == "trm" else (2 * 2, 2 * 4 + 2 * 6)
    S = 32 + model.prefix_len(model.config)  # the puzzle-embedding positions, then the inputs
    padded = -(-S // ATTENTION_TILE["cuda"]) * ATTENTION_TILE["cuda"]
    assert padded > S and sorted(lengths) == [S] * plain + [padded] * differentiated
    assert len(recomputed) == differentiated


def test_padded_positions_leave_attention_and_its_gradients_unchanged():
    """On CUDA, training pads q, k, v to the fused backward's tile and masks the padded keys: the real rows must be
    exact."""
    from trm_mlx.model import layers

    rng = np.random.default_rng(1)
    q, k, v, cot = (mx.array(rng.standard_normal((2, 3, 13, 8)), dtype=mx.float32) for _ in range(4))

    def padded(q, k, v):
        q, k, v = (mx.pad(a, [(0, 0), (0, 0), (0, 3), (0, 0)]) for a in (q, k, v))
        return layers.fused_attention(q, k, v, 0.35, length=13)[:, :, :13]

    def plain(q, k, v):
        return layers.fused_attention(q, k, v, 0.35, length=13)

    (out,), grads = mx.vjp(padded, [q, k, v], [cot])
    (ref,), ref_grads = mx.vjp(plain, [q, k, v], [cot])
    np.testing.assert_allclose(np.array(out), np.array(ref), rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.array(g), np.array(r), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("change, expected", [
    (lambda b: b.pop("puzzle_identifiers"), "the batch lacks ['puzzle_identifiers']"),
    (lambda b: b.update(inputs=b["inputs"][0]), "inputs of shape [32], expected [rows, seq_len]"),
    (lambda b: b.update(inputs=b["inputs"][:, :30]), "inputs of shape [5, 30], expected [5, 32]"),
    (lambda b: b.update(inputs=b["inputs"] + 0.5), "inputs must hold integers, got float64"),
    (lambda b: b["inputs"].__setitem__((1, 3), 11), "inputs holds 11, outside the model's [0, 11)"),
    (lambda b: b.update(puzzle_identifiers=np.array([0, 1, 2, 0, 3])), "puzzle_identifiers holds 3, outside"),
    (lambda b: b.update(labels=np.full((5, 32), -1)), "labels holds -1, outside the model's [0, 11)"),
])  # fmt: skip
def test_predict_names_what_is_wrong_with_a_batch(change, expected):
    model = create_model(tiny_arch())  # seq_len 32, vocab 11, 3 puzzle identifiers
    rng = np.random.default_rng(0)
    batch = {"inputs": rng.integers(0, 11, (5, 32)), "puzzle_identifiers": np.array([0, 1, 2, 0, 1])}
    labels = batch["inputs"].copy()
    labels[:, :4] = -100  # ignored positions are fine
    assert model.predict({**batch, "labels": labels})["preds"].shape == (5, 32)
    change(batch)
    with pytest.raises(ValueError, match=re.escape(expected)):
        model.predict(batch)
