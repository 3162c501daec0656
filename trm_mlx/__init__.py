"""trm-mlx: Tiny Recursive Models in MLX."""

from .device import use_fast_cpu_blas

use_fast_cpu_blas()  # must run before MLX's library is loaded (see device.py)

from .checkpoint import load  # noqa: E402

__all__ = ["load"]
