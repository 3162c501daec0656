"""Fused kernels for the recurrent step, one source for Metal and CUDA (docs/BENCHMARKS.md has the figures).

The recursion applies the same blocks H_cycles x (L_cycles + 1) times per ACT step, so a memory pass saved in a
block is saved that many times. Each op here has a plain-MLX reference (what runs whenever the policy in
`trm_mlx.device` says so) and a fused GPU kernel with a custom VJP, self-checked against the reference on first
use. On the CPU, where MLX has no custom kernels, `cpu` holds faster plain-MLX versions of the exp-based ops and
of the token mixing. `python -m trm_mlx.kernels --check` reports every kernel on the current backend.
"""

import mlx.core as mx

from . import cpu
from .injection import inject
from .norm import add_rms_norm, add_rms_norm_seq, fused_columns
from .registry import OPS, RESULTS, check_once, use_fused
from .rope import split_heads
from .glu import swiglu


def token_mixing(h: mx.array, mlp_t, eps: float) -> mx.array:
    """The MLP-t block's token mixing (spec §2.4.7 steps 1-3) on h [B, S, D], returned in h's layout.

    The reference transposes to [B, D, S], mixes and normalises over the last axis, and transposes back. The
    fused path keeps h's layout: the down projection is written as W_down @ a^T, which lands in [B, S, D], and
    the norm runs over the sequence axis in place. The CPU path (`cpu.token_mixing`) keeps it too.
    """
    if h.ndim == 3 and use_fused("add_rms_norm_seq", h):
        mixed = mlp_t.down_proj.weight.astype(h.dtype) @ swiglu(mlp_t.gate_up_proj(h.swapaxes(1, 2))).swapaxes(1, 2)
        return fused_columns(h, mixed, eps)
    if h.ndim == 3 and cpu.enabled(h):
        return cpu.token_mixing(h, mlp_t.gate_up_proj.weight, mlp_t.down_proj.weight, eps)
    t = h.swapaxes(1, 2)
    return mx.fast.rms_norm(t + mlp_t(t), None, eps).swapaxes(1, 2)


def check_all() -> dict:
    """Self-check every fused op on the current backend (once per process); name -> CheckResult."""
    return {name: check_once(name) for name in OPS}


__all__ = [
    "OPS",
    "RESULTS",
    "add_rms_norm",
    "add_rms_norm_seq",
    "check_all",
    "inject",
    "split_heads",
    "swiglu",
    "token_mixing",
    "use_fused",
]
