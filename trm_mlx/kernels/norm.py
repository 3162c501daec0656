"""Residual add + weightless RMSNorm (spec §2.4.3, §2.4.7): `rms_norm(round(x + res))`, forward and backward.

Two layouts. Over the hidden axis (every block's post-norm): one threadgroup per row, the row in registers, so the
sum `x + res` is never written to memory. Over the sequence axis of a [B, S, D] array (the MLP-t block's first
norm): one thread per few adjacent (batch, hidden) columns, walking the sequence with coalesced loads, so the block
never materialises the [B, D, S] transpose the reference normalises.

The residual sum is rounded to the array dtype before the norm, as the reference (and the original) do; the norm
itself runs in fp32. The backward recomputes the sum from x and res instead of saving it, and returns one gradient
for both (the add passes it through).
"""

import mlx.core as mx

from . import codegen
from .registry import FusedOp, register, use_fused

ROWS_MAX = 8192  # hidden sizes the row kernels take (at most 32 values per thread in registers)

ROWS_FORWARD = """
const int D = x_shape[1];
const int64_t base = $block * D;
const int tid = $thread;
$shared float partial[TG / 32];
float v[N];
float ss = 0.0f;
for (int j = 0; j < N; ++j) {
  const int c = tid + j * TG;
  float s = 0.0f;
  if (c < D) {
    s = static_cast<float>(static_cast<T>(static_cast<float>(x[base + c]) + static_cast<float>(res[base + c])));
  }
  v[j] = s;
  ss += s * s;
}
ss = trm_simd_sum(ss);
if ($lane == 0) {
  partial[$warp] = ss;
}
$barrier;
float total = 0.0f;
for (int w = 0; w < TG / 32; ++w) {
  total += partial[w];
}
const float scale = $rsqrt(total / static_cast<float>(D) + $eps);
for (int j = 0; j < N; ++j) {
  const int c = tid + j * TG;
  if (c < D) {
    out[base + c] = static_cast<T>(v[j] * scale);
  }
}
"""

# d(sum) = rstd * (g - xhat * mean(g * xhat)), xhat = sum * rstd; mean(g * xhat) = rstd * sum(g * sum) / D.
ROWS_BACKWARD = """
const int D = x_shape[1];
const int64_t base = $block * D;
const int tid = $thread;
$shared float partial_ss[TG / 32];
$shared float partial_gs[TG / 32];
float v[N];
float g[N];
float ss = 0.0f;
float gs = 0.0f;
for (int j = 0; j < N; ++j) {
  const int c = tid + j * TG;
  float s = 0.0f;
  float d = 0.0f;
  if (c < D) {
    s = static_cast<float>(static_cast<T>(static_cast<float>(x[base + c]) + static_cast<float>(res[base + c])));
    d = static_cast<float>(grad[base + c]);
  }
  v[j] = s;
  g[j] = d;
  ss += s * s;
  gs += d * s;
}
ss = trm_simd_sum(ss);
gs = trm_simd_sum(gs);
if ($lane == 0) {
  partial_ss[$warp] = ss;
  partial_gs[$warp] = gs;
}
$barrier;
float total_ss = 0.0f;
float total_gs = 0.0f;
for (int w = 0; w < TG / 32; ++w) {
  total_ss += partial_ss[w];
  total_gs += partial_gs[w];
}
const float inv_d = 1.0f / static_cast<float>(D);
const float rstd = $rsqrt(total_ss * inv_d + $eps);
const float coef = rstd * rstd * rstd * total_gs * inv_d;
for (int j = 0; j < N; ++j) {
  const int c = tid + j * TG;
  if (c < D) {
    out[base + c] = static_cast<T>(rstd * g[j] - coef * v[j]);
  }
}
"""

# V adjacent columns a thread (one V-element load per row of each input), so a warp reads whole lines of a row.
COLUMNS_INDEXING = """
const int S = x_shape[1];
const int D = x_shape[2];
const int per_row = D / V;
const int64_t vec = $global_thread;
if (vec >= static_cast<int64_t>(x_shape[0]) * per_row) {
  return;
}
const int64_t b = vec / per_row;
const int64_t base = b * S * D + (vec - b * per_row) * V;
"""

COLUMNS_FORWARD = (
    COLUMNS_INDEXING
    + """
trm_floats<V> ss;
for (int k = 0; k < V; ++k) {
  ss.v[k] = 0.0f;
}
for (int s = 0; s < S; ++s) {
  const int64_t i = base + static_cast<int64_t>(s) * D;
  const trm_floats<V> xv = trm_load<T, V>(x + i);
  const trm_floats<V> rv = trm_load<T, V>(res + i);
  for (int k = 0; k < V; ++k) {
    const float v = static_cast<float>(static_cast<T>(xv.v[k] + rv.v[k]));
    ss.v[k] += v * v;
  }
}
for (int k = 0; k < V; ++k) {
  ss.v[k] = $rsqrt(ss.v[k] / static_cast<float>(S) + $eps);
}
for (int s = 0; s < S; ++s) {
  const int64_t i = base + static_cast<int64_t>(s) * D;
  const trm_floats<V> xv = trm_load<T, V>(x + i);
  const trm_floats<V> rv = trm_load<T, V>(res + i);
  trm_floats<V> o;
  for (int k = 0; k < V; ++k) {
    o.v[k] = static_cast<float>(static_cast<T>(xv.v[k] + rv.v[k])) * ss.v[k];
  }
  trm_store<T, V>(out + i, o);
}
"""
)

COLUMNS_BACKWARD = (
    COLUMNS_INDEXING
    + """
trm_floats<V> ss;
trm_floats<V> gs;
for (int k = 0; k < V; ++k) {
  ss.v[k] = 0.0f;
  gs.v[k] = 0.0f;
}
for (int s = 0; s < S; ++s) {
  const int64_t i = base + static_cast<int64_t>(s) * D;
  const trm_floats<V> xv = trm_load<T, V>(x + i);
  const trm_floats<V> rv = trm_load<T, V>(res + i);
  const trm_floats<V> gv = trm_load<T, V>(grad + i);
  for (int k = 0; k < V; ++k) {
    const float v = static_cast<float>(static_cast<T>(xv.v[k] + rv.v[k]));
    ss.v[k] += v * v;
    gs.v[k] += gv.v[k] * v;
  }
}
const float inv_s = 1.0f / static_cast<float>(S);
for (int k = 0; k < V; ++k) {
  const float rstd = $rsqrt(ss.v[k] * inv_s + $eps);
  ss.v[k] = rstd;
  gs.v[k] = rstd * rstd * rstd * gs.v[k] * inv_s;
}
for (int s = 0; s < S; ++s) {
  const int64_t i = base + static_cast<int64_t>(s) * D;
  const trm_floats<V> xv = trm_load<T, V>(x + i);
  const trm_floats<V> rv = trm_load<T, V>(res + i);
  const trm_floats<V> gv = trm_load<T, V>(grad + i);
  trm_floats<V> o;
  for (int k = 0; k < V; ++k) {
    const float v = static_cast<float>(static_cast<T>(xv.v[k] + rv.v[k]));
    o.v[k] = ss.v[k] * gv.v[k] - gs.v[k] * v;
  }
  trm_store<T, V>(out + i, o);
}
"""
)

COLUMN_THREADS = 256


def rows_layout(width: int) -> tuple[int, int]:
    """(threads per row, values per thread): about 4 values a thread, 32 to 256 threads."""
    threads = min(256, 32 * -(-width // 128))
    return threads, -(-width // threads)


def launch_rows(body: str, name: str, arrays: list, eps: float) -> mx.array:
    rows, width = arrays[0].shape
    threads, per_thread = rows_layout(width)
    names = ("x", "res", "grad")[: len(arrays)]
    kernel = codegen.kernel(
        name, codegen.GPU, body, names, ("out",), (("eps", codegen.float_literal(eps)),)
    )
    return kernel(
        inputs=arrays,
        template=[("T", arrays[0].dtype), ("TG", threads), ("N", per_thread)],
        grid=(rows * threads, 1, 1),
        threadgroup=(threads, 1, 1),
        output_shapes=[arrays[0].shape],
        output_dtypes=[arrays[0].dtype],
    )[0]


# H100, Sudoku's [768, 97, 512] in bf16, forward: 293 / 256 / 233 / 313 us with 1 / 2 / 4 / 8 columns a thread
# (the backward 346-372 us with any); compiled Sudoku step 185.2 / 182.5 / 189.4 ms with 1 / 4 / 8.
COLUMNS_PER_THREAD = (4, 2, 1)


def columns_per_thread(width: int) -> int:
    """The most adjacent columns a thread takes (up to 4) that split a row of `width` evenly."""
    return next(count for count in COLUMNS_PER_THREAD if width % count == 0)


def launch_columns(body: str, name: str, arrays: list, eps: float) -> mx.array:
    batch, _, width = arrays[0].shape
    names = ("x", "res", "grad")[: len(arrays)]
    kernel = codegen.kernel(
        name, codegen.GPU, body, names, ("out",), (("eps", codegen.float_literal(eps)),)
    )
    per_thread = columns_per_thread(width)
    threads = batch * width // per_thread
    return kernel(
        inputs=arrays,
        template=[("T", arrays[0].dtype), ("V", per_thread)],
        grid=(-(-threads // COLUMN_THREADS) * COLUMN_THREADS, 1, 1),
        threadgroup=(COLUMN_THREADS, 1, 1),
        output_shapes=[arrays[0].shape],
        output_dtypes=[arrays[0].dtype],
    )[0]


def rows_forward(x, res, eps):
    return launch_rows(ROWS_FORWARD, "add_rms_norm_fwd", [x, res], eps)


def rows_backward(x, res, grad, eps):
    return launch_rows(ROWS_BACKWARD, "add_rms_norm_bwd", [x, res, grad], eps)


def columns_forward(x, res, eps):
    return launch_columns(COLUMNS_FORWARD, "add_rms_norm_seq_fwd", [x, res], eps)


def columns_backward(x, res, grad, eps):
    return launch_columns(COLUMNS_BACKWARD, "add_rms_norm_seq_bwd", [x, res, grad], eps)


def reference_rows(x: mx.array, res: mx.array, eps: float) -> mx.array:
    return mx.fast.rms_norm(x + res, None, eps)


def reference_columns(x: mx.array, res: mx.array, eps: float) -> mx.array:
    return mx.fast.rms_norm((x + res).swapaxes(-1, -2), None, eps).swapaxes(-1, -2)


def residual_norm(forward, backward, eps: float):
    """`(x, res) -> forward(x, res, eps)` as a custom function: x and res share one gradient, `backward`'s."""

    @mx.custom_function
    def norm(x, res):
        return forward(x, res, eps)

    @norm.vjp
    def norm_vjp(primals, cotangent, output):
        grad = backward(*primals, cotangent, eps)
        return grad, grad

    return norm


def fused_rows(x: mx.array, res: mx.array, eps: float) -> mx.array:
    width = x.shape[-1]
    norm = residual_norm(rows_forward, rows_backward, eps)
    return norm(x.reshape(-1, width), res.reshape(-1, width)).reshape(x.shape)


def fused_columns(x: mx.array, res: mx.array, eps: float) -> mx.array:
    return residual_norm(columns_forward, columns_backward, eps)(x, res)


def sample(shape):
    def make(key, dtype):
        kx, kr = mx.random.split(key)
        x = mx.random.normal(shape, key=kx).astype(dtype)
        res = (0.5 * mx.random.normal(shape, key=kr)).astype(dtype)
        return (x, res), {"eps": 1e-5}

    return make


ROWS = register(
    FusedOp(
        name="add_rms_norm",
        summary="residual add + RMSNorm over the hidden axis",
        reference=reference_rows,
        fused=fused_rows,
        sample=sample((3, 11, 512)),
    )
)

COLUMNS = register(
    FusedOp(
        name="add_rms_norm_seq",
        summary="residual add + RMSNorm over the sequence axis, no transpose (MLP-t)",
        reference=reference_columns,
        fused=fused_columns,
        sample=sample((3, 97, 80)),
    )
)


def add_rms_norm(x: mx.array, res: mx.array, eps: float, execution) -> mx.array:
    """`rms_norm(x + res)` over the last axis."""
    fits = x.shape == res.shape and x.dtype == res.dtype and x.shape[-1] <= ROWS_MAX
    if fits and use_fused(ROWS.name, execution, x):
        return fused_rows(x, res, eps)
    return reference_rows(x, res, eps)


def add_rms_norm_seq(x: mx.array, res: mx.array, eps: float, execution) -> mx.array:
    """`rms_norm(x + res)` over axis 1 of [B, S, D] arrays."""
    if x.ndim == 3 and x.shape == res.shape and x.dtype == res.dtype and use_fused(COLUMNS.name, execution, x):
        return fused_columns(x, res, eps)
    return reference_columns(x, res, eps)

