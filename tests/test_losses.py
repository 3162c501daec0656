"""trm_mlx's loss functions against hand-derived values, where the original's formula breaks in fp32."""

import math

import mlx.core as mx
import numpy as np

from trm_mlx.model.losses import log_stablemax


def s(x: float) -> float:
    return 1 / (1 - x) if x < 0 else x + 1


def ds(x: float) -> float:
    return 1 / (1 - x) ** 2 if x < 0 else 1.0


def test_stablemax_gradient_is_finite_at_a_logit_of_exactly_one():
    """fp32 is the loss dtype on GPUs. A logit of exactly 1.0 (common for bf16 logits) must not make the gradient
    NaN: the original's 1/(1 - x + 1e-30) branch has derivative 1e60 there, inf in fp32, and 0 * inf in `where`."""
    logits, label = [1.0, -0.5, 0.0, 2.5], 1
    total = sum(s(v) for v in logits)
    expected_value = math.log(s(logits[label]) / total)
    # d/dx_j of log s(x_label) - log sum s: ds/s on the label, - ds(x_j)/total everywhere.
    expected_grad = [(ds(v) / s(v) if j == label else 0.0) - ds(v) / total for j, v in enumerate(logits)]

    value, grad = mx.value_and_grad(lambda x: log_stablemax(x)[label])(mx.array(logits, dtype=mx.float32))
    assert abs(value.item() - expected_value) < 1e-6
    np.testing.assert_allclose(np.array(grad), expected_grad, rtol=1e-6)
