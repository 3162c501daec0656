"""The CPU-only fast paths: half-precision CastedLinear through fp32 products, and the exp-based ops of
trm_mlx.kernels.cpu (exp, sigmoid, SwiGLU, softmax, attention, token mixing, head split) against float64 NumPy,
float64 PyTorch autograd and MLX's own ops."""

import os
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
import torch

from trm_mlx import blas, kernels
from trm_mlx.kernels import cpu, glu, rope
from trm_mlx.lanes import cpu_cores
from trm_mlx.model.layers import CastedLinear, SwiGLU
from trm_mlx.runtime import CPU_TAPE_WIDTH, Runtime

pytestmark = pytest.mark.usefixtures("on_the_cpu")  # the paths run on the CPU device, also on a GPU machine
CPU = Runtime("cpu").execution

HALF = {"bfloat16": mx.bfloat16, "float16": mx.float16}
ULP = {"bfloat16": 2.0**-7, "float16": 2.0**-10}  # spacing at 1.0: an upper bound of one rounding, relative


def as_f64(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32), dtype=np.float64)


def relative_error(got: mx.array, expected) -> float:
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.linalg.norm(as_f64(got) - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize("dtype_name", sorted(HALF))
@pytest.mark.parametrize("bias", [False, True])
def test_half_casted_linear_is_the_rounded_exact_product(dtype_name, bias):
    dtype = HALF[dtype_name]
    mx.random.seed(1)
    lin = CastedLinear(384, 48, CPU, bias=bias)
    if bias:
        lin.bias = mx.random.normal((48,))
    x = mx.random.normal((2, 5, 384)).astype(dtype)
    y = lin(x)
    assert y.dtype == dtype and y.shape == (2, 5, 48)
    exact = as_f64(x) @ as_f64(lin.weight.astype(dtype)).T
    if bias:
        exact = exact + as_f64(lin.bias.astype(dtype))
    # One rounding of the exact product of the rounded operands: within half an ulp of it (plus fp32 summation).
    tolerance = 0.5 * ULP[dtype_name] * np.abs(exact) + 1e-5
    assert np.all(np.abs(as_f64(y) - exact) <= tolerance)
    # MLX's own (slow) half-precision CPU product also accumulates in fp32: the fast path changes speed only.
    w = lin.weight.astype(dtype)
    native = mx.addmm(lin.bias.astype(dtype), x.reshape(-1, 384), w.T).reshape(y.shape) if bias else x @ w.T
    assert np.all(np.abs(as_f64(y) - as_f64(native)) <= ULP[dtype_name] * np.abs(as_f64(native)))


def test_bf16_casted_linear_gradients_match_the_bf16_product():
    mx.random.seed(2)
    lin = CastedLinear(256, 32, CPU, bias=True)
    lin.bias = mx.random.normal((32,))
    x = mx.random.normal((6, 256)).astype(mx.bfloat16)
    cotangent = mx.random.normal((6, 32)).astype(mx.bfloat16)

    def fast(x, weight, bias):
        lin.weight, lin.bias = weight, bias
        return lin(x)

    def native(x, weight, bias):
        return mx.addmm(bias.astype(mx.bfloat16), x, weight.astype(mx.bfloat16).T)

    primals = [x, lin.weight, lin.bias]
    _, fast_grads = mx.vjp(fast, primals, [cotangent])
    _, native_grads = mx.vjp(native, primals, [cotangent])
    for got, expected in zip(fast_grads, native_grads):
        assert got.dtype == expected.dtype
        assert mx.array_equal(got, expected).item()
    assert mx.abs(fast_grads[1]).max().item() > 0


# ------------------------------------------------------------------------------------------- exp-based ops


def test_exp_matches_float64_over_the_whole_fp32_range():
    mx.random.seed(4)
    x = mx.concatenate([mx.linspace(-87.0, 88.0, 200_001), mx.random.normal((100_000,)) * 5])
    got = as_f64(cpu.exp(x))
    expected = np.exp(as_f64(x))
    assert np.max(np.abs(got - expected) / expected) < 3e-7  # mx.exp's own error is about 1.6e-6
    assert cpu.exp(mx.array([0.0])).item() == 1.0


def test_exp_saturates_and_keeps_nan():
    got = np.array(cpu.exp(mx.array([-np.inf, -1000.0, 1000.0, np.inf, np.nan])))
    assert 0 <= got[0] < 2e-38 and 0 <= got[1] < 2e-38
    assert 1e38 < got[2] < np.inf and 1e38 < got[3] < np.inf
    assert np.isnan(got[4])


def test_sigmoid_matches_float64_and_saturates():
    x = mx.linspace(-100.0, 100.0, 100_001)
    got = as_f64(cpu.sigmoid(x))
    expected = 1.0 / (1.0 + np.exp(-as_f64(x)))
    assert np.max(np.abs(got - expected)) < 2e-7
    assert got[0] < 1e-38 and got[-1] == 1.0


def silu_gate_f64(gu: np.ndarray, d: np.ndarray):
    """silu(gate) * up and its input gradient for cotangent d, in float64."""
    gate, up = np.split(gu, 2, axis=-1)
    s = 1.0 / (1.0 + np.exp(-gate))
    out = gate * s * up
    d_gate = d * up * s * (1.0 + gate * (1.0 - s))
    return out, np.concatenate([d_gate, d * gate * s], axis=-1)


@pytest.mark.parametrize("dtype_name, tolerance", [("float32", 1e-6), ("bfloat16", 1e-2)])
def test_swiglu_values_and_gradient(dtype_name, tolerance):
    dtype = getattr(mx, dtype_name)
    mx.random.seed(5)
    gu = (mx.random.normal((3, 7, 2 * 96)) * 4).astype(dtype)
    cotangent = mx.random.normal((3, 7, 96)).astype(dtype)
    (out,), (grad,) = mx.vjp(cpu.swiglu, [gu], [cotangent])
    expected_out, expected_grad = silu_gate_f64(as_f64(gu), as_f64(cotangent))
    assert out.dtype == dtype and grad.dtype == dtype
    assert relative_error(out, expected_out) < tolerance
    assert relative_error(grad, expected_grad) < tolerance


def test_softmax_values_and_gradient_match_mlx_softmax():
    mx.random.seed(6)
    x = mx.random.normal((4, 3, 97, 97)) * 6
    cotangent = mx.random.normal(x.shape)
    (got,), (grad,) = mx.vjp(cpu.softmax, [x], [cotangent])
    x64 = as_f64(x)
    e = np.exp(x64 - x64.max(axis=-1, keepdims=True))
    assert relative_error(got, e / e.sum(axis=-1, keepdims=True)) < 1e-6
    _, (expected_grad,) = mx.vjp(lambda a: mx.softmax(a, axis=-1, precise=True), [x], [cotangent])
    assert relative_error(grad, as_f64(expected_grad)) < 1e-5


@pytest.mark.parametrize("dtype_name, tolerance", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_attention_matches_mlx_attention(dtype_name, tolerance):
    """Values and q/k/v gradients against MLX's own attention computed in fp32."""
    dtype = getattr(mx, dtype_name)
    mx.random.seed(7)
    q, k, v = (mx.random.normal((2, 3, 33, 16)).astype(dtype) for _ in range(3))
    cotangent = mx.random.normal((2, 3, 33, 16)).astype(dtype)
    scale = 0.25

    def reference(*qkv):
        q32, k32, v32 = (a.astype(mx.float32) for a in qkv)
        return mx.fast.scaled_dot_product_attention(q32, k32, v32, scale=scale)

    (out,), grads = mx.vjp(lambda *a: cpu.attention(*a, scale=scale), [q, k, v], [cotangent])
    (expected,), expected_grads = mx.vjp(reference, [q, k, v], [cotangent.astype(mx.float32)])
    assert out.dtype == dtype
    assert relative_error(out, as_f64(expected)) < tolerance
    for got, want in zip(grads, expected_grads):
        assert relative_error(got, as_f64(want)) < tolerance


def torch_vjp(fn, primals: list, cotangent: mx.array):
    """fn's value and gradients in float64 PyTorch autograd (fn takes and returns torch tensors)."""
    leaves = [torch.tensor(as_f64(p), requires_grad=True) for p in primals]
    out = fn(*leaves)
    out.backward(torch.tensor(as_f64(cotangent)))
    return out.detach().numpy(), [leaf.grad.numpy() for leaf in leaves]


@pytest.mark.parametrize("dtype_name, tolerance", [("float32", 1e-6), ("bfloat16", 2e-2)])
def test_token_mixing_matches_the_transposed_mixing_in_float64(dtype_name, tolerance):
    """The original's mixing (spec §2.4.7: rms_norm(t + down(swiglu(gate_up(t)))) on t = h^T), values and the
    gradients of h and both weights."""
    dtype = getattr(mx, dtype_name)
    mx.random.seed(9)
    B, S, D, eps = 3, 97, 40, 1e-5
    mlp_t = SwiGLU(S, 4.0, CPU)  # I = 512
    h = mx.random.normal((B, S, D)).astype(dtype)
    cotangent = mx.random.normal((B, S, D)).astype(dtype)

    def original(h, w_gu, w_down):
        t = h.transpose(1, 2)
        gate, up = (t @ w_gu.T).chunk(2, dim=-1)
        x = t + (torch.nn.functional.silu(gate) * up) @ w_down.T
        return (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)).transpose(1, 2)

    primals = [h, mlp_t.gate_up_proj.weight, mlp_t.down_proj.weight]
    (out,), grads = mx.vjp(lambda *a: cpu.token_mixing(*a, eps), primals, [cotangent])
    expected, expected_grads = torch_vjp(original, primals, cotangent)
    assert out.dtype == dtype and grads[0].dtype == dtype
    assert relative_error(out, expected) < tolerance
    for got, want in zip(grads, expected_grads):
        assert relative_error(got, want) < tolerance
    assert mx.array_equal(kernels.token_mixing(h, mlp_t, eps, CPU), out).item()  # the CPU dispatch


@pytest.mark.parametrize("with_rope", [True, False])
@pytest.mark.parametrize("dtype_name, tolerance", [("float32", 1e-7), ("bfloat16", 1e-2)])
def test_split_heads_matches_the_rotated_slices_in_float64(with_rope, dtype_name, tolerance):
    """q, k, v of the packed projection (RoPE with rotate_half on q and k) and the packed gradient, whose q, k
    and v blocks are each slice's gradient rotated back."""
    dtype = getattr(mx, dtype_name)
    mx.random.seed(10)
    B, S, H, hd = 2, 13, 3, 16
    rotary = rope.rotary_tables(S, hd) if with_rope else None
    qkv = mx.random.normal((B, S, 3 * H * hd)).astype(dtype)
    cotangents = [mx.random.normal((B, H, S, hd)).astype(dtype) for _ in range(3)]
    packed = mx.concatenate([c.transpose(0, 2, 1, 3) for c in cotangents], axis=2).reshape(qkv.shape)
    cos, sin = (torch.tensor(as_f64(t))[:, None, :] for t in rotary) if with_rope else (None, None)

    def original(qkv):
        q, k, v = qkv.view(B, S, 3 * H, hd).split(H, dim=2)
        if with_rope:
            q, k = (x * cos + torch.cat([-x[..., hd // 2 :], x[..., : hd // 2]], dim=-1) * sin for x in (q, k))
        return torch.cat([q, k, v], dim=2).reshape(qkv.shape)

    outs, (grad,) = mx.vjp(lambda x: cpu.split_heads(x, rotary, H), [qkv], cotangents)
    expected, (expected_grad,) = torch_vjp(original, [qkv], packed)
    got = mx.concatenate([o.transpose(0, 2, 1, 3) for o in outs], axis=2).reshape(qkv.shape)
    assert all(o.dtype == dtype and o.shape == (B, H, S, hd) for o in outs) and grad.dtype == dtype
    assert relative_error(got, expected) < tolerance
    assert relative_error(grad, expected_grad) < tolerance
    assert all(mx.array_equal(a, b).item() for a, b in zip(kernels.split_heads(qkv, rotary, H, S, CPU), outs))


def test_dispatch_uses_the_cpu_path_except_in_reference_mode():
    mx.random.seed(8)
    gu = mx.random.normal((5, 2 * 64))
    fast, reference = Runtime("cpu", "auto").execution, Runtime("cpu", "reference").execution
    assert cpu.enabled(fast, gu) and not cpu.enabled(fast, mx.zeros((2,), mx.float64))
    assert mx.array_equal(kernels.swiglu(gu, fast), cpu.swiglu(gu)).item()
    assert not cpu.enabled(reference, gu)
    assert mx.array_equal(kernels.swiglu(gu, reference), glu.reference(gu)).item()


# ------------------------------------------------------------------------------------------- freed memory kept

FAULTS_SCRIPT = """
import resource, sys
import mlx.core as mx
if sys.argv[1] == "runtime":
    from trm_mlx.runtime import Runtime
    Runtime.create(device="cpu")  # keeps freed memory
x = mx.random.normal((10 << 20,))
step = lambda: mx.eval((x * 2) * 3 + 1)  # 40 MB intermediates, freed every time
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_cpu_runtime_stops_page_faults_on_reused_memory():
    """Plain MLX faults in fresh pages for every large intermediate (glibc maps blocks over 32 MB anew each time);
    in a process with a CPU runtime they are reused."""

    def faults(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True)
        return int(run.stdout.split()[-1])

    plain, kept = faults("plain"), faults("runtime")
    assert plain > 10 * 10_000  # at least one fresh 40 MB block (10,240 pages) per step
    assert kept < plain / 10


def test_the_blas_line_names_the_openblas_kernels():
    """The backend's description (in the trainer's first log line) names the OpenBLAS core, which OPENBLAS_CORETYPE
    can force."""
    code = ("from trm_mlx import blas; blas.load_fast_blas(); from trm_mlx.runtime import Runtime; "
            "print(blas.openblas_core()); print(Runtime.create(device='cpu').describe_backend())")
    run = lambda env: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    ).stdout.splitlines()
    base = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    core, line = run(base)
    if core == "None":
        pytest.skip("the loaded BLAS is not OpenBLAS (install libopenblas0-pthread)")
    assert f"OpenBLAS {core} kernels" in line and "forced" not in line
    forced_core, forced_line = run({**base, "OPENBLAS_CORETYPE": "Sandybridge"})
    assert forced_core == "Sandybridge"
    assert "OpenBLAS Sandybridge kernels forced by OPENBLAS_CORETYPE" in forced_line


def test_choosing_the_cpu_widens_the_tape_for_lanes(monkeypatch):
    """`device=cpu`: the runtime sets the tape width that lets CPU lanes run at once; a user's value stays."""
    monkeypatch.delenv("MLX_BFS_MAX_WIDTH", raising=False)
    assert Runtime.create(device="cpu").backend == "cpu"
    assert mx.default_device() == mx.cpu
    assert os.environ["MLX_BFS_MAX_WIDTH"] == str(CPU_TAPE_WIDTH)
    monkeypatch.setenv("MLX_BFS_MAX_WIDTH", "64")
    Runtime.create(device="cpu")
    assert os.environ["MLX_BFS_MAX_WIDTH"] == "64"


def test_lanes_share_the_openblas_threads_out():
    """Each lane's products run on its share of OpenBLAS's threads, for evaluation as for training (unshared, every
    lane's products claim all the cores at once)."""
    import ctypes

    from trm_mlx.lanes import Lanes

    if blas.openblas_core() is None:
        pytest.skip("the loaded BLAS is not OpenBLAS (install libopenblas0-pthread)")
    threads = ctypes.CDLL(blas.loaded).openblas_get_num_threads
    try:
        Lanes(2)
        assert threads() == max(1, cpu_cores() // 2)
    finally:
        blas.set_threads(cpu_cores())
