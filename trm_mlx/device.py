"""Backend detection, the CPU BLAS choice, and the policy for the fused kernels (trm_mlx.kernels).

On Linux the `mlx[cpu]` wheel links a reference BLAS (about 5 GFLOP/s on a laptop-class core); an optimised
BLAS loaded with RTLD_GLOBAL *before* MLX's own library is loaded supplies the same symbols ~30x faster
(docs/BENCHMARKS.md). `use_fast_cpu_blas` does that on import of trm_mlx. Set TRM_MLX_BLAS to a library path to
choose one, or to `off` to keep MLX's bundled BLAS.
"""

import ctypes
import os
import sys
import warnings
from contextlib import contextmanager

# Debian/Ubuntu (libopenblas0-pthread, libopenblas0-openmp), Fedora/RHEL, and a plain OpenBLAS install.
FAST_BLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-openmp/libblas.so.3",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
    "/usr/local/lib/libopenblas.so.0",
)

INSTALL_HINT = (
    "MLX's CPU build on Linux uses a slow reference BLAS. Install OpenBLAS for ~30x faster matrix products, e.g. "
    "`sudo apt-get install libopenblas0-pthread` (Debian/Ubuntu) or `sudo dnf install openblas` (Fedora), "
    "or point TRM_MLX_BLAS at a BLAS shared library."
)

fast_blas_path = None  # the library loaded by use_fast_cpu_blas, if any


def use_fast_cpu_blas() -> str | None:
    """Load an optimised BLAS for MLX's CPU backend (Linux only); returns its path, or None."""
    global fast_blas_path
    choice = os.environ.get("TRM_MLX_BLAS", "auto")
    if not sys.platform.startswith("linux") or choice == "off" or fast_blas_path is not None:
        return fast_blas_path
    if "mlx.core" in sys.modules:
        return None  # too late: MLX already bound its BLAS symbols
    candidates = FAST_BLAS_CANDIDATES if choice == "auto" else (choice,)
    for path in candidates:
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError as e:
                warnings.warn(f"TRM_MLX_BLAS: could not load {path}: {e}")
                continue
            fast_blas_path = path
            return path
    if choice != "auto":
        warnings.warn(f"TRM_MLX_BLAS={choice}: no such library")
    return None


def cpu_cores() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_blas_threads(count: int) -> None:
    """OpenBLAS's thread count for MLX's CPU matrix products (nothing for another BLAS)."""
    if fast_blas_path is not None:
        setter = getattr(ctypes.CDLL(fast_blas_path), "openblas_set_num_threads", None)
        if setter is not None:
            setter(count)


# MLX evaluates a graph in one tape order, breadth-first up to this width (MLX_BFS_MAX_WIDTH, default 20): wide
# enough, the tape interleaves the independent lanes of `trm_mlx.lanes`, so their CPU streams run at once.
CPU_TAPE_WIDTH = 200


def widen_cpu_tape() -> None:
    """Set MLX_BFS_MAX_WIDTH (unless set) when MLX runs on the CPU; MLX reads it at its first evaluation. Not on a
    GPU, where a wider tape could keep more intermediates alive (unmeasured there)."""
    if backend() == "cpu":
        os.environ.setdefault("MLX_BFS_MAX_WIDTH", str(CPU_TAPE_WIDTH))


def select(name: str) -> None:
    """Make `name` (`cpu`, `gpu`; `auto` keeps MLX's choice) the default device. Call it before MLX's first
    evaluation: choosing the CPU also widens the tape (`widen_cpu_tape`), which MLX reads then."""
    import mlx.core as mx

    if name in ("cpu", "gpu"):
        mx.set_default_device(mx.cpu if name == "cpu" else mx.gpu)
    widen_cpu_tape()


def backend() -> str:
    """'metal', 'cuda' or 'cpu': where MLX runs by default here."""
    import mlx.core as mx

    if mx.default_device() == mx.cpu:
        return "cpu"
    if sys.platform == "darwin":
        return "metal"
    return "cuda"


def openblas_core() -> str | None:
    """The CPU kernels OpenBLAS runs (e.g. `Cooperlake`, `Haswell`), or None when the loaded BLAS is not OpenBLAS.

    `OPENBLAS_CORETYPE` can force an older core than the CPU has: on a 2-core AVX-512 machine, `Haswell` (AVX2)
    made the `tiny` step take about 1.15x and the fp32 Sudoku MLP-t step about 1.5x as long (docs/BENCHMARKS.md).
    """
    if fast_blas_path is None:
        return None
    try:
        corename = ctypes.CDLL(fast_blas_path).openblas_get_corename
    except (OSError, AttributeError):
        return None
    corename.restype = ctypes.c_char_p
    return corename().decode()


def describe() -> str:
    """One line naming the backend (and the CPU BLAS in use), for logs and benchmark records."""
    name = backend()
    if name != "cpu" or not sys.platform.startswith("linux"):
        return name
    if fast_blas_path is None:
        return f"cpu (BLAS: MLX bundled reference BLAS; {INSTALL_HINT})"
    core = openblas_core()
    if core is None:
        return f"cpu (BLAS: {fast_blas_path})"
    forced = " forced by OPENBLAS_CORETYPE" if os.environ.get("OPENBLAS_CORETYPE") else ""
    return f"cpu (BLAS: {fast_blas_path}, OpenBLAS {core} kernels{forced})"


# ---------------------------------------------------------------------------------------------------------------
# Kernel policy: which implementation of the recurrent step's fused ops runs (trm_mlx.kernels).
#
# `reference` always runs the plain-MLX reference of each op; `fused` runs every fused kernel that passes its
# self-check on this backend; `auto` (the default) runs only those measured to beat their reference here
# (FUSED_BY_DEFAULT, figures in docs/BENCHMARKS.md). The environment variable TRM_MLX_KERNELS, when set, wins over
# the value a config sets with `set_kernel_mode`, so one run can be switched without editing its config.
# ---------------------------------------------------------------------------------------------------------------

KERNEL_MODES = ("auto", "fused", "reference")
KERNELS_ENV = "TRM_MLX_KERNELS"

# Dtypes the fused kernels take (they accumulate in fp32 and round once to this dtype); others (float64 on the CPU)
# always run the reference.
KERNEL_DTYPES = ("float32", "float16", "bfloat16")

# Fused kernels on by default in `auto` mode, per backend: only those measured faster than their reference
# (scripts/bench_kernels.py). Metal is unmeasured, so none is on by default there; `fused` turns them on.
FUSED_BY_DEFAULT = {
    "cuda": frozenset({"add_rms_norm", "add_rms_norm_seq", "rope_split", "swiglu"}),  # inject_add lost: 0.89x
    "metal": frozenset(),
}

configured_kernel_mode = "auto"


def check_kernel_mode(mode: str, source: str) -> str:
    if mode not in KERNEL_MODES:
        raise ValueError(f"{source}: kernels must be one of {', '.join(KERNEL_MODES)}, got {mode!r}")
    return mode


def set_kernel_mode(mode: str) -> None:
    """Set the mode from a config (`kernels: auto | fused | reference`); TRM_MLX_KERNELS still wins if set."""
    global configured_kernel_mode
    configured_kernel_mode = check_kernel_mode(mode, "config")


def kernel_mode() -> str:
    env = os.environ.get(KERNELS_ENV)
    if env:
        return check_kernel_mode(env, f"environment variable {KERNELS_ENV}")
    return configured_kernel_mode


def kernel_dtype_ok(dtype) -> bool:
    """Whether the fused kernels take arrays of this MLX dtype."""
    import mlx.core as mx

    return any(dtype == getattr(mx, name) for name in KERNEL_DTYPES)


def kernel_wanted(name: str) -> bool:
    """Whether the policy asks for fused kernel `name` here (its self-check decides whether it then runs)."""
    name_backend = backend()
    if name_backend == "cpu":
        return False  # MLX has no custom kernels on the CPU
    mode = kernel_mode()
    if mode == "reference":
        return False
    return mode == "fused" or name in FUSED_BY_DEFAULT.get(name_backend, frozenset())


def set_memory_limit(gib: float | None) -> None:
    """Cap MLX's memory at `gib` GiB (None: MLX's default, most of the device's memory).

    MLX keeps every input of a queued GPU command buffer (20 operations on CUDA) alive until the device has run it,
    and lets the host queue up to 10 buffers ahead: at the paper's batches those dead intermediates add 5-14 GiB to
    a step's peak (docs/BENCHMARKS.md). Past the limit the host waits for queued work before queuing more, so the
    peak drops to about the step's working set, at no cost in speed while the limit stays above that set (and
    some when it is below: MLX then runs the step with fewer buffers in flight; it never fails for it).
    """
    import mlx.core as mx

    if gib is not None:
        if gib <= 0:
            raise ValueError(f"memory_limit must be a positive number of GiB, got {gib!r}")
        mx.set_memory_limit(int(gib * 2**30))


@contextmanager
def memory_headroom(extra_bytes: int):
    """On CUDA, cap MLX's memory limit at the memory in use now plus `extra_bytes` for the duration (never raising
    it): the dead inputs of queued work (`set_memory_limit`) then stay within that headroom. Metal and the CPU, where
    it was not measured, are left as they are."""
    import mlx.core as mx

    if backend() != "cuda":
        yield
        return
    previous = mx.get_memory_limit()
    mx.set_memory_limit(min(previous, mx.get_active_memory() + int(extra_bytes)))
    try:
        yield
    finally:
        mx.set_memory_limit(previous)


def recompute_share(setting) -> float:
    """The share of a differentiated pass's block applications that recompute their forward in the backward
    (`recompute: auto | blocks | none | r`, r in [0, 1]).

    `auto` recomputes all where memory is the limit: on a GPU it lets the paper's batch sizes fit (the saved
    activations of the differentiated passes are most of a step's memory), for one more forward of those passes.
    A share r in between trades the two linearly (docs/TRAINING.md): each recomputed block frees its activations.
    """
    named = {"blocks": 1.0, "none": 0.0, "auto": 0.0 if backend() == "cpu" else 1.0}
    if isinstance(setting, str) and setting in named:
        return named[setting]
    if isinstance(setting, (int, float)) and not isinstance(setting, bool) and 0 <= setting <= 1:
        return float(setting)
    raise ValueError(f"recompute must be one of auto, blocks, none or a share in [0, 1], got {setting!r}")
