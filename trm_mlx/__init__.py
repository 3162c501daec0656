"""trm-mlx: Tiny Recursive Models in MLX.

Importing it changes nothing in the process (no library loaded, no setting made): each command line sets the
process up itself (`trm_mlx.blas`, `trm_mlx.runtime`). `trm_mlx.load` loads MLX when first used.
"""

__all__ = ["load"]


def __getattr__(name: str):
    if name == "load":
        from .checkpoint import load

        return load
    raise AttributeError(f"module 'trm_mlx' has no attribute {name!r}")
