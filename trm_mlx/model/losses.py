"""The ACT loss head: LM loss on every row at every step, Q-halt (and Q-continue) BCE, and metrics (spec §4)."""

import mlx.core as mx
import mlx.nn as nn

from ..data.dataset import IGNORE_LABEL_ID
from .recursive import ACTModel, ACTStep


def log_stablemax(x: mx.array, axis: int = -1) -> mx.array:
    """log(s(x) / sum s(x)), s(x) = 1/(1 - x) for x < 0, x + 1 otherwise (spec §4.1), with a finite gradient.

    The original evaluates 1/(1 - x + 1e-30) at every x and selects with `where`; at x = 1 exactly that branch's
    derivative is 1e60, which overflows to inf in fp32, and the unselected branch's zero cotangent times inf is
    NaN. The original runs this in fp64 and never sees it; on a GPU (fp32 here) bf16 logits are exactly 1.0 often
    enough to turn every gradient NaN within steps. Clamping the unused branch to x <= 0 gives the same values.
    """
    s = mx.where(x < 0, 1 / (1 - mx.minimum(x, 0)), x + 1)
    return mx.log(s / mx.sum(s, axis=axis, keepdims=True))


def stablemax_cross_entropy(logits: mx.array, labels: mx.array, valid: mx.array) -> mx.array:
    """In the logits' dtype (the loss head's `Execution.loss_dtype`)."""
    logprobs = log_stablemax(logits)
    picked = mx.take_along_axis(logprobs, mx.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return -mx.where(valid, picked, 0)


def softmax_cross_entropy(logits: mx.array, labels: mx.array, valid: mx.array) -> mx.array:
    logprobs = nn.log_softmax(logits.astype(mx.float32), axis=-1)
    picked = mx.take_along_axis(logprobs, mx.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
    return -mx.where(valid, picked, 0)


LOSS_FUNCTIONS = {"stablemax_cross_entropy": stablemax_cross_entropy, "softmax_cross_entropy": softmax_cross_entropy}


@mx.custom_function
def binary_cross_entropy_with_logits(x: mx.array, target: mx.array) -> mx.array:
    """Per row, -(target log sigmoid(x) + (1 - target) log sigmoid(-x)), with value and gradient exact to rounding
    on both tails: a trained Q head is confident (|x| of 10 and more), and there sigmoid(x) - target rounds away the
    gradient of every row it predicts right (mlx.nn's form loses it where target = 0, the original's where
    target = 1)."""
    return target * mx.logaddexp(-x, 0) + (1 - target) * mx.logaddexp(x, 0)  # softplus: exact on both tails


@binary_cross_entropy_with_logits.vjp
def _bce_vjp(primals, cotangent, output):
    x, target = primals
    return cotangent * ((1 - target) * mx.sigmoid(x) - target * mx.sigmoid(-x)), cotangent * -x


class ACTLossHead(nn.Module):
    """The loss of an ACT step around the model it trains (the root of a training state's arrays)."""

    def __init__(self, model: ACTModel, loss_type: str = "stablemax_cross_entropy"):
        super().__init__()
        if loss_type not in LOSS_FUNCTIONS:
            raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {sorted(LOSS_FUNCTIONS)}")
        self.model = model
        self.loss_fn = LOSS_FUNCTIONS[loss_type]

    def loss_and_metrics(self, step: ACTStep, halted_rows_only: bool = False) -> tuple[mx.array, dict]:
        """The loss of one ACT step summed over every row, and its metrics: sums over the rows that halted in it
        (`count` of them). With `halted_rows_only` the losses too are summed over those rows only: an evaluation
        that stops each row where it halts scores each row's losses once, at its answer."""
        labels = step.carry["current_data"]["labels"]
        mask = labels != IGNORE_LABEL_ID
        count = mask.sum(-1)
        divisor = mx.maximum(count, 1)[:, None]
        is_correct = mask & (step.preds == labels)
        seq_correct = is_correct.sum(-1) == count
        valid = step.carry["halted"] & (count > 0)

        metrics = {
            "count": valid.sum(),
            "accuracy": mx.where(valid, (is_correct.astype(mx.float32) / divisor).sum(-1), 0).sum(),
            "exact_accuracy": (valid & seq_correct).sum(),
            "q_halt_accuracy": (valid & ((step.q_halt >= 0) == seq_correct)).sum(),
            "steps": mx.where(valid, step.carry["steps"], 0).sum(),
        }

        logits = step.logits.astype(getattr(mx, self.model.execution.loss_dtype))
        row_lm_loss = (self.loss_fn(logits, labels, mask) / divisor).sum(-1)
        row_q_halt_loss = binary_cross_entropy_with_logits(step.q_halt, seq_correct.astype(mx.float32))
        if halted_rows_only:
            row_lm_loss, row_q_halt_loss = mx.where(valid, row_lm_loss, 0), mx.where(valid, row_q_halt_loss, 0)
        lm_loss, q_halt_loss = row_lm_loss.sum(), row_q_halt_loss.sum()
        metrics["lm_loss"] = lm_loss
        metrics["q_halt_loss"] = q_halt_loss
        q_continue_loss = 0
        if step.target_q_continue is not None:
            q_continue_loss = binary_cross_entropy_with_logits(step.q_continue, step.target_q_continue).sum()
            metrics["q_continue_loss"] = q_continue_loss
        loss = lm_loss + 0.5 * (q_halt_loss + q_continue_loss)
        return loss, {k: mx.stop_gradient(v) for k, v in metrics.items()}
