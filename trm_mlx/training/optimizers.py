"""The two optimizers of the original trainer: AdamATan2 for the weights, sign-SGD for the puzzle-embedding table."""

import math

import mlx.core as mx
import mlx.optimizers as optim


def _bias_correction(beta: float, step: mx.array) -> mx.array:
    """``1 - beta**step`` computed as ``-expm1(step * log(beta))``.

    The direct form loses most of its digits to cancellation in fp32 when ``beta**step`` is close to 1 (the first
    steps); this form stays within an ulp or two of the double-precision value the CUDA kernel uses.
    """
    log_beta = math.log(beta) if beta > 0 else -math.inf
    return -mx.expm1(step * log_beta)


class AdamATan2(optim.Optimizer):
    """Adam with ``atan2`` in place of the epsilon-guarded division (pip ``adam-atan2``, the optimizer TRM uses).

    Per parameter, with the scheduled learning rate ``lr`` and the parameter's own step count ``t``::

        p <- p * (1 - lr * weight_decay)
        m <- m + (1 - b1) * (g - m);   v <- v + (1 - b2) * (g**2 - v)
        p <- p - lr / (1 - b1**t) * atan2(m, sqrt(v) / sqrt(1 - b2**t))

    No epsilon: ``atan2`` is bounded and defined at ``m = v = 0``. The first-moment correction scales the step
    (outside ``atan2``), the second-moment correction sits inside. Weight decay applies to every parameter given.
    Math and state are fp32 (the master weights are fp32); ``step`` is an fp32 count per parameter, as in the kernel.
    """

    def __init__(self, learning_rate, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 1e-2):
        super().__init__()
        for index, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"AdamATan2 beta{index + 1} must be in [0, 1), got {beta}")
        self._maybe_schedule("learning_rate", learning_rate)
        self.betas = tuple(betas)
        self.weight_decay = weight_decay

    def init_single(self, parameter: mx.array, state: dict):
        state["m"] = mx.zeros_like(parameter)
        state["v"] = mx.zeros_like(parameter)
        state["step"] = mx.array(0.0, mx.float32)

    def apply_single(self, gradient: mx.array, parameter: mx.array, state: dict):
        beta1, beta2 = self.betas
        lr = self.learning_rate.astype(mx.float32)
        step = state["step"] + 1
        gradient = gradient.astype(mx.float32)

        m = state["m"] + (1 - beta1) * (gradient - state["m"])
        v = state["v"] + (1 - beta2) * (mx.square(gradient) - state["v"])
        state["m"], state["v"], state["step"] = m, v, step

        step_size = lr / _bias_correction(beta1, step)
        denominator = mx.sqrt(v) / mx.sqrt(_bias_correction(beta2, step))
        decayed = parameter * (1 - lr * self.weight_decay)
        return (decayed - step_size * mx.arctan2(m, denominator)).astype(parameter.dtype)


def sparse_sign_sgd(
    table: mx.array, ids: mx.array, row_grads: mx.array, lr: mx.array | float, weight_decay: float
) -> mx.array:
    """Sign-SGD with decoupled weight decay on the rows of ``table`` that ``ids`` names; other rows are untouched.

    ``row_grads[j]`` is the gradient of row ``ids[j]``. A row named several times gets the sign of the *sum* of its
    gradients and is decayed once: ``w <- w * (1 - lr * wd) - lr * sign(sum of its gradients)``.

    Shapes stay fixed, so this runs inside ``mx.compile``. Instead of ``unique`` it compares the ``B`` ids with each
    other (``B x B`` booleans, no ``Dp`` factor), sums each id's gradients into the slot of its first occurrence
    (scatter-add into a ``[B, Dp]`` buffer), and writes every row back with a scatter: ``O(B^2 + B*Dp)`` work per
    step whatever the table size. (Scatter-adding into a zero buffer of the table's shape would cost ``O(N_id*Dp)``
    per step, about 2 GB of traffic for an ARC table.) Duplicates of an id write identical values, so the order in
    which the scatter applies them does not matter.
    """
    batch = ids.shape[0]
    positions = mx.arange(batch)
    same_id = ids[:, None] == ids[None, :]
    first = mx.min(mx.where(same_id, positions[None, :], batch), axis=1)
    grad_sums = mx.zeros_like(row_grads).at[first].add(row_grads)[first]

    new_rows = table[ids] * (1 - lr * weight_decay) - lr * mx.sign(grad_sums)
    return mx.put_along_axis(table, ids[:, None], new_rows.astype(table.dtype), axis=0)
