"""RoPE applied while splitting q/k/v into the attention layout (spec §2.4.4-§2.4.5), forward and backward.

The projection gives [B, S, 3H, hd] (head-major q, k, v blocks). The reference slices it, rotates q and k in fp32
(half-split `rotate_half`), and transposes to [B, H, S, hd] views. The fused kernel keeps the projection's layout:
it writes the rotated heads, rounded once, into one [B, S', heads, hd] array whose q, k (and v) are [B, H, S', hd]
views. MLX's cuDNN attention reads such strided views as they are and allocates its output (and, in the backward,
dq, dk, dv) in q's layout, so the output's [B, S, H*hd] form for the out projection needs no copy, and every row
the kernels read or write is contiguous. Unpadded (S' = S), v stays a view of the projection and only q and k are
written; padded (S' > S: attention training on CUDA pads to its fused backward's tile), all three are, with zero
rows past S. The backward applies the inverse rotation and writes the [B, S, 3H*hd] projection gradient.
"""

import mlx.core as mx
import numpy as np

from . import codegen, cpu
from .registry import FusedOp, register, use_fused

THREADS = 256

# One thread per (b, position, head, V columns j < hd/2): the pairs (j, j + hd/2) that rotate_half mixes, V of them
# in 16-byte packs where hd/2 allows. The forward walks the SP positions of the written layout and its HEADS heads
# (2H or 3H); the backward the S real positions and all 3H heads, reading dq, dk, dv in [B, SP, H, hd] order.
FORWARD = """
const int B = qkv_shape[0];
const int HALF = HD / 2;
const int CHUNKS = HALF / V;
const int64_t count = static_cast<int64_t>(B) * SP * HEADS * CHUNKS;
const int64_t tid = $global_thread;
if (tid >= count) {
  return;
}
const int j = static_cast<int>(tid % CHUNKS) * V;
const int64_t row = tid / CHUNKS;
const int head3 = static_cast<int>(row % HEADS);
const int64_t token = row / HEADS;
const int s = static_cast<int>(token % SP);
const int64_t b = token / SP;
const int64_t written = row * HD + j;
if (s >= S) {
  trm_floats<V> zero;
  for (int i = 0; i < V; ++i) {
    zero.v[i] = 0.0f;
  }
  trm_store<T, V>(out + written, zero);
  trm_store<T, V>(out + written + HALF, zero);
  return;
}
const int64_t packed = ((b * S + s) * (3 * H) + head3) * HD + j;
const int64_t table = static_cast<int64_t>(s) * HD + j;
trm_floats<V> x1 = trm_load<T, V>(qkv + packed);
trm_floats<V> x2 = trm_load<T, V>(qkv + packed + HALF);
$rotate
trm_store<T, V>(out + written, x1);
trm_store<T, V>(out + written + HALF, x2);
"""

BACKWARD = """
const int B = dq_shape[0];
const int HALF = HD / 2;
const int CHUNKS = HALF / V;
const int64_t count = static_cast<int64_t>(B) * S * (3 * H) * CHUNKS;
const int64_t tid = $global_thread;
if (tid >= count) {
  return;
}
const int j = static_cast<int>(tid % CHUNKS) * V;
const int64_t row = tid / CHUNKS;
const int head3 = static_cast<int>(row % (3 * H));
const int64_t token = row / (3 * H);
const int s = static_cast<int>(token % S);
const int64_t b = token / S;
const int which = head3 / H;
const $device T* src = which == 0 ? dq : (which == 1 ? dk : dv);
const int64_t split = ((b * SP + s) * H + (head3 - which * H)) * HD + j;
const int64_t table = static_cast<int64_t>(s) * HD + j;
trm_floats<V> x1 = trm_load<T, V>(src + split);
trm_floats<V> x2 = trm_load<T, V>(src + split + HALF);
$rotate
trm_store<T, V>(out + row * HD + j, x1);
trm_store<T, V>(out + row * HD + j + HALF, x2);
"""


def rotation(y1: str, y2: str) -> str:
    """The rotation of the pair (x1, x2) of q's and k's heads (the first 2H) into (y1, y2), c/s being the tables'
    columns j and j + hd/2 (equal in the standard tables)."""
    return f"""
if (head3 < 2 * H) {{
  const trm_floats<V> c1 = trm_load<float, V>(cos_table + table);
  const trm_floats<V> s1 = trm_load<float, V>(sin_table + table);
  const trm_floats<V> c2 = trm_load<float, V>(cos_table + table + HALF);
  const trm_floats<V> s2 = trm_load<float, V>(sin_table + table + HALF);
  for (int i = 0; i < V; ++i) {{
    const float y1 = {y1};
    const float y2 = {y2};
    x1.v[i] = y1;
    x2.v[i] = y2;
  }}
}}
"""


ROTATE_FORWARD = rotation("x1.v[i] * c1.v[i] - x2.v[i] * s1.v[i]", "x2.v[i] * c2.v[i] + x1.v[i] * s2.v[i]")
# Its transpose: (d1, d2) -> (d1 c1 + d2 s2, d2 c2 - d1 s1).
ROTATE_BACKWARD = rotation("x1.v[i] * c1.v[i] + x2.v[i] * s2.v[i]", "x2.v[i] * c2.v[i] - x1.v[i] * s1.v[i]")


def written_heads(num_heads: int, seq: int, positions: int) -> int:
    """Heads the forward writes: q and k, and v too when the layout is padded (else v is a view of the projection)."""
    return (3 if positions > seq else 2) * num_heads


def launch(backward: bool, arrays: list, tables: list, shape: tuple, num_heads: int) -> mx.array:
    """One launch; shape is (B, S, SP, hd), SP the split layout's positions. The forward returns the written heads
    [B, SP, heads, hd], the backward the projection gradient [B, S, 3H*hd] from dq, dk, dv in [B, SP, H, hd]."""
    batch, seq, positions, head_dim = shape
    names = ("dq", "dk", "dv") if backward else ("qkv",)
    rotate = ROTATE_BACKWARD if backward else ROTATE_FORWARD
    kernel = codegen.kernel(
        ("rope_split_bwd" if backward else "rope_split_fwd") + ("" if tables else "_norope"),
        codegen.GPU,
        BACKWARD if backward else FORWARD,
        names + (("cos_table", "sin_table") if tables else ()),
        ("out",),
        (("rotate", rotate if tables else ""),),
    )
    heads = 3 * num_heads if backward else written_heads(num_heads, seq, positions)
    per_thread = codegen.vector_width(head_dim // 2, arrays[0].dtype)
    count = batch * (seq if backward else positions) * heads * (head_dim // 2 // per_thread)
    out_shape = (batch, seq, 3 * num_heads * head_dim) if backward else (batch, positions, heads, head_dim)
    return kernel(
        inputs=arrays + tables,
        template=[
            ("T", arrays[0].dtype), ("H", num_heads), ("HD", head_dim), ("S", seq), ("SP", positions),
            ("V", per_thread), ("HEADS", heads),
        ],
        grid=(-(-count // THREADS) * THREADS, 1, 1),
        threadgroup=(THREADS, 1, 1),
        output_shapes=[out_shape],
        output_dtypes=[arrays[0].dtype],
    )[0]


def apply_rotary(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """x: [B, S, heads, hd]; rotation in fp32, result in x's dtype."""
    return cpu.rope_rotate(x, cos[:, None, :], sin[:, None, :])


def reference(qkv: mx.array, rotary, num_heads: int, positions: int = 0):
    """[B, S, 3*H*hd] -> q, k, v as [B, H, S, hd] (views of the projection where no rotation applies), zero-padded
    to `positions` rows when that is more than S."""
    B, S, _ = qkv.shape
    nh = num_heads
    qkv = qkv.reshape(B, S, 3 * nh, -1)
    q, k, v = qkv[:, :, :nh], qkv[:, :, nh : 2 * nh], qkv[:, :, 2 * nh :]
    if rotary is not None:
        cos, sin = rotary
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    split = tuple(t.transpose(0, 2, 1, 3) for t in (q, k, v))
    if positions <= S:
        return split
    return tuple(mx.pad(t, [(0, 0), (0, 0), (0, positions - S), (0, 0)]) for t in split)


def fused(qkv: mx.array, rotary, num_heads: int, positions: int = 0):
    B, S, width = qkv.shape
    head_dim = width // (3 * num_heads)
    positions = max(positions, S)
    tables = list(rotary) if rotary is not None else []  # constants: no gradient flows to the tables
    shape = (B, S, positions, head_dim)
    nh = num_heads

    @mx.custom_function
    def split(packed):
        rows = launch(False, [packed], tables, shape, nh)  # [B, SP, 2H or 3H, hd]
        source_of_v = rows if rows.shape[2] > 2 * nh else packed.reshape(B, S, 3 * nh, head_dim)
        heads = (rows[:, :, :nh], rows[:, :, nh : 2 * nh], source_of_v[:, :, 2 * nh :])
        return tuple(t.transpose(0, 2, 1, 3) for t in heads)

    @split.vjp
    def split_vjp(packed, cotangents, outputs):
        # [B, SP, H, hd] order: row-contiguous as cuDNN's attention backward writes them (q's layout), so the kernel
        # reads them without a copy.
        return (launch(True, [c.transpose(0, 2, 1, 3) for c in cotangents], tables, shape, nh),)

    return split(qkv)


def sample(key, dtype):
    S, nh, hd = 13, 2, 64
    tables = rotary_tables(S, hd)
    qkv = mx.random.normal((2, S, 3 * nh * hd), key=key).astype(dtype)
    return (qkv,), {"rotary": tables, "num_heads": nh, "positions": 16}  # padded, as attention training on CUDA


def inverse_frequencies(head_dim: int, theta: float) -> np.ndarray:
    """RoPE's inverse frequencies 1 / theta^(2i/hd) (spec §2.4.4), the exact powers rounded once to fp32: within one
    ulp of the original's (PyTorch's fp32 power) and equal to them at head dim 64 and theta 10,000, where NumPy's
    fp32 power is an ulp off in some entries (at position 96 a 1-ulp frequency moves the angle by 4e-6)."""
    exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    power = (np.float64(theta) ** exponent.astype(np.float64)).astype(np.float32)
    return np.float32(1.0) / power


def rotary_tables(length: int, head_dim: int, theta: float = 10000.0) -> tuple[mx.array, mx.array]:
    """cos/sin [length, hd] in fp32 (spec §2.4.4) of the fp32 angles, each rounded once from fp64."""
    freqs = np.outer(np.arange(length, dtype=np.float32), inverse_frequencies(head_dim, theta)).astype(np.float32)
    angles = np.concatenate([freqs, freqs], axis=-1).astype(np.float64)
    return mx.array(np.cos(angles).astype(np.float32)), mx.array(np.sin(angles).astype(np.float32))


OP = register(
    FusedOp(
        name="rope_split",
        summary="q/k/v split into the attention layout with RoPE on q and k",
        reference=reference,
        fused=fused,
        sample=sample,
    )
)


def split_heads(qkv: mx.array, rotary, num_heads: int, positions: int, execution):
    """The attention inputs q, k, v ([B, H, S, hd]) of a qkv projection [B, S, 3*H*hd], RoPE applied if given; with
    `positions` > S, [B, H, positions, hd] with zero rows past S."""
    head_dim = qkv.shape[-1] // (3 * num_heads)
    tables_fit = rotary is None or all(t.shape == (qkv.shape[1], head_dim) and t.dtype == mx.float32 for t in rotary)
    if head_dim % 2 == 0 and tables_fit and use_fused(OP.name, execution, qkv):
        return fused(qkv, rotary, num_heads, positions)
    if cpu.enabled(execution, qkv) and tables_fit and positions <= qkv.shape[1]:
        return cpu.split_heads(qkv, rotary, num_heads)
    return reference(qkv, rotary, num_heads, positions)
