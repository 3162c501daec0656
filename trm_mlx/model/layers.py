"""Building blocks shared by every architecture, with the original's numerics (spec §2.4).

Weights are fp32 masters cast to the input's dtype on every call; norms and RoPE run in fp32.
"""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .config import swiglu_intermediate_size
from .init import truncated_normal


class CastedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = truncated_normal((out_features, in_features), std=1.0 / math.sqrt(in_features))
        if bias:
            self.bias = mx.zeros((out_features,))

    def __call__(self, x: mx.array) -> mx.array:
        w = self.weight.astype(x.dtype)
        if "bias" in self:
            # Bias inside the matmul (one rounding), as torch's addmm: matters for q_head in bf16.
            flat = x.reshape(-1, x.shape[-1])
            y = mx.addmm(self.bias.astype(x.dtype), flat, w.T)
            return y.reshape(*x.shape[:-1], -1)
        return x @ w.T


class CastedEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float):
        super().__init__()
        self.embedding_weight = truncated_normal((num_embeddings, embedding_dim), std=init_std)

    def __call__(self, ids: mx.array, dtype) -> mx.array:
        return self.embedding_weight.astype(dtype)[ids]


def rms_norm(x: mx.array, eps: float) -> mx.array:
    """Weightless RMSNorm over the last axis, computed in fp32 and rounded back to x's dtype."""
    return mx.fast.rms_norm(x, None, eps)


class RotaryTables:
    """cos/sin tables [S', hd] in fp32 (spec §2.4.4), built once per sequence length.

    Not a module attribute of arrays on purpose: the tables are not weights and never saved.
    """

    def __init__(self, head_dim: int, theta: float):
        exponent = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
        self.inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponent)).astype(np.float32)
        self._cache = {}

    def __call__(self, length: int):
        if length not in self._cache:
            t = np.arange(length, dtype=np.float32)
            freqs = np.outer(t, self.inv_freq).astype(np.float32)
            emb = np.concatenate([freqs, freqs], axis=-1)
            self._cache[length] = (mx.array(np.cos(emb)), mx.array(np.sin(emb)))
        return self._cache[length]


def rotate_half(x: mx.array) -> mx.array:
    half = x.shape[-1] // 2
    return mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """x: [B, S, heads, hd]; rotation in fp32, result in x's dtype."""
    x32 = x.astype(mx.float32)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


class Attention(nn.Module):
    """Non-causal multi-head attention, no GQA, no mask; q/k/v are head-major blocks of one projection."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        width = num_heads * self.head_dim
        self.qkv_proj = CastedLinear(hidden_size, 3 * width)
        self.o_proj = CastedLinear(width, hidden_size)

    def __call__(self, h: mx.array, rotary) -> mx.array:
        B, S, _ = h.shape
        nh, hd = self.num_heads, self.head_dim
        qkv = self.qkv_proj(h).reshape(B, S, 3 * nh, hd)
        q, k, v = qkv[:, :, :nh], qkv[:, :, nh : 2 * nh], qkv[:, :, 2 * nh :]
        if rotary is not None:
            cos, sin = rotary
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(hd))
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, S, nh * hd))


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        inter = swiglu_intermediate_size(expansion, hidden_size)
        self.gate_up_proj = CastedLinear(hidden_size, 2 * inter)
        self.down_proj = CastedLinear(inter, hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(nn.silu(gate) * up)


class Block(nn.Module):
    """Post-norm block: attention (or token-mixing MLP over the sequence axis) then a SwiGLU MLP."""

    def __init__(self, hidden_size: int, num_heads: int, expansion: float, eps: float, mlp_t_len: int = 0):
        super().__init__()
        self.eps = eps
        self.use_mlp_t = mlp_t_len > 0
        if self.use_mlp_t:
            self.mlp_t = SwiGLU(mlp_t_len, expansion)
        else:
            self.self_attn = Attention(hidden_size, num_heads)
        self.mlp = SwiGLU(hidden_size, expansion)

    def __call__(self, h: mx.array, rotary) -> mx.array:
        if self.use_mlp_t:
            t = h.swapaxes(1, 2)
            t = rms_norm(t + self.mlp_t(t), self.eps)  # normalised over the sequence axis, as the original
            h = t.swapaxes(1, 2)
        else:
            h = rms_norm(h + self.self_attn(h, rotary), self.eps)
        return rms_norm(h + self.mlp(h), self.eps)


class ReasoningModule(nn.Module):
    """`f(h, injection)`: add the injection, then apply the blocks in order."""

    def __init__(self, layers: list):
        super().__init__()
        self.layers = layers

    def __call__(self, h: mx.array, injection, rotary) -> mx.array:
        if injection is not None:
            h = h + injection
        for layer in self.layers:
            h = layer(h, rotary)
        return h


class PuzzleEmbedding(nn.Module):
    """The per-puzzle embedding table [N_id, Dp] (spec §2.8).

    Frozen for autodiff: training differentiates the gathered rows instead (a [B, Dp] input of the step), so the
    gradient is never a dense [N_id, Dp] array, and the rows are updated by the sparse sign-SGD optimizer.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.weights = mx.zeros((num_embeddings, embedding_dim))
        self.freeze()

    def gather(self, ids: mx.array) -> mx.array:
        return mx.stop_gradient(self.weights[ids])
