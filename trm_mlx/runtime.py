"""How this process runs trm_mlx: the backend, the kernels, the CPU paths and lanes, memory, the data-parallel group.

Every command line builds one `Runtime` from its config (`Runtime.create`), after loading the CPU BLAS
(`trm_mlx.blas.load_fast_blas`, before MLX loads). The model gets the part it needs as `runtime.execution`; the
trainer and the evaluation loop read the rest. Nothing else decides how the code runs on a given machine.
"""

import ctypes
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import mlx.core as mx

from trm_mlx import blas, kernels
from trm_mlx.lanes import cpu_cores
from trm_mlx.model.execution import Execution

# Which fused kernels run (trm_mlx.kernels): `reference` none, `fused` every one that passes its self-check here,
# `auto` only those measured to beat their reference on this backend (FUSED_BY_DEFAULT, figures in
# docs/BENCHMARKS.md). The environment variable TRM_MLX_KERNELS, when set, wins over the config's `kernels`.
KERNEL_MODES = ("auto", "fused", "reference")
KERNELS_ENV = "TRM_MLX_KERNELS"
FUSED_BY_DEFAULT = {
    "cuda": frozenset({"add_rms_norm", "add_rms_norm_seq", "rope_split", "swiglu"}),  # inject_add lost: 0.89x
    "metal": frozenset(),  # unmeasured: `fused` turns them on
}

# MLX's CUDA attention backward is fused (cuDNN) only for sequence lengths that are a multiple of this; any other
# length falls back to materialising the [B, H, S, S] scores. A differentiated pass pads to it (Execution).
ATTENTION_TILE = {"cuda": 128}

# MLX evaluates a graph in one tape order, breadth-first up to this width (MLX_BFS_MAX_WIDTH, default 20): wide
# enough, the tape interleaves the independent lanes of `trm_mlx.lanes`, so their CPU streams run at once.
CPU_TAPE_WIDTH = 200

# `cpu_lanes: auto`: two lanes were faster than one on every CPU and preset measured (Linux with OpenBLAS, 2 and 16
# cores; with MKL, 2 cores), more than two were not always (docs/BENCHMARKS.md, CPU lanes). The threads of another
# BLAS are not shared out among the lanes (blas.shares_threads), so there auto stays at one.
AUTO_LANES = 2

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


@dataclass(frozen=True)
class Runtime:
    """Every choice of how this process runs trm_mlx. `Runtime.create` makes them and sets the process up for them;
    a test may build one directly (nothing is set up then)."""

    backend: str  # 'cpu', 'cuda' or 'metal': where MLX runs by default
    kernel_mode: str = "auto"
    fused_kernels: frozenset[str] = frozenset()  # the fused kernels that run: asked for, and passed their self-check
    cpu_lanes: int = 1  # CPU streams a batch is split over (trm_mlx.lanes)
    recompute: float = 0.0  # share of a differentiated pass's block applications recomputed in the backward
    memory_limit: float | None = None  # GiB; None leaves MLX's
    group: mx.distributed.Group | None = None  # the data-parallel ranks; None for one process

    @classmethod
    def create(cls, device: str = "auto", kernels: str = "auto", recompute="auto", memory_limit: float | None = None,
               cpu_lanes="auto", batch_size: int | None = None, group: mx.distributed.Group | None = None) -> "Runtime":  # fmt: skip
        """Make `device` (`cpu`, `gpu`; `auto` keeps MLX's) the default device, set the process up for it, and make
        every other choice from the config's settings (`kernels`, `recompute`, `memory_limit`, `cpu_lanes` as in
        docs/TRAINING.md; `batch_size`: the rows a step splits into lanes). Call it before MLX's first evaluation:
        on the CPU it widens MLX's tape, which MLX reads then, and makes glibc keep freed memory."""
        backend = use_device(device)
        if backend == "cpu":
            os.environ.setdefault("MLX_BFS_MAX_WIDTH", str(CPU_TAPE_WIDTH))
            keep_freed_memory()
        set_memory_limit(memory_limit)
        mode = kernel_mode(kernels)
        ranks = group.size() if group is not None else 1
        lanes = lanes_here(cpu_lanes, backend, ranks, batch_size, blas.shares_threads(), cpu_cores())
        return cls(backend, mode, fused_kernels(mode, backend), lanes, recompute_share(recompute, backend),
                   memory_limit, group)  # fmt: skip

    @property
    def execution(self) -> Execution:
        """What the model needs to know of this runtime."""
        cpu = self.backend == "cpu"
        return Execution(
            fused_kernels=self.fused_kernels,
            cpu_paths=cpu and self.kernel_mode != "reference",
            fp32_products=cpu,
            attention_tile=ATTENTION_TILE.get(self.backend, 1),
            recompute=self.recompute,
            loss_dtype="float64" if cpu else "float32",
        )

    @property
    def rank(self) -> int:
        return self.group.rank() if self.group is not None else 0

    @property
    def ranks(self) -> int:
        return self.group.size() if self.group is not None else 1

    @contextmanager
    def memory_headroom(self, extra_bytes: int):
        """On CUDA, cap MLX's memory limit at the memory in use now plus `extra_bytes` for the duration (never
        raising it): the dead inputs of queued work (`set_memory_limit`) then stay within that headroom. Metal and
        the CPU, where it was not measured, are left as they are."""
        if self.backend != "cuda":
            yield
            return
        previous = mx.get_memory_limit()
        mx.set_memory_limit(min(previous, mx.get_active_memory() + int(extra_bytes)))
        try:
            yield
        finally:
            mx.set_memory_limit(previous)

    def describe_backend(self) -> str:
        """The backend (and on Linux the CPU BLAS in use), for logs and benchmark records."""
        if self.backend != "cpu" or not sys.platform.startswith("linux"):
            return self.backend
        return f"cpu (BLAS: {blas.describe()})"

    def summary(self) -> str:
        """One line on how a step runs here: backend, fused kernels, block recomputation, memory limit, CPU lanes."""
        if self.backend == "cpu":
            fast = "none; CPU fast paths (SwiGLU, attention, head split, token mixing)"
            kernels_line = fast if self.execution.cpu_paths else "none"
        else:
            kernels_line = ", ".join(sorted(self.fused_kernels)) or "none"
        recompute = {0.0: "none", 1.0: "blocks"}.get(self.recompute, f"{self.recompute:g} of the blocks")
        return (f"backend: {self.describe_backend()}; fused kernels ({self.kernel_mode}): {kernels_line}; "
                f"recompute: {recompute}; memory limit: {mx.get_memory_limit() / 2**30:.1f} GiB"
                + (f"; CPU lanes: {self.cpu_lanes}" if self.backend == "cpu" else ""))  # fmt: skip


def use_device(name: str) -> str:
    """Make `name` (`cpu`, `gpu`; `auto` keeps MLX's choice) MLX's default device; returns the backend it runs on."""
    if name in ("cpu", "gpu"):
        mx.set_default_device(mx.cpu if name == "cpu" else mx.gpu)
    if mx.default_device() == mx.cpu:
        return "cpu"
    return "metal" if sys.platform == "darwin" else "cuda"


def keep_freed_memory() -> None:
    """Make glibc keep freed blocks for reuse instead of handing them back to the OS (no-op without glibc).

    MLX's CPU allocator is plain malloc, and glibc serves large blocks with mmap and trims its heap on free, so each
    step's activations come back as fresh pages that the kernel must fault in and zero: that makes a cheap
    element-wise op several times slower. With every block from the heap and no trimming, the process keeps its
    peak memory (as MLX's GPU allocators keep their buffers) and the faults stop.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt(M_MMAP_MAX, 0)
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def set_memory_limit(gib: float | None) -> None:
    """Cap MLX's memory at `gib` GiB (None: MLX's default, most of the device's memory).

    MLX keeps every input of a queued GPU command buffer alive until the device has run it, and lets the host queue
    several buffers ahead: at the paper's batches those dead intermediates add gigabytes to a step's peak
    (docs/BENCHMARKS.md). Past the limit the host waits for queued work before queuing more, so the peak drops to
    about the step's working set, at no cost in speed while the limit stays above that set (and some when it is
    below: MLX then runs the step with fewer buffers in flight; it never fails for it).
    """
    if gib is not None:
        if gib <= 0:
            raise ValueError(f"memory_limit must be a positive number of GiB, got {gib!r}")
        mx.set_memory_limit(int(gib * 2**30))


def kernel_mode(configured: str) -> str:
    """The kernel mode: TRM_MLX_KERNELS when set, else the config's."""
    env = os.environ.get(KERNELS_ENV)
    mode, source = (env, f"environment variable {KERNELS_ENV}") if env else (configured, "config")
    if mode not in KERNEL_MODES:
        raise ValueError(f"{source}: kernels must be one of {', '.join(KERNEL_MODES)}, got {mode!r}")
    return mode


def fused_kernels(mode: str, backend: str) -> frozenset[str]:
    """The fused kernels that run in `mode` on `backend`: those the mode asks for that pass their self-check here
    (run once per process; a failure warns and leaves that op to its reference). None on the CPU, where MLX has no
    custom kernels."""
    if backend == "cpu" or mode == "reference":
        return frozenset()
    wanted = kernels.OPS if mode == "fused" else FUSED_BY_DEFAULT.get(backend, frozenset())
    return frozenset(name for name in wanted if kernels.check_once(name, backend).ok)


def recompute_share(setting, backend: str) -> float:
    """The share of a differentiated pass's block applications that recompute their forward in the backward
    (`recompute: auto | blocks | none | r`, r in [0, 1]).

    `auto` recomputes all where memory is the limit: on a GPU it lets the paper's batch sizes fit (the saved
    activations of the differentiated passes are most of a step's memory), for one more forward of those passes.
    A share r in between trades the two linearly (docs/TRAINING.md): each recomputed block frees its activations.
    """
    named = {"blocks": 1.0, "none": 0.0, "auto": 0.0 if backend == "cpu" else 1.0}
    if isinstance(setting, str) and setting in named:
        return named[setting]
    if isinstance(setting, (int, float)) and not isinstance(setting, bool) and 0 <= setting <= 1:
        return float(setting)
    raise ValueError(f"recompute must be one of auto, blocks, none or a share in [0, 1], got {setting!r}")


def lanes_here(requested, backend: str, ranks: int, batch_size: int | None, shared_blas: bool, cores: int) -> int:
    """The CPU lanes to run: on the CPU backend in a single process `requested`, where `auto` is AUTO_LANES if
    the loaded BLAS shares its threads out among them (OpenBLAS, MKL), the process has that many cores and they
    split `batch_size` evenly (when given), else 1; elsewhere 1 (a GPU runs its step as one graph, and ranks
    already split the batch)."""
    if backend != "cpu" or ranks > 1:
        return 1
    if requested != "auto":
        return requested
    splits = batch_size is None or batch_size % AUTO_LANES == 0
    return AUTO_LANES if shared_blas and cores >= AUTO_LANES and splits else 1
