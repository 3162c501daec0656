"""One kernel source for both GPU backends.

Each kernel body is written once, in the subset of C++ that CUDA and the Metal Shading Language share, with
`$name` placeholders where the two differ: thread and block indices, barriers, shared memory, math functions,
pointer address spaces. `render` fills them in for one backend; `kernel` hands the result to
`mx.fast.cuda_kernel` or `mx.fast.metal_kernel`, which add the signature (inputs, outputs, `<input>_shape`) and
compile it on first launch. Dtypes and sizes are template arguments (`T`, `TG`, ...) that both backends take.
"""

import functools
import hashlib
import string
import sys

import mlx.core as mx

BACKENDS = ("cuda", "metal")
GPU = "metal" if sys.platform == "darwin" else "cuda"  # MLX's GPU backend on this platform

# What each placeholder becomes. Indices are over the x axis only: every kernel here uses 1-D grids. A launch's
# `grid` counts threads on both backends (MLX divides by the threadgroup size for CUDA).
TOKENS = {
    "cuda": {
        "thread": "static_cast<int>(threadIdx.x)",
        "block": "static_cast<int64_t>(blockIdx.x)",
        "global_thread": "(static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x)",
        "lane": "static_cast<int>(threadIdx.x & 31u)",
        "warp": "static_cast<int>(threadIdx.x >> 5)",
        "barrier": "__syncthreads()",
        "shared": "__shared__",
        "device": "",
        "inline": "__device__ __forceinline__",
        "exp": "expf",
        "rsqrt": "rsqrtf",
    },
    "metal": {
        "thread": "static_cast<int>(thread_position_in_threadgroup.x)",
        "block": "static_cast<int64_t>(threadgroup_position_in_grid.x)",
        "global_thread": "static_cast<int64_t>(thread_position_in_grid.x)",
        "lane": "static_cast<int>(thread_index_in_simdgroup)",
        "warp": "static_cast<int>(simdgroup_index_in_threadgroup)",
        "barrier": "threadgroup_barrier(mem_flags::mem_threadgroup)",
        "shared": "threadgroup",
        "device": "device",
        "inline": "inline",
        "exp": "metal::exp",
        "rsqrt": "metal::precise::rsqrt",
    },
}

# The one primitive without a common spelling: a sum over the 32 lanes of a warp / SIMD group (both 32 wide on
# the GPUs MLX supports). The CUDA butterfly has a fixed order, so results are deterministic.
SIMD_SUM = {
    "cuda": """
__device__ __forceinline__ float trm_simd_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}
""",
    "metal": """
inline float trm_simd_sum(float v) {
  return metal::simd_sum(v);
}
""",
}

# Loads and stores of V consecutive elements as floats, for element-wise kernels. On CUDA one V-element pack is
# one 16-byte transaction when the address allows it (a view may start anywhere, so it is checked); on Metal the
# compiler is left to vectorise the loop.
VECTOR_IO = {
    "cuda": """
template <int V> struct trm_floats { float v[V]; };
template <typename T, int V> struct alignas(sizeof(T) * V) trm_pack { T v[V]; };

template <typename T, int V>
__device__ __forceinline__ trm_floats<V> trm_load(const T* p) {
  trm_floats<V> r;
  if (reinterpret_cast<size_t>(p) % sizeof(trm_pack<T, V>) == 0) {
    const trm_pack<T, V> pack = *reinterpret_cast<const trm_pack<T, V>*>(p);
#pragma unroll
    for (int k = 0; k < V; ++k) r.v[k] = static_cast<float>(pack.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) r.v[k] = static_cast<float>(p[k]);
  }
  return r;
}

template <typename T, int V>
__device__ __forceinline__ void trm_store(T* p, const trm_floats<V>& x) {
  if (reinterpret_cast<size_t>(p) % sizeof(trm_pack<T, V>) == 0) {
    trm_pack<T, V> pack;
#pragma unroll
    for (int k = 0; k < V; ++k) pack.v[k] = static_cast<T>(x.v[k]);
    *reinterpret_cast<trm_pack<T, V>*>(p) = pack;
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) p[k] = static_cast<T>(x.v[k]);
  }
}
""",
    "metal": """
template <int V> struct trm_floats { float v[V]; };

template <typename T, int V>
inline trm_floats<V> trm_load(const device T* p) {
  trm_floats<V> r;
  for (int k = 0; k < V; ++k) r.v[k] = static_cast<float>(p[k]);
  return r;
}

template <typename T, int V>
inline void trm_store(device T* p, const thread trm_floats<V>& x) {
  for (int k = 0; k < V; ++k) p[k] = static_cast<T>(x.v[k]);
}
""",
}

# Helpers shared by the kernels, written once like the bodies.
HELPERS = """
$inline float trm_sigmoid(float x) {
  return 1.0f / (1.0f + $exp(-x));
}
"""


PACK_BYTES = 16


def vector_width(units: int, dtype: mx.Dtype) -> int:
    """Elements a thread loads at once (`trm_load`): a 16-byte pack when `units` splits into whole packs, else one."""
    width = PACK_BYTES // dtype.size
    return width if units % width == 0 else 1


def render(template: str, backend: str, **constants: str) -> str:
    """The template with every placeholder filled for `backend`; an unknown placeholder is an error."""
    if backend not in TOKENS:
        raise ValueError(f"no kernel backend {backend!r}; expected one of {BACKENDS}")
    return string.Template(template).substitute(TOKENS[backend], **constants)


def header(backend: str) -> str:
    return SIMD_SUM[backend] + VECTOR_IO[backend] + render(HELPERS, backend)


def float_literal(value: float) -> str:
    """A float constant both compilers read as the same fp32 value (`1e-05f`)."""
    text = repr(float(value))
    if "e" not in text and "." not in text:
        text += ".0"
    return text + "f"


@functools.cache
def kernel(name: str, backend: str, body: str, inputs: tuple, outputs: tuple, constants: tuple = ()):
    """The compiled-on-first-launch kernel for one body, backend and set of rendered constants.

    The name carries a digest of the rendered source, so MLX's per-name caches never mix two variants.
    """
    source = render(body, backend, **dict(constants))
    digest = hashlib.sha1((header(backend) + source).encode()).hexdigest()[:12]
    full_name = f"trm_{name}_{digest}"
    make = mx.fast.cuda_kernel if backend == "cuda" else mx.fast.metal_kernel
    return make(
        name=full_name,
        input_names=list(inputs),
        output_names=list(outputs),
        source=source,
        header=header(backend),
    )
