"""The original's truncated-normal initializer (JAX-style, std-corrected; spec §2.3.1)."""

import math

import mlx.core as mx


def truncated_normal(shape, std: float, dtype=mx.float32, lower: float = -2.0, upper: float = 2.0) -> mx.array:
    """Samples whose empirical std is `std`: inverse-CDF sampling of a normal truncated to [lower, upper]."""
    if std == 0:
        return mx.zeros(shape, dtype=dtype)
    sqrt2 = math.sqrt(2)
    a = math.erf(lower / sqrt2)
    b = math.erf(upper / sqrt2)
    z = (b - a) / 2
    pdf_lower = math.exp(-0.5 * lower**2) / math.sqrt(2 * math.pi)
    pdf_upper = math.exp(-0.5 * upper**2) / math.sqrt(2 * math.pi)
    variance = 1 - (upper * pdf_lower - lower * pdf_upper) / z - ((pdf_lower - pdf_upper) / z) ** 2
    comp_std = std / math.sqrt(variance)
    x = mx.random.uniform(a, b, shape, dtype=dtype)
    x = mx.erfinv(x) * (sqrt2 * comp_std)
    return mx.clip(x, lower * comp_std, upper * comp_std)
