"""trm_mlx.kernels on any machine: the generated sources for both backends, the policy, the self-check, and the
custom VJPs (with each kernel launch replaced by a plain-MLX emulation of what the kernel computes, so the
formulas, layouts and autodiff wiring are checked against MLX's autodiff of the reference)."""

import re
import string
import warnings

import mlx.core as mx
import numpy as np
import pytest

from trm_mlx import kernels
from trm_mlx.kernels import codegen, glu, injection, norm, registry, rope
from trm_mlx.model import ACTLossHead, Execution, create_model
from trm_mlx.runtime import FUSED_BY_DEFAULT, KERNELS_ENV, Runtime, fused_kernels, kernel_mode

SOURCES = {
    "add_rms_norm_fwd": (norm.ROWS_FORWARD, {"eps": "1e-05f"}),
    "add_rms_norm_bwd": (norm.ROWS_BACKWARD, {"eps": "1e-05f"}),
    "add_rms_norm_seq_fwd": (norm.COLUMNS_FORWARD, {"eps": "1e-05f"}),
    "add_rms_norm_seq_bwd": (norm.COLUMNS_BACKWARD, {"eps": "1e-05f"}),
    "swiglu_bwd": (glu.BACKWARD, {}),
    "rope_split_fwd": (rope.FORWARD, {"rotate": rope.ROTATE_FORWARD}),
    "rope_split_bwd": (rope.BACKWARD, {"rotate": rope.ROTATE_BACKWARD}),
    "rope_split_fwd_norope": (rope.FORWARD, {"rotate": ""}),
    "inject_add": (injection.FORWARD, {}),
}
CUDA_ONLY = ("threadIdx", "blockIdx", "blockDim", "__syncthreads", "__shared__", "__shfl", "expf", "rsqrtf")
METAL_ONLY = ("threadgroup", "thread_position", "simdgroup", "metal::", "device ", "thread_index")
# The thread attributes mx.fast.metal_kernel recognises in a body (and adds to the signature).
METAL_ATTRIBUTES = {
    "thread_position_in_grid", "thread_position_in_threadgroup", "threadgroup_position_in_grid",
    "thread_index_in_simdgroup", "simdgroup_index_in_threadgroup", "threads_per_threadgroup",
}


# --------------------------------------------------------------------------------------------- generated sources


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_body_renders_for_both_backends(name):
    body, constants = SOURCES[name]
    cuda = codegen.render(body, "cuda", **constants)
    metal = codegen.render(body, "metal", **constants)
    assert "$" not in cuda and "$" not in metal
    assert not [t for t in METAL_ONLY if t in cuda], cuda
    assert not [t for t in CUDA_ONLY if t in metal], metal
    barriers = body.count("$barrier")
    assert cuda.count("__syncthreads()") == barriers
    assert metal.count("threadgroup_barrier(mem_flags::mem_threadgroup)") == barriers
    used = set(re.findall(r"\b(thread\w*|simdgroup\w*)\b", metal)) - {"threadgroup", "threadgroup_barrier"}
    assert used <= METAL_ATTRIBUTES, used
    # Same source: stripping each backend's spellings of the placeholders leaves identical text.
    # (The address-space qualifier is empty on CUDA, so it is dropped from both.)
    canon = {k: ("" if k == "device" else f"@{k}@") for k in codegen.TOKENS["cuda"]}
    assert strip_tokens(cuda, "cuda") == strip_tokens(metal, "metal") == string.Template(body).substitute(
        canon, **constants
    )


def strip_tokens(text: str, backend: str) -> str:
    # Longest spellings first, so "threadgroup_barrier(...)" is not eaten by "threadgroup".
    for key, spelling in sorted(codegen.TOKENS[backend].items(), key=lambda kv: -len(kv[1])):
        if spelling:
            text = text.replace(spelling, "" if key == "device" else f"@{key}@")
    return text


def test_helpers_and_prelude_per_backend():
    assert "__shfl_xor_sync" in codegen.header("cuda") and "__device__" in codegen.header("cuda")
    assert "simd_sum" in codegen.header("metal") and "__" not in codegen.header("metal")
    assert "expf(-x)" in codegen.header("cuda") and "metal::exp(-x)" in codegen.header("metal")
    # Packed loads: one 16-byte transaction on CUDA where the address allows; Metal's take device-space pointers.
    assert "alignas(sizeof(T) * V) trm_pack" in codegen.header("cuda")
    assert "trm_load(const device T* p)" in codegen.header("metal") and "trm_pack" not in codegen.header("metal")
    with pytest.raises(ValueError, match="no kernel backend 'cpu'"):
        codegen.render("x", "cpu")
    with pytest.raises(KeyError):
        codegen.render("$no_such_token", "cuda")


def test_float_literals_read_the_same_in_both_languages():
    assert codegen.float_literal(1e-5) == "1e-05f"
    assert codegen.float_literal(1) == "1.0f"
    assert codegen.float_literal(0.25) == "0.25f"
    assert float(codegen.float_literal(1e-6)[:-1]) == 1e-6


def test_kernel_names_carry_the_rendered_source():
    a = codegen.kernel("t", "metal", norm.ROWS_FORWARD, ("x", "res"), ("out",), (("eps", "1e-05f"),))
    b = codegen.kernel("t", "metal", norm.ROWS_FORWARD, ("x", "res"), ("out",), (("eps", "1e-06f"),))
    assert a is not b
    assert a is codegen.kernel("t", "metal", norm.ROWS_FORWARD, ("x", "res"), ("out",), (("eps", "1e-05f"),))


def test_row_layout_covers_the_row():
    for width in (1, 31, 96, 128, 512, 1000, 4096, 8192):
        threads, per_thread = norm.rows_layout(width)
        assert threads % 32 == 0 and 32 <= threads <= 256
        assert threads * per_thread >= width > threads * (per_thread - 1)
        assert per_thread <= 32


# ------------------------------------------------------------------------------------------------------- policy


def test_kernel_mode_from_config_and_environment(monkeypatch):
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    assert kernel_mode("reference") == "reference"
    monkeypatch.setenv(KERNELS_ENV, "fused")
    assert kernel_mode("reference") == "fused"  # the environment wins
    monkeypatch.setenv(KERNELS_ENV, "fast")
    with pytest.raises(ValueError, match="TRM_MLX_KERNELS.*auto, fused, reference.*'fast'"):
        kernel_mode("auto")
    monkeypatch.delenv(KERNELS_ENV)
    with pytest.raises(ValueError, match="config"):
        kernel_mode("on")


def test_cpu_always_runs_the_reference(monkeypatch):
    monkeypatch.setattr(registry, "RESULTS", {})
    assert fused_kernels("fused", "cpu") == frozenset()
    assert not registry.RESULTS  # no self-check attempted where no kernel exists
    execution = Runtime("cpu", "fused").execution
    assert not execution.fused_kernels and execution.cpu_paths
    assert not Runtime("cpu", "reference").execution.cpu_paths


def test_auto_follows_the_measured_defaults(emulated, monkeypatch):
    monkeypatch.setitem(FUSED_BY_DEFAULT, "cuda", frozenset({"swiglu"}))
    assert fused_kernels("auto", "cuda") == {"swiglu"}
    assert fused_kernels("fused", "cuda") == set(kernels.OPS)
    assert fused_kernels("reference", "cuda") == frozenset()


def test_an_op_runs_fused_where_the_execution_says_and_its_dtypes_fit():
    x = mx.random.normal((2, 3, 8))
    assert kernels.use_fused("add_rms_norm", Execution(fused_kernels=frozenset({"add_rms_norm"})), x)
    assert not kernels.use_fused("add_rms_norm", Execution(fused_kernels=frozenset({"swiglu"})), x)
    assert not kernels.use_fused("add_rms_norm", Execution(fused_kernels=frozenset({"add_rms_norm"})),
                                 x.astype(mx.float64))  # fmt: skip
    assert kernels.kernel_dtypes(x.astype(mx.bfloat16), x.astype(mx.float16), x)
    assert not kernels.kernel_dtypes(x.astype(mx.float64)) and not kernels.kernel_dtypes(x.astype(mx.int32))


# ----------------------------------------------------- emulated launches: what each kernel computes, in plain MLX


def f32(a):
    return a.astype(mx.float32)


def residual_sum(x, res):
    return f32((f32(x) + f32(res)).astype(x.dtype))


def emulate_norm_forward(x, res, eps, axis):
    s = residual_sum(x, res)
    return (s * mx.rsqrt(mx.mean(s * s, axis=axis, keepdims=True) + eps)).astype(x.dtype)


def emulate_norm_backward(x, res, grad, eps, axis):
    s, g = residual_sum(x, res), f32(grad)
    n = s.shape[axis]
    rstd = mx.rsqrt(mx.mean(s * s, axis=axis, keepdims=True) + eps)
    return (rstd * g - rstd**3 * mx.sum(g * s, axis=axis, keepdims=True) / n * s).astype(x.dtype)


def emulate_glu_backward(gu, grad):
    i = gu.shape[1] // 2
    g, u, d = f32(gu[:, :i]), f32(gu[:, i:]), f32(grad)
    sig = mx.sigmoid(g)
    return mx.concatenate([d * u * sig * (1 + g * (1 - sig)), d * g * sig], axis=1).astype(gu.dtype)


def emulate_rope_launch(backward, arrays, tables, shape, num_heads):
    """rope.launch's contract in plain MLX: the forward writes the rotated heads (q, k, and v when padded) as
    [B, SP, heads, hd] with zero rows past S; the backward takes dq, dk, dv as [B, SP, H, hd]."""
    B, S, SP, hd = shape
    H, half = num_heads, hd // 2

    def rotate(x, inverse):  # x: [B, S, heads, hd] in fp32
        if not tables:
            return x
        cos, sin = (t[:, None, :] for t in tables)
        x1, x2 = x[..., :half], x[..., half:]
        c1, c2, s1, s2 = cos[..., :half], cos[..., half:], sin[..., :half], sin[..., half:]
        if inverse:
            return mx.concatenate([x1 * c1 + x2 * s2, x2 * c2 - x1 * s1], axis=-1)
        return mx.concatenate([x1 * c1 - x2 * s1, x2 * c2 + x1 * s2], axis=-1)

    dtype = arrays[0].dtype
    if not backward:
        heads = rope.written_heads(H, S, SP)
        x = f32(arrays[0]).reshape(B, S, 3 * H, hd)[:, :, :heads]
        y = mx.concatenate([rotate(x[:, :, : 2 * H], False), x[:, :, 2 * H :]], axis=2)
        return mx.pad(y, [(0, 0), (0, SP - S), (0, 0), (0, 0)]).astype(dtype)
    dq, dk, dv = (f32(a)[:, :S] for a in arrays)
    d = mx.concatenate([rotate(mx.concatenate([dq, dk], axis=2), True), dv], axis=2)
    return d.reshape(B, S, 3 * H * hd).astype(dtype)


@pytest.fixture
def emulated(monkeypatch, on_the_cpu):
    """Every kernel launch replaced by its emulation, so that the fused paths run "on CUDA" on the CPU device (exact
    fp32 everywhere, also on a GPU machine: no TF32 matrix products); counts the launches."""
    launches = []

    def counted(name, fn):
        def run(*args, **kw):
            launches.append(name)
            return fn(*args, **kw)

        return run

    monkeypatch.setattr(registry, "RESULTS", {})
    monkeypatch.setattr(norm, "rows_forward", counted("rows_fwd", lambda x, r, e: emulate_norm_forward(x, r, e, -1)))
    monkeypatch.setattr(
        norm, "rows_backward", counted("rows_bwd", lambda x, r, g, e: emulate_norm_backward(x, r, g, e, -1))
    )
    monkeypatch.setattr(
        norm, "columns_forward", counted("cols_fwd", lambda x, r, e: emulate_norm_forward(x, r, e, 1))
    )
    monkeypatch.setattr(
        norm, "columns_backward", counted("cols_bwd", lambda x, r, g, e: emulate_norm_backward(x, r, g, e, 1))
    )
    monkeypatch.setattr(glu, "backward", counted("glu_bwd", emulate_glu_backward))
    monkeypatch.setattr(rope, "launch", counted("rope", emulate_rope_launch))
    monkeypatch.setattr(
        injection, "forward", counted("inject", lambda h, i: (f32(h) + f32(i)).astype(h.dtype))
    )
    return launches


@pytest.mark.parametrize("name", sorted(kernels.OPS))
def test_fused_vjp_matches_reference_autodiff(emulated, name):
    op = kernels.OPS[name]
    forward, backward = registry.compare(op, mx.float32, mx.random.key(3))
    assert forward < 1e-6 and backward < 1e-5, (forward, backward)
    assert emulated, "the fused path never launched a kernel"


@pytest.mark.parametrize("positions", [0, 8])
def test_rope_without_tables_odd_sizes_and_padding(emulated, positions):
    qkv = mx.random.normal((3, 5, 3 * 3 * 8), key=mx.random.key(1))
    cot = [mx.random.normal((3, 3, max(positions, 5), 8), key=k) for k in mx.random.split(mx.random.key(2), 3)]
    for rotary in (None, rope.rotary_tables(5, 8)):
        static = {"rotary": rotary, "num_heads": 3, "positions": positions}
        expected = registry.outputs_and_vjp(rope.reference, (qkv,), static, cot)
        got = registry.outputs_and_vjp(rope.fused, (qkv,), static, cot)
        for a, b in zip(got[0] + got[1], expected[0] + expected[1]):
            np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)


def test_self_check_leaves_out_a_wrong_kernel_once(emulated, monkeypatch):
    monkeypatch.setattr(glu, "backward", lambda gu, grad: emulate_glu_backward(gu, grad) * 1.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = fused_kernels("fused", "cuda"), fused_kernels("fused", "cuda")
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "'swiglu' disabled on cuda" in messages[0] and "float32 error" in messages[0]
    assert first == second == set(kernels.OPS) - {"swiglu"}
    assert not registry.RESULTS[("swiglu", "cuda")].ok
    gu = mx.random.normal((4, 64))
    execution = Runtime("cuda", "fused", first).execution
    got = mx.vjp(lambda g: kernels.swiglu(g, execution), [gu], [mx.ones((4, 32))])
    expected = mx.vjp(glu.reference, [gu], [mx.ones((4, 32))])
    np.testing.assert_array_equal(np.array(got[1][0]), np.array(expected[1][0]))


def test_self_check_leaves_out_a_kernel_that_fails_to_compile(emulated, monkeypatch):
    def broken(*args):
        raise RuntimeError("Failed to compile kernel: expected ';'\nmore lines")

    monkeypatch.setattr(norm, "rows_forward", broken)
    with pytest.warns(RuntimeWarning, match="'add_rms_norm' disabled on cuda \\(failed to run: Failed to compile"):
        chosen = fused_kernels("fused", "cuda")
    assert "add_rms_norm" not in chosen
    x, r = mx.random.normal((2, 3, 32)), mx.random.normal((2, 3, 32))
    out = kernels.add_rms_norm(x, r, 1e-5, Runtime("cuda", "fused", chosen).execution)
    np.testing.assert_array_equal(np.array(out), np.array(norm.reference_rows(x, r, 1e-5)))


def test_self_check_catches_nan(emulated, monkeypatch):
    monkeypatch.setattr(injection, "forward", lambda h, i: h * mx.nan)
    result = registry.check(kernels.OPS["inject_add"])
    assert not result.ok and "nan" in result.detail


def test_self_check_leaves_the_global_random_state(emulated):
    mx.random.seed(7)
    before = mx.random.uniform(shape=(3,))
    mx.random.seed(7)
    assert registry.check(kernels.OPS["add_rms_norm"]).ok
    np.testing.assert_array_equal(np.array(mx.random.uniform(shape=(3,))), np.array(before))


def tiny_step(arch_overrides, mode, recompute=0.0):
    """Loss and gradients of one ACT step of a tiny fp32 model under one kernel mode, "on CUDA"."""
    execution = Runtime("cuda", mode, fused_kernels(mode, "cuda"), recompute=recompute).execution
    arch = dict(
        seq_len=12, vocab_size=7, num_puzzle_identifiers=3, puzzle_emb_ndim=32, H_cycles=2, L_cycles=2,
        L_layers=2, hidden_size=32, expansion=2, num_heads=4, pos_encodings="rope", halt_max_steps=2,
        halt_exploration_prob=0.0, forward_dtype="float32",
    )
    arch.update(arch_overrides)
    mx.random.seed(0)
    head = ACTLossHead(create_model(arch, execution))
    model = head.model
    rng = np.random.default_rng(0)
    batch = {
        "inputs": mx.array(rng.integers(1, 7, (3, 12)), dtype=mx.int32),
        "labels": mx.array(rng.integers(1, 7, (3, 12)), dtype=mx.int32),
        "puzzle_identifiers": mx.array([0, 1, 2], dtype=mx.int32),
    }
    carry = model.reset_halted(model.initial_carry(batch), batch)

    def loss_fn(params):
        head.update(params)
        return head.loss_and_metrics(model(carry))[0]

    loss, grads = mx.value_and_grad(loss_fn)(head.trainable_parameters())
    mx.eval(loss, grads)
    return loss, grads


@pytest.mark.parametrize("recompute", [0.0, 1.0])
@pytest.mark.parametrize("variant", [{}, {"mlp_t": True, "pos_encodings": "none"}])
def test_model_fused_equals_reference(emulated, variant, recompute):
    """On "CUDA" (emulated launches): every fused path, the padded attention and the token mixing, with and without
    block recomputation, against the reference path without it."""
    from mlx.utils import tree_flatten

    ref_loss, ref_grads = tiny_step(variant, "reference")
    assert not emulated
    loss, grads = tiny_step(variant, "fused", recompute)
    expected = {"rows_fwd", "rows_bwd", "glu_bwd", "inject"}
    expected |= {"cols_fwd", "cols_bwd"} if variant else {"rope"}
    assert expected <= set(emulated)
    assert all(result.ok for result in registry.RESULTS.values())  # no op fell back to its reference
    np.testing.assert_allclose(loss.item(), ref_loss.item(), rtol=1e-5)
    for (name, g), (_, r) in zip(tree_flatten(grads), tree_flatten(ref_grads)):
        np.testing.assert_allclose(np.array(g), np.array(r), rtol=2e-4, atol=2e-6, err_msg=name)


@pytest.mark.parametrize("length", [13, 16])
def test_token_mixing_without_transposes_equals_the_reference(length):
    """kernels.mix_tokens (h's layout, inner size padded to a multiple of 8) against the spec's mlp_t(h^T)^T."""
    from trm_mlx.model.layers import SwiGLU

    mx.random.seed(3)
    mlp_t = SwiGLU(length, 2.0, Execution())
    h = mx.random.normal((3, length, 24))
    cot = mx.random.normal((3, length, 24))
    weights = [mlp_t.gate_up_proj.weight, mlp_t.down_proj.weight]

    def ours(h, w_gu, w_down):
        return kernels.mix_tokens(h, w_gu, w_down, Execution())

    def reference(h, w_gu, w_down):
        mlp_t.update({"gate_up_proj": {"weight": w_gu}, "down_proj": {"weight": w_down}})
        return mlp_t(h.swapaxes(1, 2)).swapaxes(1, 2)

    (out,), grads = mx.vjp(ours, [h, *weights], [cot])
    (ref,), ref_grads = mx.vjp(reference, [h, *weights], [cot])
    np.testing.assert_allclose(np.array(out), np.array(ref), rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.array(g), np.array(r), rtol=1e-4, atol=1e-5)
