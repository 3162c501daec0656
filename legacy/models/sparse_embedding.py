"""Per-puzzle embedding table trained by sign-SGD on the rows of the current batch only (spec §2.8, §5.4.2).

The table is a persistent *buffer*, so AdamATan2, gradient all-reduce and EMA never see it. Autograd only
reaches `local_weights`, a `[B, Dp]` copy of the batch's rows; the optimizer below scatters its gradient back.
"""

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.optimizer import Optimizer, ParamsT

from legacy.models.common import trunc_normal_init_


class CastedSparseEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, batch_size: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to

        self.register_buffer(
            "weights", trunc_normal_init_(torch.empty((num_embeddings, embedding_dim)), std=init_std), persistent=True
        )
        # Gradient sink for the training batch: the only tensor here that requires grad.
        self.register_buffer(
            "local_weights", torch.zeros(batch_size, embedding_dim, requires_grad=True), persistent=False
        )
        self.register_buffer("local_ids", torch.zeros(batch_size, dtype=torch.int32), persistent=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.weights[inputs].to(self.cast_to)

        if inputs.shape[0] != self.local_ids.shape[0]:
            raise ValueError(
                f"CastedSparseEmbedding: training batch has {inputs.shape[0]} puzzle ids but the embedding was built "
                f"for batch_size={self.local_ids.shape[0]} (training batches must be full; drop the last partial one)"
            )
        with torch.no_grad():
            self.local_weights.copy_(self.weights[inputs])
            self.local_ids.copy_(inputs)
        return self.local_weights.to(self.cast_to)


class CastedSparseEmbeddingSignSGD_Distributed(Optimizer):
    """Sign-SGD with decoupled weight decay on the table rows present in the (all-gathered) batch.

    Its single param group holds the three buffers of a `CastedSparseEmbedding`
    (`weights`, `local_weights`, `local_ids`), told apart by requires_grad / ndim as in the original.
    """

    def __init__(self, params: ParamsT, world_size: int, lr: float = 1e-3, weight_decay: float = 1e-2):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, world_size=world_size))

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("CastedSparseEmbeddingSignSGD_Distributed.step does not take a closure")
        for group in self.param_groups:
            local_weights_grad: Optional[torch.Tensor] = None
            local_ids: Optional[torch.Tensor] = None
            weights: Optional[torch.Tensor] = None

            if len(group["params"]) != 3:
                raise ValueError(
                    "CastedSparseEmbeddingSignSGD_Distributed expects exactly the 3 buffers of a CastedSparseEmbedding "
                    f"(weights, local_weights, local_ids) per param group, got {len(group['params'])} tensors"
                )
            for p in group["params"]:
                if p.requires_grad:
                    local_weights_grad = p.grad
                elif p.ndim == 1:
                    local_ids = p
                elif p.ndim == 2:
                    weights = p
                else:
                    raise ValueError(f"unexpected {p.ndim}-D tensor in the sparse-embedding param group")

            if local_weights_grad is None:
                continue
            _sparse_emb_signsgd_dist(
                local_weights_grad,
                local_ids,
                weights,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                world_size=group["world_size"],
            )


def _sparse_emb_signsgd_dist(
    local_weights_grad: torch.Tensor,
    local_ids: torch.Tensor,
    weights: torch.Tensor,
    lr: float,
    weight_decay: float,
    world_size: int,
) -> None:
    dim = local_weights_grad.shape[1]

    all_weights_grad = local_weights_grad
    all_ids = local_ids
    if world_size > 1:
        # Concatenated in rank order, like all_gather_into_tensor.
        grads = [torch.empty_like(local_weights_grad) for _ in range(world_size)]
        ids = [torch.empty_like(local_ids) for _ in range(world_size)]
        dist.all_gather(grads, local_weights_grad.contiguous())
        dist.all_gather(ids, local_ids.contiguous())
        all_weights_grad = torch.cat(grads)
        all_ids = torch.cat(ids)

    # Sum the gradient of repeated ids before taking the sign; untouched rows get no decay.
    grad_ids, inv = all_ids.unique(return_inverse=True)
    grad = torch.zeros((grad_ids.shape[0], dim), dtype=all_weights_grad.dtype, device=all_weights_grad.device)
    grad.scatter_add_(0, inv.unsqueeze(-1).expand(-1, dim), all_weights_grad)

    rows = weights[grad_ids]
    rows.mul_(1.0 - lr * weight_decay).add_(torch.sign(grad), alpha=-lr)
    weights[grad_ids] = rows
