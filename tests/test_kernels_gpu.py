"""The fused kernels themselves, on a GPU: forward and gradients against the reference over random shapes and
dtypes, bit-for-bit determinism, the self-check inside a compiled gradient, and a whole model step.

Skipped on the CPU (MLX has no custom kernels there); run on the GPU machine (docs/BENCHMARKS.md says how).
"""

import mlx.core as mx
import numpy as np
import pytest

from devices import cpu_default_device
from trm_mlx import kernels
from trm_mlx.kernels import codegen, norm, registry, rope
from trm_mlx.model import ACTLossHead, Execution, create_model
from trm_mlx.runtime import ATTENTION_TILE, Runtime, fused_kernels

pytestmark = pytest.mark.skipif(mx.default_device() == mx.cpu, reason="needs a CUDA or Metal GPU")

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16}


def normal(key, shape, dtype, scale=1.0):
    return (scale * mx.random.normal(shape, key=key)).astype(dtype)


def norm_inputs(shape):
    def make(key, dtype):
        kx, kr = mx.random.split(key)
        return (normal(kx, shape, dtype), normal(kr, shape, dtype, 0.5)), {"eps": 1e-5}

    return make


def glu_inputs(shape):
    return lambda key, dtype: ((normal(key, shape, dtype, 2.0),), {})


def rope_inputs(B, S, H, hd, with_tables, positions=0):
    def make(key, dtype):
        tables = rope.rotary_tables(S, hd) if with_tables else None
        return (normal(key, (B, S, 3 * H * hd), dtype),), {"rotary": tables, "num_heads": H, "positions": positions}

    return make


def inject_inputs(shape):
    def make(key, dtype):
        kh, ki = mx.random.split(key)
        return (normal(kh, shape, dtype), normal(ki, shape, dtype)), {}

    return make


# Odd sizes on purpose: partial warps and threadgroups, rows shorter than a threadgroup, one-row batches. (A norm
# over a single element has a gradient of ~eps: pure cancellation, so its relative error says nothing.)
CASES = {
    "add_rms_norm": [(1, 1, 3), (7, 33, 96), (2, 97, 512), (3, 5, 1000), (4, 2048)],
    "add_rms_norm_seq": [(1, 2, 8), (2, 97, 512), (3, 17, 33), (2, 300, 64)],
    "swiglu": [(5, 512), (3, 7, 3072), (2, 97, 200), (1, 2)],
    "rope_split": [
        (2, 97, 8, 64, True), (1, 5, 3, 32, False), (3, 17, 1, 16, True), (2, 13, 2, 128, True),
        (2, 100, 2, 64, True, 128),  # the padded layout of attention training on CUDA
        (1, 7, 2, 12, True, 9),  # hd/2 = 6: no whole 16-byte packs, one column a thread
    ],
    "inject_add": [(1,), (3, 7, 96), (2, 916, 512)],
}
MAKERS = {
    "add_rms_norm": norm_inputs,
    "add_rms_norm_seq": norm_inputs,
    "swiglu": glu_inputs,
    "rope_split": lambda case: rope_inputs(*case),
    "inject_add": inject_inputs,
}


def case_ids():
    return [(name, i) for name, cases in CASES.items() for i in range(len(cases))]


@pytest.fixture(autouse=True)
def fresh_checks(monkeypatch):
    monkeypatch.setattr(registry, "RESULTS", {})


def test_every_self_check_passes():
    results = kernels.check_all(codegen.GPU)
    assert all(r.ok for r in results.values()), {k: r.detail for k, r in results.items() if not r.ok}


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("name,index", case_ids())
def test_fused_matches_reference(name, index, dtype):
    base = kernels.OPS[name]
    op = registry.FusedOp(base.name, base.summary, base.reference, base.fused, MAKERS[name](CASES[name][index]))
    forward, backward = registry.compare(op, DTYPES[dtype], mx.random.key(1000 * index + len(name)))
    tolerance = registry.TOLERANCE[dtype]
    assert forward <= tolerance and backward <= tolerance, (forward, backward)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fused_is_deterministic(name):
    op = kernels.OPS[name]
    arrays, static = MAKERS[name](CASES[name][-1])(mx.random.key(5), mx.bfloat16)
    out = op.reference(*arrays, **static)
    outs = list(out) if isinstance(out, tuple) else [out]
    cots = [normal(k, o.shape, o.dtype) for o, k in zip(outs, mx.random.split(mx.random.key(6), len(outs)))]
    first = registry.outputs_and_vjp(op.fused, arrays, static, cots)
    second = registry.outputs_and_vjp(op.fused, arrays, static, cots)
    for a, b in zip(first[0] + first[1], second[0] + second[1]):
        a, b = np.array(a.view(mx.uint16)), np.array(b.view(mx.uint16))
        assert np.array_equal(a, b)


def test_fused_norm_inside_a_compiled_gradient():
    execution = Execution(fused_kernels=fused_kernels("fused", codegen.GPU))
    assert "add_rms_norm" in execution.fused_kernels  # passed its self-check
    x, r = normal(mx.random.key(1), (4, 9, 512), mx.bfloat16), normal(mx.random.key(2), (4, 9, 512), mx.bfloat16)

    def loss(norm_fn):
        return lambda x, r: norm_fn(x, r, 1e-5).astype(mx.float32).square().sum()

    fused = lambda x, r, eps: kernels.add_rms_norm(x, r, eps, execution)  # noqa: E731
    got = mx.compile(mx.value_and_grad(loss(fused), argnums=(0, 1)))(x, r)
    ref = mx.value_and_grad(loss(norm.reference_rows), argnums=(0, 1))(x, r)
    assert registry.relative_error(got[0], ref[0]) < 1e-2
    for a, b in zip(got[1], ref[1]):
        assert registry.relative_error(a, b) < 1e-2


@pytest.mark.parametrize("variant", [{}, {"mlp_t": True, "pos_encodings": "none"}])
def test_model_step_fused_vs_reference(variant):
    """One ACT step's loss and gradients, fused and reference, each against an fp32 CPU result. GPU matrix products
    (their summation order) and bf16 rounding move both paths; the fused one must be no less accurate than the
    reference."""
    from mlx.utils import tree_flatten

    def step(runtime, dtype):
        arch = dict(
            seq_len=30, vocab_size=11, num_puzzle_identifiers=4, puzzle_emb_ndim=64, H_cycles=2, L_cycles=2,
            L_layers=2, hidden_size=64, expansion=4, num_heads=4, pos_encodings="rope", halt_max_steps=2,
            halt_exploration_prob=0.0, forward_dtype=dtype,
        )
        arch.update(variant)
        mx.random.seed(0)
        head = ACTLossHead(create_model(arch, runtime.execution))
        model, inner = head.model, head.model.inner
        for name in inner.state_inits.values():  # the same (bf16-representable) initial states for every run
            setattr(inner, name, getattr(inner, name).astype(mx.bfloat16).astype(getattr(mx, dtype)))
        rng = np.random.default_rng(0)
        batch = {
            "inputs": mx.array(rng.integers(1, 11, (6, 30)), dtype=mx.int32),
            "labels": mx.array(rng.integers(1, 11, (6, 30)), dtype=mx.int32),
            "puzzle_identifiers": mx.array(rng.integers(0, 4, (6,)), dtype=mx.int32),
        }
        carry = model.reset_halted(model.initial_carry(batch), batch)

        def loss_fn(params):
            head.update(params)
            return head.loss_and_metrics(model(carry))[0]

        loss, grads = mx.value_and_grad(loss_fn)(head.trainable_parameters())
        mx.eval(loss, grads)
        return {"loss": loss, **dict(tree_flatten(grads))}

    with cpu_default_device():
        truth = {k: np.array(v.astype(mx.float32)) for k, v in step(Runtime("cpu", "reference"), "float32").items()}
    gpu_reference = Runtime(codegen.GPU, "reference")
    gpu_fused = Runtime(codegen.GPU, "fused", fused_kernels("fused", codegen.GPU))
    for dtype, slack in (("float32", 1e-5), ("bfloat16", 1e-3)):
        reference, fused = step(gpu_reference, dtype), step(gpu_fused, dtype)
        assert all(r.ok for r in registry.RESULTS.values())
        for name, value in fused.items():
            expected = mx.array(truth[name])
            fused_error = registry.relative_error(value, expected)
            reference_error = registry.relative_error(reference[name], expected)
            assert fused_error <= 1.5 * reference_error + slack, (dtype, name, fused_error, reference_error)


@pytest.mark.parametrize("length", [100, 916])
def test_padded_attention_matches_the_unpadded_one(length):
    """A training step on CUDA splits q, k, v into a layout padded to the fused backward's tile and masks the padded
    keys (model.layers.fused_attention); its values and gradients must match the unpadded attention (whose
    backward materialises the scores)."""
    from trm_mlx.model import layers

    positions = length + (-length % ATTENTION_TILE["cuda"])
    execution = Execution(fused_kernels=fused_kernels("fused", codegen.GPU))
    qkv = normal(mx.random.key(11), (2, length, 3 * 4 * 64), mx.bfloat16)
    cot = normal(mx.random.key(12), (2, 4, length, 64), mx.bfloat16)
    tables = rope.rotary_tables(length, 64)

    def attend(qkv, positions):
        q, k, v = kernels.split_heads(qkv, tables, 4, positions, execution)
        return layers.fused_attention(q, k, v, 0.125, length)[:, :, :length]

    got = mx.vjp(lambda x: attend(x, positions), [qkv], [cot])
    want = mx.vjp(lambda x: attend(x, length), [qkv], [cot])
    mx.eval(got, want)
    for a, b in zip(got[0] + got[1], want[0] + want[1]):
        assert registry.relative_error(a, b) < 1e-2


@pytest.mark.parametrize("offset", [0, 1])
def test_swiglu_backward_of_a_view_at_any_address(offset):
    """The SwiGLU backward loads 16-byte packs where the address allows; a view starting one element into its
    buffer must take the element-wise path and give the same gradient."""
    from trm_mlx.kernels import glu

    rows, half = 6, 64
    flat = normal(mx.random.key(3), (rows * 2 * half + 1,), mx.bfloat16, 2.0)
    gu = flat[offset : offset + rows * 2 * half].reshape(rows, 2 * half)
    grad = normal(mx.random.key(4), (rows, half), mx.bfloat16)
    got = glu.backward(gu, grad)
    want = mx.vjp(glu.reference, [gu], [grad])[1][0]
    assert registry.relative_error(got, want) < registry.TOLERANCE["bfloat16"]
