"""Fused kernels for the recurrent step, one source for Metal and CUDA (docs/BENCHMARKS.md has the figures).

The recursion applies the same blocks H_cycles x (L_cycles + 1) times per ACT step, so a memory pass saved in a
block is saved that many times. Each op here has a plain-MLX reference and a fused GPU kernel with a custom VJP,
self-checked against the reference before use; the model's `Execution` (chosen by `trm_mlx.runtime`) says which
runs. On the CPU, where MLX has no custom kernels, `cpu` holds faster plain-MLX versions of the exp-based ops and
of the token mixing. `python -m trm_mlx.kernels --check` reports every kernel on the current backend.
"""

import mlx.core as mx

from . import cpu
from .injection import inject
from .norm import add_rms_norm, add_rms_norm_seq, fused_columns
from .registry import OPS, RESULTS, check_once, kernel_dtypes, use_fused
from .rope import split_heads
from .glu import swiglu


def token_mixing(h: mx.array, mlp_t, eps: float, execution) -> mx.array:
    """The MLP-t block's token mixing (spec §2.4.7 steps 1-3) on h [B, S, D], returned in h's layout.

    The reference transposes to [B, D, S], mixes and normalises over the last axis, and transposes back. The
    fused path keeps h's layout: `mix_tokens`, then the norm over the sequence axis in place. The CPU path
    (`cpu.token_mixing`) keeps it too.
    """
    if h.ndim == 3 and use_fused("add_rms_norm_seq", execution, h):
        return fused_columns(h, mix_tokens(h, mlp_t.gate_up_proj.weight, mlp_t.down_proj.weight, execution), eps)
    if h.ndim == 3 and cpu.enabled(execution, h):
        return cpu.token_mixing(h, mlp_t.gate_up_proj.weight, mlp_t.down_proj.weight, eps)
    t = h.swapaxes(1, 2)
    return mx.fast.rms_norm(t + mlp_t(t), None, eps).swapaxes(1, 2)


# cuBLAS runs its fast kernels only when each operand's rows are a multiple of 8 elements long (16 bytes in bf16).
GEMM_ROW_MULTIPLE = 8


def mix_tokens(h: mx.array, gate_up_weight: mx.array, down_weight: mx.array, execution) -> mx.array:
    """The MLP-t mixing `W_down @ swiglu(W_gu @ h)` of each example h [S, D], landing in h's [B, S, D] layout.

    No operand is transposed (the reference mixes h^T and copies it and its gradient), and the SwiGLU halves are the
    two halves of each example's [2I, D] block, so the fused swiglu takes them as rows of length 2 I D. The inner
    size S (81 + 16 for Sudoku) is zero-padded to GEMM_ROW_MULTIPLE in W_gu and h: the padded terms are exact zeros,
    and the unaligned W_gu cost cuBLAS's slow kernels (78 of a 280 ms step at Sudoku batch 768, H100). h gets its
    zero rows by concatenation: `mx.pad` fills the whole padded copy first, and those fills ran beside the step's
    other kernels and slowed them (Sudoku none: 164.6 -> 151.9 ms a step, H100).
    """
    dtype = h.dtype
    batch, length, width = h.shape
    w_gu = gate_up_weight.astype(dtype)
    pad = -length % GEMM_ROW_MULTIPLE
    if pad:
        w_gu = mx.pad(w_gu, [(0, 0), (0, pad)])
        h = mx.concatenate([h, mx.zeros((batch, pad, width), dtype)], axis=1)
    gu = w_gu @ h  # [B, 2I, D]
    inner = gu.shape[1] // 2
    gated = swiglu(gu.reshape(batch, 2 * inner * width), execution).reshape(batch, inner, width)
    return down_weight.astype(dtype) @ gated


def check_all(backend: str) -> dict:
    """Self-check every fused op on `backend`, MLX's default device (once per process); name -> CheckResult."""
    return {name: check_once(name, backend) for name in OPS}


__all__ = [
    "OPS",
    "RESULTS",
    "add_rms_norm",
    "add_rms_norm_seq",
    "check_all",
    "check_once",
    "kernel_dtypes",
    "inject",
    "split_heads",
    "swiglu",
    "token_mixing",
    "use_fused",
]
