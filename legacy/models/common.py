"""Initialisers shared by every legacy model."""

import math

import torch


def _std_normal_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    """Fill `tensor` in place with a truncated normal whose *actual* std is `std` (JAX-style).

    PyTorch's `trunc_normal_` would leave the std shrunk by the truncation; the original corrects the
    scale first (`comp_std`) and samples by inverse CDF, all in the tensor's own dtype (spec §2.3.1).
    """
    with torch.no_grad():
        if std == 0:
            tensor.zero_()
            return tensor

        sqrt2 = math.sqrt(2.0)
        a = math.erf(lower / sqrt2)
        b = math.erf(upper / sqrt2)
        z = (b - a) / 2
        pdf_lower = _std_normal_pdf(lower)
        pdf_upper = _std_normal_pdf(upper)
        comp_std = std / math.sqrt(
            1 - (upper * pdf_lower - lower * pdf_upper) / z - ((pdf_lower - pdf_upper) / z) ** 2
        )

        tensor.uniform_(a, b)
        tensor.erfinv_()
        tensor.mul_(sqrt2 * comp_std)
        tensor.clip_(lower * comp_std, upper * comp_std)
    return tensor
