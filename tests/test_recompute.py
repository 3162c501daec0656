"""Block recomputation (`recompute: blocks`): the same gradients as autodiff keeping every activation, for a
fraction of the memory, under the compiled train step as trm-train runs it."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from trm_mlx.model import ACTLossHead, create_model
from trm_mlx.model.layers import recompute_plan
from trm_mlx.runtime import Runtime, recompute_share, set_memory_limit, use_device

from devices import cpu_default_device
from test_model import tiny_arch


def arch(**overrides):
    """test_model's tiny model, wider and with more exploration, so the memory saving shows."""
    sizes = dict(puzzle_emb_ndim=128, L_cycles=3, hidden_size=128, halt_exploration_prob=0.5)
    return tiny_arch(**{**sizes, **overrides})


def compiled_gradients(recompute: float, rows: int = 48, **overrides):
    """(loss, flat gradients, peak bytes above the inputs) of one compiled ACT training step on the default device,
    with that device's execution (the CPU's float64 loss would not run on a GPU)."""
    mx.random.seed(0)
    model = create_model(arch(**overrides), Runtime(use_device("auto"), recompute=recompute).execution)
    head = ACTLossHead(model)
    model.train()
    rng = np.random.default_rng(0)
    batch = {
        "inputs": mx.array(rng.integers(0, 11, (rows, 32)).astype(np.int32)),
        "labels": mx.array(rng.integers(0, 11, (rows, 32)).astype(np.int32)),
        "puzzle_identifiers": mx.array(rng.integers(0, 3, (rows,)).astype(np.int32)),
    }
    carry = model.reset_halted(model.initial_carry(batch), batch)
    puzzle_rows = mx.random.normal((rows, 128))  # non-zero rows, so their gradient is exercised too
    mx.eval(carry, model.parameters())

    def loss_fn(params, puzzle_rows):
        model.update(params)
        return head.loss_and_metrics(model(carry, puzzle_rows))[0]

    step = mx.compile(mx.value_and_grad(loss_fn, argnums=(0, 1)))
    params = model.trainable_parameters()
    mx.random.seed(1)
    mx.eval(step(params, puzzle_rows))  # compile and warm up
    mx.random.seed(1)  # the same exploration draws as the warm-up
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    loss, (weight_grads, row_grads) = step(params, puzzle_rows)
    mx.eval(loss, weight_grads, row_grads)
    peak = mx.get_peak_memory() - base
    return loss.item(), dict(tree_flatten(weight_grads)) | {"puzzle_rows": row_grads}, peak


@pytest.mark.parametrize("variant", [dict(pos_encodings="rope"), dict(mlp_t=True, pos_encodings="none")])
def test_recomputed_blocks_give_the_same_gradients_for_less_memory(variant):
    loss, grads, peak = compiled_gradients(0.0, **variant)
    loss_rc, grads_rc, peak_rc = compiled_gradients(1.0, **variant)
    assert loss_rc == loss
    assert grads_rc.keys() == grads.keys()
    for name, value in grads.items():
        np.testing.assert_allclose(np.array(grads_rc[name]), np.array(value), rtol=1e-5, atol=1e-7, err_msg=name)
    # The backward keeps each block's input instead of its activations: measured 0.33 (attention) and 0.34 (MLP-t)
    # of the plain peak at these sizes; a recomputation that ran during the forward would keep them all. Measured
    # on the CPU device: a GPU queues a step this small whole before it can release any buffer, so both peaks are
    # the same there (the paper-size figures are in docs/BENCHMARKS.md).
    if mx.default_device() != mx.cpu:
        with cpu_default_device():
            peak, peak_rc = [compiled_gradients(share, **variant)[2] for share in (0.0, 1.0)]
    assert peak_rc < 0.6 * peak, (peak_rc, peak)


def test_recompute_policy():
    assert recompute_share("blocks", "cpu") == 1.0 and recompute_share("none", "cuda") == 0.0
    assert recompute_share("auto", "cpu") == 0.0 and recompute_share("auto", "cuda") == 1.0
    assert recompute_share(0.6, "metal") == 0.6
    for wrong in ("everything", 1.5, True):
        with pytest.raises(ValueError, match="recompute must be one of"):
            recompute_share(wrong, "cpu")


def test_the_plan_recomputes_floor_n_r_applications_spread_over_the_pass():
    """Application j of a pass's n recomputes when floor((j + 1) r) > floor(j r): r = 0.3 of 4 calls x 2 layers
    recomputes applications 3 and 6, i.e. layer 1 of call 1 and layer 0 of call 3."""
    assert recompute_plan(0.3, 4, 2) == ((False, False), (False, True), (False, False), (True, False))
    assert recompute_plan(1.0, 3, 2) == ((True, True),) * 3 and recompute_plan(0.0, 3, 2) == ((False, False),) * 3
    for share in (0.1, 0.25, 0.5, 0.6, 0.9):
        assert sum(map(sum, recompute_plan(share, 7, 3))) == int(21 * share)


def test_a_share_of_the_blocks_recomputes_that_share(monkeypatch):
    """recompute=r: floor(n r) of a differentiated pass's n block applications recompute (test_model's tiny TRM,
    H2 x L3 with 2 layers: n = (3 + 1) x 2 = 8), with the same gradients, for a peak between none and all."""
    from trm_mlx.model import layers

    recomputed = []
    block = layers.recomputed
    monkeypatch.setattr(layers, "recomputed", lambda *a: recomputed.append(1) or block(*a))
    peaks = {}
    for share in (0.0, 0.3, 1.0):
        recomputed.clear()
        loss, grads, peaks[share] = compiled_gradients(share)
        assert len(recomputed) == int(8 * share)  # the forward is traced once
        if share == 0.0:
            expected_loss, expected = loss, grads
        assert loss == expected_loss
        for name, value in grads.items():
            np.testing.assert_allclose(np.array(value), np.array(expected[name]), rtol=1e-5, atol=1e-7, err_msg=name)
    if mx.default_device() != mx.cpu:  # peaks on the CPU device, as in the test above
        with cpu_default_device():
            peaks = {share: compiled_gradients(share)[2] for share in peaks}
    assert peaks[1.0] < peaks[0.3] < peaks[0.0], peaks


def test_which_blocks_recompute_is_decided_before_tracing(monkeypatch):
    """A call of a reasoning module recomputes the blocks its plan names for that call, however often it runs: no
    count is kept between calls. Share 0.3 of test_model's tiny TRM (4 calls x 2 layers a pass): call 1's layer 1
    and call 3's layer 0; in eval mode none."""
    from trm_mlx.model import layers

    recomputed = []
    real = layers.recomputed
    monkeypatch.setattr(layers, "recomputed", lambda block, *a: recomputed.append(block) or real(block, *a))
    model = create_model(arch(), Runtime("cpu", recompute=0.3).execution)
    level, rotary = model.inner.L_level, model.inner._rotary(48)
    h = mx.random.normal((2, 48, 128))
    for training, call, layer in ((True, 1, 1), (True, 1, 1), (True, 3, 0), (True, 0, None), (True, 2, None),
                                  (False, 1, None)):  # fmt: skip
        model.train(training)
        recomputed.clear()
        mx.eval(level(h, h, rotary, call=call))
        assert recomputed == ([] if layer is None else [level.layers[layer]]), (training, call)


def test_a_memory_limit_lowers_the_peak_not_the_numbers():
    """MLX keeps the inputs of queued work alive until it has run; under `memory_limit` (runtime.set_memory_limit)
    the host waits for queued work past the limit, so a step's peak drops towards its working set (the queue
    holds dead intermediates) with the same gradients. On the CPU device, whose queue of a step this small is long
    enough to show it (a GPU's is not, and its paper-size figures are in docs/BENCHMARKS.md)."""
    default_limit = mx.get_memory_limit()
    try:
        with cpu_default_device():
            loss, grads, peak = compiled_gradients(0.0)
            set_memory_limit((mx.get_active_memory() + 0.5 * peak) / 2**30)
            loss_limited, grads_limited, peak_limited = compiled_gradients(0.0)
    finally:
        mx.set_memory_limit(default_limit)
    assert loss_limited == loss
    for name, grad in grads.items():
        np.testing.assert_array_equal(np.array(grads_limited[name]), np.array(grad), err_msg=name)
    assert peak_limited < 0.9 * peak, (peak_limited, peak)
    with pytest.raises(ValueError, match="memory_limit"):
        set_memory_limit(0)


def test_memory_headroom_caps_the_limit_on_cuda_and_restores_it():
    """Evaluation's cap (`Runtime.memory_headroom`): on CUDA the limit becomes min(limit, in use + extra) and comes
    back afterwards, never raised; on Metal and the CPU it is left alone."""
    default_limit = mx.get_memory_limit()
    try:
        in_use = mx.get_active_memory()
        with Runtime("cuda").memory_headroom(2**20):
            assert mx.get_memory_limit() == min(default_limit, in_use + 2**20)
        assert mx.get_memory_limit() == default_limit
        mx.set_memory_limit(in_use + 2**10)
        with Runtime("cuda").memory_headroom(2**30):
            assert mx.get_memory_limit() == in_use + 2**10
        assert mx.get_memory_limit() == in_use + 2**10
        for other in ("metal", "cpu"):
            with Runtime(other).memory_headroom(2**20):
                assert mx.get_memory_limit() == in_use + 2**10
    finally:
        mx.set_memory_limit(default_limit)


def test_evaluation_runs_under_one_cap_sized_by_a_batchs_carry(monkeypatch, tiny_data, runtime):
    """`evaluate` enters the cap once, around all its batches, with 24 carries of headroom: the carry's two
    [B, P + S, D] fp32 states and its small per-row fields."""
    from tiny_dataset import SEQ_LEN, VOCAB
    from trm_mlx.data.dataset import PuzzleDataset
    from trm_mlx.evaluation import loop

    batch, hidden, prefix = 2, 32, 16
    dataset = PuzzleDataset([str(tiny_data)], "test", global_batch_size=batch)  # 4 test examples: 2 batches
    model = create_model(tiny_arch(seq_len=SEQ_LEN, vocab_size=VOCAB, num_puzzle_identifiers=9, hidden_size=hidden,
                                   puzzle_emb_ndim=hidden, puzzle_emb_len=prefix, halt_max_steps=2))
    calls = []
    real = Runtime.memory_headroom

    def recording(self, extra_bytes):
        calls.append(extra_bytes)
        return real(self, extra_bytes)

    monkeypatch.setattr(Runtime, "memory_headroom", recording)
    loop.evaluate(ACTLossHead(model), dataset, runtime, progress=False)
    states = 2 * batch * (prefix + SEQ_LEN) * hidden * 4
    assert len(calls) == 1
    assert 24 * states <= calls[0] <= 24 * (states + 1024), calls
