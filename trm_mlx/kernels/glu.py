"""The SwiGLU gate on the gate/up projection's output (spec §2.4.6): `silu(gate) * up`, forward and backward.

The projection writes [..., 2I] (first half gate, second half up). The forward reads it once and writes [..., I]
in fp32 math with one rounding; the backward writes the [..., 2I] gradient in place of the reference's two
half-size gradients and their concatenation.
"""

import mlx.core as mx
import mlx.nn as nn

from . import codegen, cpu
from .. import device
from .registry import FusedOp, register, use_fused

THREADS = 256
PER_THREAD = 4

# Each thread takes PER_THREAD outputs TG apart, so every load and store of a warp is contiguous. Output o is
# (row m, unit i) = (o / I, o % I); its gate sits at m * 2I + i = o + m * I, its up I further on.
FORWARD = """
const int64_t count = static_cast<int64_t>(gu_shape[0]) * I;
const int64_t start = $block * (TG * N) + $thread;
for (int j = 0; j < N; ++j) {
  const int64_t o = start + static_cast<int64_t>(j) * TG;
  if (o < count) {
    const int64_t gi = o + (o / I) * I;
    const float g = static_cast<float>(gu[gi]);
    const float u = static_cast<float>(gu[gi + I]);
    out[o] = static_cast<T>(g * trm_sigmoid(g) * u);
  }
}
"""

# d gate = d * up * sigmoid(g) * (1 + g * (1 - sigmoid(g))), d up = d * silu(g).
BACKWARD = """
const int64_t count = static_cast<int64_t>(gu_shape[0]) * I;
const int64_t start = $block * (TG * N) + $thread;
for (int j = 0; j < N; ++j) {
  const int64_t o = start + static_cast<int64_t>(j) * TG;
  if (o < count) {
    const int64_t gi = o + (o / I) * I;
    const float g = static_cast<float>(gu[gi]);
    const float u = static_cast<float>(gu[gi + I]);
    const float d = static_cast<float>(grad[o]);
    const float sig = trm_sigmoid(g);
    out[gi] = static_cast<T>(d * u * sig * (1.0f + g * (1.0f - sig)));
    out[gi + I] = static_cast<T>(d * g * sig);
  }
}
"""


def launch(body: str, name: str, arrays: list, out_shape: tuple) -> mx.array:
    gu = arrays[0]
    rows, width = gu.shape
    half = width // 2
    kernel = codegen.kernel(name, device.backend(), body, ("gu", "grad")[: len(arrays)], ("out",))
    chunk = THREADS * PER_THREAD
    return kernel(
        inputs=arrays,
        template=[("T", gu.dtype), ("I", half), ("TG", THREADS), ("N", PER_THREAD)],
        grid=(-(-rows * half // chunk) * THREADS, 1, 1),
        threadgroup=(THREADS, 1, 1),
        output_shapes=[out_shape],
        output_dtypes=[gu.dtype],
    )[0]


def forward(gu: mx.array) -> mx.array:
    return launch(FORWARD, "swiglu_fwd", [gu], (gu.shape[0], gu.shape[1] // 2))


def backward(gu: mx.array, grad: mx.array) -> mx.array:
    return launch(BACKWARD, "swiglu_bwd", [gu, grad], gu.shape)


def reference(gu: mx.array) -> mx.array:
    gate, up = mx.split(gu, 2, axis=-1)
    return nn.silu(gate) * up


def fused(gu: mx.array) -> mx.array:
    shape = gu.shape

    @mx.custom_function
    def gated(gu2):
        return forward(gu2)

    @gated.vjp
    def gated_vjp(gu2, cotangent, output):  # a one-argument custom function gets its primal bare
        return backward(gu2, cotangent)

    return gated(gu.reshape(-1, shape[-1])).reshape(*shape[:-1], shape[-1] // 2)


def sample(key, dtype):
    return (mx.random.normal((2, 9, 2 * 320), key=key).astype(dtype),), {}


OP = register(
    FusedOp(
        name="swiglu",
        summary="silu(gate) * up on the gate/up projection output",
        reference=reference,
        fused=fused,
        sample=sample,
    )
)


def swiglu(gu: mx.array) -> mx.array:
    """`silu(gate) * up` with gate, up the two halves of gu's last axis."""
    if gu.shape[-1] % 2 == 0 and use_fused(OP.name, gu):
        return fused(gu)
    if cpu.enabled(gu):
        return cpu.swiglu(gu)
    return reference(gu)
