"""How a model runs on this machine: which implementation of each op, and how much memory a step trades for time.

`trm_mlx.runtime.Runtime.execution` chooses it for the process; the default runs every op as plain MLX on any
backend. None of it changes the mathematics, and the numerics only where a field says so.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Execution:
    # trm_mlx.kernels' fused GPU kernels to run (each passed its self-check); every other op runs its reference.
    fused_kernels: frozenset[str] = frozenset()
    # trm_mlx.kernels.cpu's versions of SwiGLU, the attention, the head split and the token mixing.
    cpu_paths: bool = False
    # Half-precision matrix products computed in fp32 from operands rounded to their dtype, rounded once (what a
    # half-precision GEMM with fp32 accumulation computes; MLX's CPU has no fast one).
    fp32_products: bool = False
    # A differentiated pass pads attention's positions to a multiple of this (masked): cuDNN's fused backward on CUDA.
    attention_tile: int = 1
    # The share of a differentiated pass's block applications that recompute their forward in the backward.
    recompute: float = 0.0
    # The stablemax cross entropy's dtype: float64 where MLX has it (the CPU), as the original.
    loss_dtype: str = "float32"
