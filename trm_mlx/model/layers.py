"""Building blocks shared by every architecture, with the original's numerics (spec §2.4).

Weights are fp32 masters cast to the input's dtype on every call; norms and RoPE run in fp32.
"""

import math
from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from .. import device, kernels
from ..kernels import cpu as cpu_kernels
from .config import swiglu_intermediate_size
from .init import truncated_normal


def product_dtype(dtype: mx.Dtype) -> mx.Dtype:
    """The dtype a matrix product of `dtype` operands runs in: fp32 for half precision on the CPU (the operands
    already rounded to `dtype`; see CastedLinear), else `dtype` itself."""
    return mx.float32 if dtype in (mx.bfloat16, mx.float16) and device.backend() == "cpu" else dtype


class CastedLinear(nn.Module):
    """`x @ W^T (+ b)` with W (and b) cast to x's dtype on every call.

    MLX's CPU backend has no fast half-precision matrix product (bf16 runs ~15x slower than fp32 through OpenBLAS),
    so on the CPU a bf16/fp16 product is computed in fp32 from the operands rounded to x's dtype and rounded once:
    what a half-precision GEMM with fp32 accumulation (PyTorch's CPU bf16 matmul, a GPU's tensor cores) computes.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = truncated_normal((out_features, in_features), std=1.0 / math.sqrt(in_features))
        if bias:
            self.bias = mx.zeros((out_features,))

    def __call__(self, x: mx.array) -> mx.array:
        dtype = x.dtype
        w = self.weight.astype(dtype)
        bias = self.bias.astype(dtype) if "bias" in self else None
        compute = product_dtype(dtype)
        if compute != dtype:
            x, w = x.astype(compute), w.astype(compute)
            bias = None if bias is None else bias.astype(compute)
        if bias is not None:
            # Bias inside the matmul (one rounding), as torch's addmm: matters for q_head in bf16.
            flat = x.reshape(-1, x.shape[-1])
            y = mx.addmm(bias, flat, w.T).reshape(*x.shape[:-1], -1)
        else:
            y = x @ w.T
        return y.astype(dtype)


class CastedEmbedding(nn.Module):
    """Rows of the table cast to `dtype`; a small table (at most as many rows as columns: the token vocabularies)
    gets its gradient as one matrix product, see `lookup_rows`."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float):
        super().__init__()
        self.embedding_weight = truncated_normal((num_embeddings, embedding_dim), std=init_std)

    def __call__(self, ids: mx.array, dtype) -> mx.array:
        weight = self.embedding_weight.astype(dtype)
        if weight.shape[0] <= weight.shape[1]:
            return lookup_rows(weight, ids)
        return weight[ids]


@mx.custom_function
def lookup_rows(weight: mx.array, ids: mx.array) -> mx.array:
    """`weight[ids]`, whose weight gradient is `one_hot(ids)^T @ cotangent` (fp32 accumulation, one rounding).

    Autodiff's gradient of a gather is a scatter-add: on a GPU, tens of thousands of rows added atomically into a
    dozen, in the weight's dtype (18 ms a step at Sudoku batch 768 on an H100, and bf16 sums lose the small terms).
    The product reads the cotangent once and accumulates as PyTorch's embedding backward does, and, unlike atomic
    adds, in a fixed order. (In fp32 on a GPU its operands are rounded to TF32, as in every fp32 product there.)
    """
    return weight[ids]


@lookup_rows.vjp
def lookup_rows_vjp(primals, cotangent, output):
    weight, ids = primals
    rows, width = weight.shape
    compute = product_dtype(cotangent.dtype)
    # One-hot columns padded to an aligned count (zero columns) so that cuBLAS takes an aligned kernel.
    columns = rows + (-rows % kernels.GEMM_ROW_MULTIPLE)
    one_hot = (ids.reshape(-1, 1) == mx.arange(columns)).astype(compute)
    grad = (one_hot.T @ cotangent.reshape(-1, width).astype(compute))[:rows]
    return grad.astype(weight.dtype), mx.zeros_like(ids)


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
        positions = S + attention_padding(S, differentiable=self.training)
        q, k, v = kernels.split_heads(self.qkv_proj(h), rotary, nh, positions)
        if cpu_kernels.enabled(q):
            out = cpu_kernels.attention(q, k, v, scale=1.0 / math.sqrt(hd))
        else:
            out = fused_attention(q, k, v, 1.0 / math.sqrt(hd), length=S)
        return self.o_proj(out[:, :, :S].transpose(0, 2, 1, 3).reshape(B, S, nh * hd))


# MLX's CUDA attention backward is fused (cuDNN) only for sequence lengths that are a multiple of this; any other
# length falls back to materialising the [B, H, S, S] scores (ARC's 916 positions: ~250 ms of a 540 ms step, H100).
CUDA_FUSED_BACKWARD_TILE = 128


def attention_padding(length: int, differentiable: bool) -> int:
    """Zero positions to append to q, k, v so that a CUDA training step takes the fused attention backward."""
    if differentiable and device.backend() == "cuda":
        return -length % CUDA_FUSED_BACKWARD_TILE
    return 0


def fused_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, length: int) -> mx.array:
    """`mx.fast.scaled_dot_product_attention` over [B, H, S', hd] whose first `length` positions are real: keys past
    them (padding) are masked with an additive -inf bias, so the real rows are exact; the padded rows are junk."""
    positions = q.shape[2]
    if positions == length:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)
    # One row of key biases for every query (H100, ARC shapes: 6.08 ms forward + backward against 6.28 ms for the
    # full [S', S'] bias, and 13 ms for a boolean mask).
    bias = mx.where(mx.arange(positions) < length, 0.0, -float("inf")).astype(q.dtype).reshape(1, 1, 1, positions)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=bias)


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        inter = swiglu_intermediate_size(expansion, hidden_size)
        self.gate_up_proj = CastedLinear(hidden_size, 2 * inter)
        self.down_proj = CastedLinear(inter, hidden_size)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(kernels.swiglu(self.gate_up_proj(x)))


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
            h = kernels.token_mixing(h, self.mlp_t, self.eps)  # normalised over the sequence axis, as the original
        else:
            h = kernels.add_rms_norm(h, self.self_attn(h, rotary), self.eps)
        return kernels.add_rms_norm(h, self.mlp(h), self.eps)


def recomputed(block: Block, h: mx.array, rotary) -> mx.array:
    """`block(h, rotary)`, whose backward recomputes the block from its input instead of keeping its activations.

    Two dependencies make the memory saving real under MLX's depth-first evaluation of the backward graph: the
    recomputation waits for the block's output cotangent (else it runs as soon as its input exists, and every
    pass's activations are alive at once), and the input cotangent waits for the weight gradients (else a
    pass's backward intermediates stay alive until the last weight gradient of every pass is summed).
    """
    names, weights = zip(*tree_flatten(block.trainable_parameters()))

    def forward(x, *ws):
        block.update(tree_unflatten(list(zip(names, ws))))
        return block(x, rotary)

    @mx.custom_function
    def run(x, *ws):
        return forward(x, *ws)

    @run.vjp
    def run_vjp(primals, cotangent, output):
        x, *ws = primals
        (x,) = mx.depends([x], [cotangent])
        _, grads = mx.vjp(lambda *a: [forward(*a)], [x, *ws], [cotangent])
        (dx,) = mx.depends([grads[0]], list(grads[1:]))
        return (dx, *grads[1:])

    return run(h, *weights)


class ReasoningModule(nn.Module):
    """`f(h, injection)`: add the injection, then apply the blocks in order.

    With `recompute` = r > 0, a share r of the block applications of a differentiated pass recompute their forward
    in the backward (`recomputed`): the memory of such a block drops to its input, for one more forward of it.
    The recomputed applications are spread evenly over the pass; which ones does not change the peak (every
    differentiated block's saved activations are alive when the backward starts). Evaluation (eval mode) and the
    no-gradient cycles (`undifferentiated`) have no backward and run the blocks plainly.
    """

    def __init__(self, layers: list):
        super().__init__()
        self.layers = layers
        self.recompute = 0.0
        self.applications = 0  # block applications in this pass, see `begin_pass`

    def __call__(self, h: mx.array, injection, rotary) -> mx.array:
        if injection is not None:
            h = kernels.inject(h, injection)
        for layer in self.layers:
            h = recomputed(layer, h, rotary) if self.recomputes_next() else layer(h, rotary)
        return h

    def begin_pass(self) -> None:
        self.applications = 0

    def recomputes_next(self) -> bool:
        """Whether the next block application recomputes: application j of a differentiated pass does when
        floor((j + 1) r) > floor(j r), so n applications recompute floor(n r) of them."""
        if not (self.training and self.recompute):
            return False
        j, share = self.applications, self.recompute
        self.applications += 1
        return math.floor((j + 1) * share) > math.floor(j * share)


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


@contextmanager
def undifferentiated(*modules: nn.Module):
    """Run passes that no gradient flows through (the recursion's no-gradient cycles) as in evaluation: without
    block recomputation and without the attention padding that only a backward needs."""
    modes = [module.training for module in modules]
    for module in modules:
        module.train(False)
    try:
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)


def set_recompute(model: nn.Module, share: float) -> None:
    """Recompute a share (0 none, 1 all) of the block applications of each differentiated pass in every reasoning
    module of `model` (see `ReasoningModule`, `recomputed`)."""
    for module in model.modules():
        if isinstance(module, ReasoningModule):
            module.recompute = float(share)
