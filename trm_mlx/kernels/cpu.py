"""Fast CPU versions of the recurrent step's exp-based ops: SwiGLU's SiLU, the attention softmax, sigmoid.

MLX's CPU backend computes `exp` one element at a time (its polynomial calls libm's `fmaf` per term: about 10 ns
an element on x86), and these ops are most of a small model's CPU step after the matrix products. Here `exp` is
written as plain element-wise MLX ops (range reduction, a polynomial, exponent bits), which `mx.compile` fuses
into vectorised C++ loops: 5-9x faster, max relative error 1.0e-7 (`mx.exp`'s: 3.8e-6). The ops built on
it have custom VJPs that never differentiate through `exp`: the softmax's gradient comes from its output, the
SwiGLU gate's from its input (the sigmoid is recomputed). Half-precision inputs are computed in fp32 and rounded
once. Used where the model's `Execution` says so (`enabled`: on the CPU); other backends keep MLX's own kernels or
trm_mlx's fused ones.

The MLP-t token mixing and the attention's head split with RoPE are here too, in forms whose forward and backward
copy no transposed operand (`token_mixing`, `split_heads`): MLX's CPU copies run on one thread.
"""

import math

import mlx.core as mx

from .registry import kernel_dtypes

LOG2E = 1.0 / math.log(2.0)
# ln 2 split in two (Cody-Waite): n * LN2_HIGH is exact in fp32 for |n| < 2^9, so r = x - n ln 2 stays accurate.
LN2_HIGH = 0.693359375
LN2_LOW = math.log(2.0) - LN2_HIGH
# Adding 1.5 * 2^23 rounds an fp32 of magnitude < 2^22 to an integer, which then sits in the low mantissa bits.
ROUNDER = 12582912.0
ROUNDER_BITS = 0x4B400000
# exp's argument range with a normal fp32 result: beyond it the result saturates (1.2e-38 below, 2.4e38 above).
EXP_LOW, EXP_HIGH = -87.33, 88.37
# Taylor coefficients of exp(r), |r| <= ln2 / 2: the degree-7 remainder is below 5.3e-9 relative.
EXP_POLY = tuple(1.0 / math.factorial(k) for k in range(7, -1, -1))


@mx.compile
def exp(x: mx.array) -> mx.array:
    """exp of an fp32 array: exp(x) = 2^n exp(r) with n = round(x / ln 2), |r| <= ln 2 / 2."""
    x = mx.minimum(mx.maximum(x, EXP_LOW), EXP_HIGH)  # NaN stays NaN (MLX's maximum keeps a NaN first operand)
    rounded = x * LOG2E + ROUNDER
    n = rounded - ROUNDER
    r = (x - n * LN2_HIGH) - n * LN2_LOW
    poly = r * EXP_POLY[0] + EXP_POLY[1]
    for c in EXP_POLY[2:]:
        poly = poly * r + c
    # 2^n as fp32 bits, (n + 127) << 23, from the integer in rounded's mantissa. Integer ops stay apart from
    # float ones (the view splits the fused loops): a loop mixing them is not vectorised.
    two_to_n = ((rounded.view(mx.int32) - (ROUNDER_BITS - 127)) << 23).view(mx.float32)
    return poly * two_to_n


def sigmoid(x: mx.array) -> mx.array:
    """1 / (1 + exp(-x)) of an fp32 array (saturates to 0 and 1, never inf or NaN for finite x)."""
    return 1.0 / (1.0 + exp(-x))


def glu(gate: mx.array, up: mx.array) -> mx.array:
    """silu(gate) * up in fp32."""
    gate, up = gate.astype(mx.float32), up.astype(mx.float32)
    return gate * sigmoid(gate) * up


def glu_grads(gate: mx.array, up: mx.array, cotangent: mx.array) -> tuple:
    """The fp32 gradients of `glu` for gate and up (the sigmoid recomputed, never differentiated through exp)."""
    gate, up, d = gate.astype(mx.float32), up.astype(mx.float32), cotangent.astype(mx.float32)
    s = sigmoid(gate)
    return d * up * s * (1.0 + gate * (1.0 - s)), d * gate * s  # d silu(g) / dg = s (1 + g (1 - s))


def gated_halves(axis: int):
    """silu(gate) * up with gate and up the two halves of gu's `axis` (kernels.glu.reference's values), as one
    custom function over gu, so the backward writes gu's gradient with one concatenation instead of autodiff's
    zero-filled gradient per half and their sum."""

    @mx.custom_function
    def gated(gu: mx.array) -> mx.array:
        return glu(*mx.split(gu, 2, axis=axis)).astype(gu.dtype)

    @gated.vjp
    def gated_vjp(gu, cotangent, output):  # a one-argument custom function gets its primal bare
        return mx.concatenate(glu_grads(*mx.split(gu, 2, axis=axis), cotangent), axis=axis).astype(gu.dtype)

    return gated


swiglu = gated_halves(-1)  # the gate/up projection's output [..., 2I]
swiglu_columns = gated_halves(1)  # token mixing's layout [B, 2I, D]


def rms_norm_columns(x: mx.array, eps: float) -> mx.array:
    """Weightless RMSNorm over axis 1 of [B, S, D] in fp32, rounded once to x's dtype (mx.fast.rms_norm's
    numerics on the transposed array), with a backward that needs no transpose either."""

    @mx.custom_function
    def norm(x):
        x32 = x.astype(mx.float32)
        return (x32 * mx.rsqrt(mx.mean(x32 * x32, axis=1, keepdims=True) + eps)).astype(x.dtype)

    @norm.vjp
    def norm_vjp(x, cotangent, output):
        x32, d = x.astype(mx.float32), cotangent.astype(mx.float32)
        r = mx.rsqrt(mx.mean(x32 * x32, axis=1, keepdims=True) + eps)
        y = x32 * r
        return (r * (d - y * mx.mean(d * y, axis=1, keepdims=True))).astype(x.dtype)

    return norm(x)


def token_mixing(h: mx.array, gate_up_weight: mx.array, down_weight: mx.array, eps: float) -> mx.array:
    """The MLP-t token mixing on h [B, S, D] without a transpose: `W_gu @ h` per example ([2I, S] @ [S, D]),
    SwiGLU over the halves of axis 1, `W_down @ a` back to [B, S, D], the norm over axis 1.

    The reference mixes `h^T` [B, D, S] and transposes back, which costs copies of every operand and gradient.
    Products run in fp32 on operands rounded to h's dtype, and each result is rounded where CastedLinear rounds.
    """
    dtype = h.dtype
    w_gu, w_down = (w.astype(dtype).astype(mx.float32) for w in (gate_up_weight, down_weight))
    gu = (w_gu @ h.astype(mx.float32)).astype(dtype)
    mixed = (w_down @ swiglu_columns(gu).astype(mx.float32)).astype(dtype)
    return rms_norm_columns(h + mixed, eps)


@mx.custom_function
def softmax(x: mx.array) -> mx.array:
    """Softmax over the last axis, in fp32, rounded once to x's dtype."""
    x32 = x.astype(mx.float32)
    e = exp(x32 - mx.max(x32, axis=-1, keepdims=True))
    return (e * (1.0 / mx.sum(e, axis=-1, keepdims=True))).astype(x.dtype)


@softmax.vjp
def softmax_vjp(x, cotangent, output):  # a one-argument custom function gets its primal bare
    p, d = output.astype(mx.float32), cotangent.astype(mx.float32)
    return (p * (d - mx.sum(d * p, axis=-1, keepdims=True))).astype(x.dtype)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    """softmax(q k^T scale) v over [B, H, S, hd] arrays (no mask).

    Half-precision inputs get fp32 scores and probabilities and one rounding of the output, as PyTorch's CPU
    attention computes them.
    """
    q32, k32, v32 = (a.astype(mx.float32) for a in (q, k, v))
    scores = (q32 * scale) @ k32.swapaxes(-1, -2)
    return (softmax(scores) @ v32).astype(q.dtype)


def split_heads(qkv: mx.array, rotary, num_heads: int):
    """kernels.rope.reference's q, k, v ([B, H, S, hd], RoPE on q and k) of qkv [B, S, 3*H*hd], written
    contiguous (the attention's products would otherwise copy the transposed views), with a backward that
    writes qkv's gradient with one concatenation instead of autodiff's zero-filled gradient per slice."""
    B, S, _ = qkv.shape
    tables = [] if rotary is None else list(rotary)  # [S, hd], constants: no gradient to the tables

    def rotate(x):
        return rope_rotate(x, *tables) if tables else mx.contiguous(x)

    def unrotate(d):  # the transpose of rotate: rotate_half^T(z) = -rotate_half(z)
        if not tables:
            return d
        cos, sin = tables
        d32 = d.astype(mx.float32)
        return (d32 * cos - rotate_half(d32 * sin)).astype(d.dtype)

    @mx.custom_function
    def split(packed):
        q, k, v = mx.split(packed.reshape(B, S, 3 * num_heads, -1).transpose(0, 2, 1, 3), 3, axis=1)
        return rotate(q), rotate(k), mx.contiguous(v)

    @split.vjp
    def split_vjp(packed, cotangents, outputs):
        dq, dk, dv = cotangents
        packed_grad = mx.concatenate([unrotate(dq), unrotate(dk), dv], axis=1)  # [B, 3H, S, hd]
        return packed_grad.transpose(0, 2, 1, 3).reshape(packed.shape)

    return split(qkv)


def rope_rotate(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """RoPE on x's last axis (cos, sin broadcast against x), in fp32, rounded once to x's dtype."""
    x32 = x.astype(mx.float32)
    return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def rotate_half(x: mx.array) -> mx.array:
    """RoPE's half-split rotation (x1, x2) -> (-x2, x1) over the last axis."""
    half = x.shape[-1] // 2
    return mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def enabled(execution, *arrays: mx.array) -> bool:
    """Whether these fast paths run: where `execution` (trm_mlx.model.execution) asks for them, for fp32/bf16/fp16
    arrays."""
    return execution.cpu_paths and kernel_dtypes(*arrays)
