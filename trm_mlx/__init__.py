"""trm-mlx: Tiny Recursive Models in MLX."""

from .device import use_fast_cpu_blas, widen_cpu_tape

use_fast_cpu_blas()  # must run before MLX's library is loaded (see device.py)
widen_cpu_tape()  # before MLX's first evaluation

from .checkpoint import load  # noqa: E402

__all__ = ["load"]
