"""AdamATan2 (MLX and the legacy torch one), the sparse sign-SGD update and the LR schedule, against hand-derived
values and against each other."""

import math

import mlx.core as mx
import numpy as np
import pytest
import torch

from legacy.adam_atan2 import AdamATan2 as TorchAdamATan2
from legacy.models.sparse_embedding import CastedSparseEmbeddingSignSGD_Distributed
from legacy.pretrain import cosine_schedule_with_warmup_lr_lambda
from trm_mlx.training.optimizers import AdamATan2, sparse_sign_sgd
from trm_mlx.training.schedule import warmup_cosine_lr

BETAS = (0.9, 0.95)


def _constant_gradient_trajectory(p0, g, lrs, weight_decay):
    """Closed form for a constant gradient: m_t = (1-b1^t) g and v_t = (1-b2^t) g^2, so the second-moment
    correction cancels and every step is p <- p (1 - lr wd) - lr / c_t * atan(c_t) * sign(g), c_t = 1 - b1^t."""
    p = p0.astype(np.float64)
    for t, lr in enumerate(lrs, start=1):
        c = 1 - BETAS[0] ** t
        p = p * (1 - lr * weight_decay) - lr / c * math.atan(c) * np.sign(g)
    return p


def _mlx_run(p0, grads, lrs, weight_decay):
    optimizer = AdamATan2(learning_rate=0.0, betas=BETAS, weight_decay=weight_decay)
    params = {"w": mx.array(p0)}
    for g, lr in zip(grads, lrs):
        optimizer.learning_rate = lr
        params = optimizer.apply_gradients({"w": mx.array(g)}, params)
        mx.eval(params, optimizer.state)
    return np.array(params["w"]), optimizer.state["w"]


def _torch_run(p0, grads, lrs, weight_decay):
    param = torch.nn.Parameter(torch.tensor(p0))
    optimizer = TorchAdamATan2([param], lr=0.0, betas=BETAS, weight_decay=weight_decay)
    for g, lr in zip(grads, lrs):
        param.grad = torch.tensor(g)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
    return param.detach().numpy(), optimizer.state[param]


@pytest.mark.parametrize("run", [_mlx_run, _torch_run], ids=["mlx", "legacy"])
def test_adam_atan2_first_step_by_hand(run):
    p0 = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    g = np.array([0.3, -4.0, 0.0, 1e-6], np.float32)
    lr, wd = 1e-2, 0.1
    p1, state = run(p0, [g], [lr], wd)
    # m = 0.1 g, v = 0.05 g^2, so atan2(m, sqrt(v)/sqrt(0.05)) = atan2(0.1 g, |g|) = sign(g) atan(0.1).
    expected = p0 * (1 - lr * wd) - lr / 0.1 * math.atan(0.1) * np.sign(g)
    np.testing.assert_allclose(p1, expected, rtol=2e-7, atol=0)
    m, v = (state["m"], state["v"]) if "m" in state else (state["exp_avg"].numpy(), state["exp_avg_sq"].numpy())
    np.testing.assert_allclose(np.array(m), 0.1 * g, rtol=1e-6)
    np.testing.assert_allclose(np.array(v), 0.05 * g.astype(np.float64) ** 2, rtol=1e-6)
    assert state["step"].item() == 1.0


@pytest.mark.parametrize("run", [_mlx_run, _torch_run], ids=["mlx", "legacy"])
def test_adam_atan2_constant_gradient_closed_form(run):
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(50).astype(np.float32)
    g = (rng.standard_normal(50) * 10.0 ** rng.integers(-4, 3, 50)).astype(np.float32)
    lrs = [warmup_cosine_lr(s, base_lr=3e-3, warmup_steps=10, total_steps=60, min_ratio=0.2) for s in range(1, 61)]
    p, _ = run(p0, [g] * len(lrs), lrs, weight_decay=0.5)
    np.testing.assert_allclose(p, _constant_gradient_trajectory(p0, g, lrs, 0.5), rtol=1e-5, atol=1e-6)


def test_adam_atan2_mlx_matches_legacy_over_many_steps():
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((40, 17)).astype(np.float32)
    grads = []
    for step in range(200):
        g = rng.standard_normal(p0.shape).astype(np.float32) * (100.0 if step % 7 == 0 else 0.01)
        g[:3] = 0.0  # rows that never get a gradient: only decay, atan2(0, 0) = 0
        grads.append(g)
    lrs = [warmup_cosine_lr(s, base_lr=1e-2, warmup_steps=20, total_steps=200, min_ratio=0.1) for s in range(1, 201)]

    p_mlx, state_mlx = _mlx_run(p0, grads, lrs, weight_decay=0.1)
    p_torch, state_torch = _torch_run(p0, grads, lrs, weight_decay=0.1)

    np.testing.assert_allclose(p_mlx, p_torch, rtol=1e-5, atol=1e-6)
    # The moments mix gradients of size 1e2 and 1e-2: compare at the rounding level of the large ones.
    np.testing.assert_allclose(np.array(state_mlx["m"]), state_torch["exp_avg"].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.array(state_mlx["v"]), state_torch["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-5)
    assert state_mlx["step"].item() == state_torch["step"].item() == 200.0
    # Rows without gradient only decayed: p0 * prod(1 - lr wd).
    decay = np.prod([1 - lr * 0.1 for lr in lrs])
    np.testing.assert_allclose(p_mlx[:3], p0[:3] * decay, rtol=1e-5)


def test_adam_atan2_rejects_bad_betas():
    with pytest.raises(ValueError, match="beta2"):
        AdamATan2(learning_rate=1e-3, betas=(0.9, 1.0))
    with pytest.raises(ValueError):
        TorchAdamATan2([torch.nn.Parameter(torch.zeros(2))], betas=(-0.1, 0.9))


def _duplicate_id_case():
    table = np.arange(18, dtype=np.float32).reshape(6, 3) / 4 - 1
    ids = np.array([4, 1, 4, 0], np.int32)
    row_grads = np.array(
        [[1.0, -3.0, 2.0],  # id 4
         [0.5, 0.0, -0.5],  # id 1
         [-2.0, 1.0, -2.0],  # id 4 again: the sum for id 4 is [-1, -2, 0]
         [-1e-3, 7.0, 0.0]],  # id 0
        np.float32,
    )
    return table, ids, row_grads


def test_sparse_sign_sgd_duplicate_ids_by_hand():
    table, ids, row_grads = _duplicate_id_case()
    lr, wd = 0.25, 0.5
    new = np.array(sparse_sign_sgd(mx.array(table), mx.array(ids), mx.array(row_grads), lr, wd))
    decay = 1 - lr * wd
    expected = table.copy()
    expected[4] = table[4] * decay - lr * np.array([-1.0, -1.0, 0.0])  # sign of the summed gradient
    expected[1] = table[1] * decay - lr * np.array([1.0, 0.0, -1.0])
    expected[0] = table[0] * decay - lr * np.array([-1.0, 1.0, 0.0])
    np.testing.assert_array_equal(new, expected.astype(np.float32))
    np.testing.assert_array_equal(new[[2, 3, 5]], table[[2, 3, 5]])  # rows not in the batch: no decay


def _legacy_sign_sgd_steps(table, steps, weight_decay):
    weights = torch.tensor(table)
    local_weights = torch.zeros(steps[0][1].shape, requires_grad=True)
    local_ids = torch.zeros(steps[0][0].shape, dtype=torch.int32)
    optimizer = CastedSparseEmbeddingSignSGD_Distributed(
        [weights, local_weights, local_ids], world_size=1, lr=0.0, weight_decay=weight_decay
    )
    for ids, grads, lr in steps:
        local_ids.copy_(torch.tensor(ids))
        local_weights.grad = torch.tensor(grads)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad()
    return weights.numpy()


def test_sparse_sign_sgd_matches_legacy_optimizer():
    rng = np.random.default_rng(3)
    table = rng.standard_normal((50, 8)).astype(np.float32)
    steps = []
    for step in range(1, 11):
        ids = rng.integers(0, 12, 32).astype(np.int32)  # many repeats, rows 12..49 never touched
        grads = rng.standard_normal((32, 8)).astype(np.float32)
        grads[rng.random((32, 8)) < 0.2] = 0.0
        steps.append((ids, grads, warmup_cosine_lr(step, base_lr=1e-2, warmup_steps=4, total_steps=10, min_ratio=0.0)))

    expected = _legacy_sign_sgd_steps(table, steps, weight_decay=0.1)

    new = mx.array(table)
    for ids, grads, lr in steps:
        new = sparse_sign_sgd(new, mx.array(ids), mx.array(grads), lr, 0.1)
    np.testing.assert_array_equal(np.array(new), expected)
    np.testing.assert_array_equal(np.array(new)[12:], table[12:])


def test_sparse_sign_sgd_compiles_with_array_learning_rate():
    table, ids, row_grads = _duplicate_id_case()
    step = mx.compile(lambda t, i, g, lr: sparse_sign_sgd(t, i, g, lr, 0.5))
    args = (mx.array(table), mx.array(ids), mx.array(row_grads))
    compiled = np.array(step(*args, mx.array(0.25)))
    eager = np.array(sparse_sign_sgd(*args, 0.25, 0.5))
    np.testing.assert_allclose(compiled, eager, rtol=1e-7, atol=0)
    # A new learning rate is a new input value, not a new graph.
    np.testing.assert_allclose(np.array(step(*args, mx.array(0.0))), table, rtol=0, atol=0)


SCHEDULE = dict(base_lr=1e-4, warmup_steps=2000, total_steps=10000)


@pytest.mark.parametrize(
    "step, min_ratio, expected",
    [
        (1, 0.1, 1e-4 / 2000),  # the first update already has a non-zero rate
        (1000, 0.1, 0.5e-4),
        (1999, 0.1, 1e-4 * 1999 / 2000),
        (2000, 0.1, 1e-4),  # warmup done, cosine at progress 0
        (6000, 0.1, 1e-4 * (0.1 + 0.9 * 0.5)),  # progress 1/2: cos = 0
        (4000, 0.1, 1e-4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))),
        (10000, 0.1, 1e-5),  # end: min_ratio * base
        (10000, 0.0, 0.0),
        (6000, 1.0, 1e-4),  # the yaml default: constant after warmup
        (50000, 1.0, 1e-4),
    ],
)
def test_schedule_hand_computed_points(step, min_ratio, expected):
    lr = warmup_cosine_lr(step, min_ratio=min_ratio, **SCHEDULE)
    assert lr == pytest.approx(expected, rel=1e-12, abs=1e-20)


def test_schedule_equals_legacy_everywhere():
    for min_ratio in (0.0, 0.3, 1.0):
        for step in list(range(0, 2100, 7)) + list(range(2100, 12000, 97)):
            ours = warmup_cosine_lr(step, min_ratio=min_ratio, **SCHEDULE)
            theirs = cosine_schedule_with_warmup_lr_lambda(
                step, base_lr=1e-4, num_warmup_steps=2000, num_training_steps=10000, min_ratio=min_ratio
            )
            assert ours == theirs


def test_schedule_without_warmup():
    assert warmup_cosine_lr(1, base_lr=2.0, warmup_steps=0, total_steps=1, min_ratio=0.0) == pytest.approx(0.0, abs=1e-15)
    assert warmup_cosine_lr(0, base_lr=2.0, warmup_steps=0, total_steps=4, min_ratio=0.5) == 2.0
