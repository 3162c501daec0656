"""Building blocks shared by every architecture, with the original's numerics (spec §2.4).

Weights are fp32 masters cast to the input's dtype on every call; norms and RoPE run in fp32. Each layer takes the
model's `Execution`: which implementation of its ops runs here (trm_mlx.kernels), never what it computes.
"""

import functools
import math
from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ..kernels import GEMM_ROW_MULTIPLE, add_rms_norm, inject, split_heads, swiglu, token_mixing
from ..kernels import cpu as cpu_kernels
from ..kernels.rope import rotary_tables
from .config import swiglu_intermediate_size
from .execution import Execution
from .init import truncated_normal


def product_dtype(dtype: mx.Dtype, fp32_products: bool) -> mx.Dtype:
    """The dtype a matrix product of `dtype` operands runs in: fp32 for half precision with `fp32_products` (the
    operands already rounded to `dtype`; see CastedLinear), else `dtype` itself."""
    return mx.float32 if dtype in (mx.bfloat16, mx.float16) and fp32_products else dtype


class CastedLinear(nn.Module):
    """`x @ W^T (+ b)` with W (and b) cast to x's dtype on every call.

    MLX's CPU backend has no fast half-precision matrix product (bf16 runs ~15x slower than fp32 through OpenBLAS),
    so there (`Execution.fp32_products`) a bf16/fp16 product is computed in fp32 from the operands rounded to x's
    dtype and rounded once: what a half-precision GEMM with fp32 accumulation (PyTorch's CPU bf16 matmul, a GPU's
    tensor cores) computes.
    """

    def __init__(self, in_features: int, out_features: int, execution: Execution, bias: bool = False):
        super().__init__()
        self.execution = execution
        self.weight = truncated_normal((out_features, in_features), std=1.0 / math.sqrt(in_features))
        if bias:
            self.bias = mx.zeros((out_features,))

    def __call__(self, x: mx.array) -> mx.array:
        dtype = x.dtype
        w = self.weight.astype(dtype)
        bias = self.bias.astype(dtype) if "bias" in self else None
        compute = product_dtype(dtype, self.execution.fp32_products)
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

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, execution: Execution):
        super().__init__()
        self.execution = execution
        self.embedding_weight = truncated_normal((num_embeddings, embedding_dim), std=init_std)

    def __call__(self, ids: mx.array, dtype) -> mx.array:
        weight = self.embedding_weight.astype(dtype)
        if weight.shape[0] <= weight.shape[1]:
            return lookup_rows(self.execution.fp32_products)(weight, ids)
        return weight[ids]


@functools.cache
def lookup_rows(fp32_products: bool):
    """`(weight, ids) -> weight[ids]`, whose weight gradient is `one_hot(ids)^T @ cotangent` (fp32 accumulation,
    one rounding; half-precision products in fp32 with `fp32_products`, as CastedLinear's).

    Autodiff's gradient of a gather is a scatter-add: on a GPU, tens of thousands of rows added atomically into a
    dozen, in the weight's dtype (18 ms a step at Sudoku batch 768 on an H100, and bf16 sums lose the small terms).
    The product reads the cotangent once and accumulates as PyTorch's embedding backward does, and, unlike atomic
    adds, in a fixed order. (In fp32 on a GPU its operands are rounded to TF32 unless MLX_ENABLE_TF32=0, as in
    every fp32 product there.)
    """

    @mx.custom_function
    def lookup(weight: mx.array, ids: mx.array) -> mx.array:
        return weight[ids]

    @lookup.vjp
    def lookup_vjp(primals, cotangent, output):
        weight, ids = primals
        rows, width = weight.shape
        compute = product_dtype(cotangent.dtype, fp32_products)
        # One-hot columns padded to an aligned count (zero columns) so that cuBLAS takes an aligned kernel.
        columns = rows + (-rows % GEMM_ROW_MULTIPLE)
        one_hot = (ids.reshape(-1, 1) == mx.arange(columns)).astype(compute)
        grad = (one_hot.T @ cotangent.reshape(-1, width).astype(compute))[:rows]
        return grad.astype(weight.dtype), mx.zeros_like(ids)

    return lookup


class RotaryTables:
    """RoPE's cos/sin tables [S', hd] in fp32 (`kernels.rope.rotary_tables`), built once per sequence length.

    Not a module attribute of arrays on purpose: the tables are not weights and never saved.
    """

    def __init__(self, head_dim: int, theta: float):
        self.head_dim, self.theta = head_dim, theta
        self._cache = {}

    def __call__(self, length: int):
        if length not in self._cache:
            self._cache[length] = rotary_tables(length, self.head_dim, self.theta)
        return self._cache[length]


class Attention(nn.Module):
    """Non-causal multi-head attention, no GQA, no mask; q/k/v are head-major blocks of one projection."""

    def __init__(self, hidden_size: int, num_heads: int, execution: Execution):
        super().__init__()
        self.execution = execution
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        width = num_heads * self.head_dim
        self.qkv_proj = CastedLinear(hidden_size, 3 * width, execution)
        self.o_proj = CastedLinear(width, hidden_size, execution)

    def __call__(self, h: mx.array, rotary) -> mx.array:
        B, S, _ = h.shape
        nh, hd = self.num_heads, self.head_dim
        # A differentiated pass pads the positions to the execution's tile (masked; see `fused_attention`).
        positions = S + (-S % self.execution.attention_tile if self.training else 0)
        q, k, v = split_heads(self.qkv_proj(h), rotary, nh, positions, self.execution)
        if cpu_kernels.enabled(self.execution, q):
            out = cpu_kernels.attention(q, k, v, scale=1.0 / math.sqrt(hd))
        else:
            out = fused_attention(q, k, v, 1.0 / math.sqrt(hd), length=S)
        return self.o_proj(out[:, :, :S].transpose(0, 2, 1, 3).reshape(B, S, nh * hd))


def fused_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, length: int) -> mx.array:
    """`mx.fast.scaled_dot_product_attention` over [B, H, S', hd] whose first `length` positions are real: keys past
    them (padding) are masked with an additive -inf bias, so the real rows are exact; the padded rows are junk."""
    positions = q.shape[2]
    if positions == length:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)
    # One row of key biases for every query (faster than the full [S', S'] bias or a boolean mask).
    bias = mx.where(mx.arange(positions) < length, 0.0, -float("inf")).astype(q.dtype).reshape(1, 1, 1, positions)
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=bias)


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float, execution: Execution):
        super().__init__()
        self.execution = execution
        inter = swiglu_intermediate_size(expansion, hidden_size)
        self.gate_up_proj = CastedLinear(hidden_size, 2 * inter, execution)
        self.down_proj = CastedLinear(inter, hidden_size, execution)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(swiglu(self.gate_up_proj(x), self.execution))


class Block(nn.Module):
    """Post-norm block: attention (or token-mixing MLP over the sequence axis) then a SwiGLU MLP."""

    def __init__(self, hidden_size: int, num_heads: int, expansion: float, eps: float, execution: Execution,
                 mlp_t_len: int = 0):  # fmt: skip
        super().__init__()
        self.execution = execution
        self.eps = eps
        self.use_mlp_t = mlp_t_len > 0
        if self.use_mlp_t:
            self.mlp_t = SwiGLU(mlp_t_len, expansion, execution)
        else:
            self.self_attn = Attention(hidden_size, num_heads, execution)
        self.mlp = SwiGLU(hidden_size, expansion, execution)

    def __call__(self, h: mx.array, rotary) -> mx.array:
        if self.use_mlp_t:  # normalised over the sequence axis, as the original
            h = token_mixing(h, self.mlp_t, self.eps, self.execution)
        else:
            h = add_rms_norm(h, self.self_attn(h, rotary), self.eps, self.execution)
        return add_rms_norm(h, self.mlp(h), self.eps, self.execution)


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


@functools.cache
def recompute_plan(share: float, calls: int, layers: int) -> tuple[tuple[bool, ...], ...]:
    """Which block applications of a differentiated pass recompute, per call of a reasoning module and per layer:
    application j of the pass's `calls` x `layers` does when floor((j + 1) share) > floor(j share), so that
    floor(n share) of the n do, spread evenly over the pass."""
    flags = [math.floor((j + 1) * share) > math.floor(j * share) for j in range(calls * layers)]
    return tuple(tuple(flags[call * layers : (call + 1) * layers]) for call in range(calls))


class ReasoningModule(nn.Module):
    """`f(h, injection)`: add the injection, then apply the blocks in order.

    A differentiated pass calls the module `calls` times; `recompute_plan` of `Execution.recompute` says which of
    those block applications recompute their forward in the backward (`recomputed`): the memory of such a
    block drops to its input, for one more forward of it. Which ones does not change the peak (every differentiated
    block's saved activations are alive when the backward starts). Evaluation (eval mode) and the no-gradient
    cycles (`undifferentiated`) have no backward and run the blocks plainly.
    """

    def __init__(self, layers: list, execution: Execution, calls: int = 1):
        super().__init__()
        self.execution = execution
        self.layers = layers
        self.calls = calls

    def __call__(self, h: mx.array, injection, rotary, call: int = 0) -> mx.array:
        """`call`: which of the differentiated pass's calls this is (in a pass without gradient, any)."""
        if injection is not None:
            h = inject(h, injection, self.execution)
        plan = recompute_plan(self.execution.recompute, self.calls, len(self.layers))
        for layer, again in zip(self.layers, plan[call] if self.training else [False] * len(self.layers)):
            h = recomputed(layer, h, rotary) if again else layer(h, rotary)
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
