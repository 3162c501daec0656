"""trm_mlx's loss functions against hand-derived values, where the original's formula breaks in fp32."""

import math

import mlx.core as mx
import numpy as np
import pytest

from trm_mlx.model.losses import binary_cross_entropy_with_logits, log_stablemax


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


@pytest.mark.parametrize("target", [0.0, 1.0, 0.3])
def test_q_loss_value_and_gradient_hold_their_precision_where_the_q_head_is_confident(target):
    """Against fp64 from the formula: BCE = t log(1 + e^-x) + (1 - t) log(1 + e^x), gradient sigmoid(x) - t written
    as (1 - t) sigmoid(x) - t sigmoid(-x). A trained Q head's logits reach |x| >= 10, where sigmoid(x) - t in fp32
    keeps few or no digits of the gradient (at x = -20, t = 0: none)."""
    x = np.array([-30, -20, -12, -8, -1, 0, 1, 8, 12, 20, 30], np.float32)
    t = np.full_like(x, target)
    x64 = x.astype(np.float64)
    expected_value = target * np.logaddexp(0, -x64) + (1 - target) * np.logaddexp(0, x64)
    expected_grad = (1 - target) / (1 + np.exp(-x64)) - target / (1 + np.exp(x64))

    def loss(logits):
        return binary_cross_entropy_with_logits(logits, mx.array(t)).sum()

    value = binary_cross_entropy_with_logits(mx.array(x), mx.array(t))
    np.testing.assert_allclose(np.array(value), expected_value, rtol=1e-5)
    for grad in (mx.grad(loss), mx.compile(mx.grad(loss))):
        np.testing.assert_allclose(np.array(grad(mx.array(x))), expected_grad, rtol=1e-5)


def _reference_loss_head(logits, q_halt, labels, halted, steps, loss_type):
    """The reference's loss head on a model that returns these outputs: loss, metrics, d loss / d (logits, q_halt)."""
    from types import SimpleNamespace

    import torch

    from legacy.models.losses import ACTLossHead as ReferenceHead

    logits_t = torch.tensor(logits, requires_grad=True)
    q_t = torch.tensor(q_halt, requires_grad=True)
    carry = SimpleNamespace(current_data={"labels": torch.tensor(labels)}, halted=torch.tensor(halted),
                            steps=torch.tensor(steps))  # fmt: skip

    class Outputs(torch.nn.Module):
        def forward(self):
            return carry, {"logits": logits_t, "q_halt_logits": q_t, "q_continue_logits": torch.zeros_like(q_t)}

    _, loss, metrics, _, _ = ReferenceHead(Outputs(), loss_type)(return_keys=[])
    loss.backward()
    return loss.item(), {k: float(v) for k, v in metrics.items()}, logits_t.grad.numpy(), q_t.grad.numpy()


@pytest.mark.parametrize("loss_type", ["stablemax_cross_entropy", "softmax_cross_entropy"])
def test_the_loss_head_matches_the_reference_on_solved_wrong_halted_and_empty_rows(loss_type):
    """Rows whose answer is exact (the Q-halt target 1), exact but for ignored cells, wrong, and without labels;
    some halted (their metrics count), some not (their losses count all the same)."""
    from trm_mlx.model.losses import ACTLossHead
    from trm_mlx.model.recursive import ACTStep

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5, 7)).astype(np.float32)
    labels = logits.argmax(-1).astype(np.int64)
    labels[1, :2] = -100  # exact where labelled
    labels[2, 3] = (labels[2, 3] + 1) % 7  # one wrong cell
    labels[3] = (labels[3] + 1) % 7  # all wrong
    labels[4] = -100  # nothing to score
    halted = np.array([True, True, False, True, True, False])
    steps = np.array([3, 1, 2, 8, 4, 2], np.int32)
    q_halt = np.array([1.5, -0.3, 0.7, -2.0, 0.2, 0.0], np.float32)
    expected_loss, expected_metrics, expected_dlogits, expected_dq = _reference_loss_head(
        logits, q_halt, labels, halted, steps, loss_type)  # fmt: skip

    class Model:  # what the head reads of a model: the loss dtype
        execution = type("Execution", (), {"loss_dtype": "float32"})()

    head = ACTLossHead.__new__(ACTLossHead)
    ACTLossHead.__init__(head, Model(), loss_type)
    carry = {"current_data": {"labels": mx.array(labels.astype(np.int32))}, "halted": mx.array(halted),
             "steps": mx.array(steps)}  # fmt: skip

    def loss(logits, q):
        return head.loss_and_metrics(ACTStep(carry, logits, q, mx.zeros_like(q)))

    (value, metrics), grads = mx.value_and_grad(lambda x, q: loss(x, q), argnums=(0, 1))(mx.array(logits),
                                                                                        mx.array(q_halt))  # fmt: skip
    assert expected_metrics["exact_accuracy"] == 2 and expected_metrics["count"] == 3  # rows 0, 1 / 0, 1, 3
    assert value.item() == pytest.approx(expected_loss, rel=1e-5)
    for key, expected in expected_metrics.items():
        assert metrics[key].item() == pytest.approx(expected, rel=1e-5), key
    np.testing.assert_allclose(np.array(grads[0]), expected_dlogits, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.array(grads[1]), expected_dq, rtol=1e-5, atol=1e-7)
