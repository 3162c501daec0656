"""AdamATan2, the optimizer of pip ``adam-atan2`` (imported by the original as ``from adam_atan2 import AdamATan2``).

Written from the published update rule (spec 5.4.1) so that the reference runs on any device, CPU included. Same
class name, constructor and state keys (``step``, ``exp_avg``, ``exp_avg_sq``) as the package; the arithmetic
follows its CUDA kernel: scalars computed in double and rounded once to the math type, lerps as fused
multiply-adds, everything else in the math type (fp32 for fp32/bf16/fp16 parameters, fp64 for fp64).
"""

import math

import torch
from torch.optim import Optimizer


def _fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a * b + c`` rounded once, like the kernel's ``fma``.

    For fp32 the product of two fp32 numbers is exact in fp64, so the only roundings are the fp64 sum and the
    final fp32 cast (a double rounding that differs from a true fma only in rare exact-halfway cases). For fp64
    inputs this is the plain two-rounding expression.
    """
    if a.dtype == torch.float64:
        return a * b + c
    return (a.double() * b.double() + c.double()).to(a.dtype)


def _lerp(old: torch.Tensor, new: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``old + weight * (new - old)`` in the kernel's form ``fma(w, new, fma(-w, old, old))``."""
    return _fma(weight.expand_as(new), new, _fma(-weight.expand_as(old), old, old))


class AdamATan2(Optimizer):
    """``p <- p*(1 - lr*wd) - lr/(1 - b1^t) * atan2(m, sqrt(v)/sqrt(1 - b2^t))`` with lerp-form moments, no eps."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 1e-2):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        for index, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {index}: {beta}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("AdamATan2 does not support sparse gradients")
                state = self.state[param]
                if not state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                _update(
                    param,
                    param.grad,
                    state["exp_avg"],
                    state["exp_avg_sq"],
                    step=float(state["step"]),
                    beta1=beta1,
                    beta2=beta2,
                    lr=group["lr"],
                    weight_decay=group["weight_decay"],
                )


def _update(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    *,
    step: float,
    beta1: float,
    beta2: float,
    lr: float,
    weight_decay: float,
) -> None:
    """One element-wise update of ``param`` and its moments, in place."""
    math_dtype = torch.float64 if param.dtype == torch.float64 else torch.float32

    def scalar(value: float) -> torch.Tensor:
        return torch.tensor(value, dtype=math_dtype, device=param.device)

    # Host-side scalars: double precision, then one rounding to the math type.
    step_size = scalar(lr / (1 - beta1**step))
    bias_correction2_sqrt = scalar(math.sqrt(1 - beta2**step))
    decay = scalar(1 - lr * weight_decay)
    one_minus_beta1 = scalar(1 - beta1)
    one_minus_beta2 = scalar(1 - beta2)

    p = param.to(math_dtype)
    g = grad.to(math_dtype)
    p = p * decay
    m = _lerp(exp_avg.to(math_dtype), g, one_minus_beta1)
    v = _lerp(exp_avg_sq.to(math_dtype), g * g, one_minus_beta2)
    denominator = torch.sqrt(v) / bias_correction2_sqrt
    p = p - step_size * torch.atan2(m, denominator)

    param.copy_(p)
    exp_avg.copy_(m)
    exp_avg_sq.copy_(v)
