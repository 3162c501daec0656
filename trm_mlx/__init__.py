"""trm-mlx: Tiny Recursive Models in MLX.

Importing it changes nothing in the process (no library loaded, no setting made): each command line sets the
process up itself (`trm_mlx.blas`, `trm_mlx.runtime`). `trm_mlx.load`, when first used, loads the fast CPU BLAS on
Linux and then MLX, as the command lines do.
"""

__all__ = ["load"]


def __getattr__(name: str):
    if name == "load":
        from .blas import load_fast_blas

        load_fast_blas()  # before MLX loads: a no-op where MLX is loaded already (it then warns) or off Linux
        from .checkpoint import load

        return load
    raise AttributeError(f"module 'trm_mlx' has no attribute {name!r}")
