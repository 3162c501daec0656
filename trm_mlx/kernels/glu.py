"""The SwiGLU gate on the gate/up projection's output (spec §2.4.6): `silu(gate) * up`, with a fused backward.

The projection writes [..., 2I] (first half gate, second half up). The forward is the reference's: under
`mx.compile` MLX fuses it into one vectorised element-wise kernel, which beat a scalar-load kernel here (H100, bf16,
[768, 97, 3072]: 0.314 against 0.458 ms, docs/BENCHMARKS.md). The backward kernel reads gu and the output gradient
once and writes the [..., 2I] gradient in fp32 math with one rounding, in place of the reference's two half-size
gradients, their intermediate products and their concatenation.
"""

import mlx.core as mx
import mlx.nn as nn

from . import codegen, cpu
from .registry import FusedOp, register, use_fused

THREADS = 256

# Each thread takes V consecutive output units (one 16-byte pack where I allows), so a warp's loads and stores are
# contiguous and wide. Vector v is (row, column) = (v / (I/V), v % (I/V) * V); its gate sits at row * 2I + column,
# its up I further on. d gate = d * up * sigmoid(g) * (1 + g * (1 - sigmoid(g))), d up = d * silu(g).
BACKWARD = """
const int64_t per_row = I / V;
const int64_t v = $global_thread;
if (v < static_cast<int64_t>(gu_shape[0]) * per_row) {
  const int64_t row = v / per_row;
  const int64_t column = (v - row * per_row) * V;
  const int64_t gi = row * (2 * I) + column;
  const trm_floats<V> g = trm_load<T, V>(gu + gi);
  const trm_floats<V> u = trm_load<T, V>(gu + gi + I);
  const trm_floats<V> d = trm_load<T, V>(grad + row * I + column);
  trm_floats<V> d_gate;
  trm_floats<V> d_up;
  for (int k = 0; k < V; ++k) {
    const float sig = trm_sigmoid(g.v[k]);
    d_gate.v[k] = d.v[k] * u.v[k] * sig * (1.0f + g.v[k] * (1.0f - sig));
    d_up.v[k] = d.v[k] * g.v[k] * sig;
  }
  trm_store<T, V>(out + gi, d_gate);
  trm_store<T, V>(out + gi + I, d_up);
}
"""


def backward(gu: mx.array, grad: mx.array) -> mx.array:
    """d gu [rows, 2I] of gu [rows, 2I] and the output gradient [rows, I]."""
    rows, width = gu.shape
    half = width // 2
    per_thread = codegen.vector_width(half, gu.dtype)
    kernel = codegen.kernel("swiglu_bwd", codegen.GPU, BACKWARD, ("gu", "grad"), ("out",))
    threads = rows * half // per_thread
    return kernel(
        inputs=[gu, grad],
        template=[("T", gu.dtype), ("I", half), ("V", per_thread)],
        grid=(-(-threads // THREADS) * THREADS, 1, 1),
        threadgroup=(THREADS, 1, 1),
        output_shapes=[gu.shape],
        output_dtypes=[gu.dtype],
    )[0]


def reference(gu: mx.array) -> mx.array:
    gate, up = mx.split(gu, 2, axis=-1)
    return nn.silu(gate) * up


def fused(gu: mx.array) -> mx.array:
    shape = gu.shape

    @mx.custom_function
    def gated(gu2):
        return reference(gu2)

    @gated.vjp
    def gated_vjp(gu2, cotangent, output):  # a one-argument custom function gets its primal bare
        return backward(gu2, cotangent)

    return gated(gu.reshape(-1, shape[-1])).reshape(*shape[:-1], shape[-1] // 2)


def sample(key, dtype):
    return (mx.random.normal((2, 9, 2 * 320), key=key).astype(dtype),), {}


OP = register(
    FusedOp(
        name="swiglu",
        summary="silu(gate) * up on the gate/up projection output (fused backward)",
        reference=reference,
        fused=fused,
        sample=sample,
    )
)


def swiglu(gu: mx.array, execution) -> mx.array:
    """`silu(gate) * up` with gate, up the two halves of gu's last axis."""
    if gu.shape[-1] % 2 == 0 and use_fused(OP.name, execution, gu):
        return fused(gu)
    if cpu.enabled(execution, gu):
        return cpu.swiglu(gu)
    return reference(gu)
