"""Block recomputation (`recompute: blocks`): the same gradients as autodiff keeping every activation, for a
fraction of the memory, under the compiled train step as trm-train runs it."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from trm_mlx import device
from trm_mlx.model import ACTLossHead, create_model
from trm_mlx.model.layers import set_recompute

from test_model import tiny_arch


def arch(**overrides):
    """test_model's tiny model, wider and with more exploration, so the memory saving shows."""
    sizes = dict(puzzle_emb_ndim=128, L_cycles=3, hidden_size=128, halt_exploration_prob=0.5)
    return tiny_arch(**{**sizes, **overrides})


def compiled_gradients(recompute: bool, rows: int = 48, **overrides):
    """(loss, flat gradients, peak bytes above the inputs) of one compiled ACT training step."""
    mx.random.seed(0)
    model = create_model(arch(**overrides))
    set_recompute(model, recompute)
    head = ACTLossHead(model)
    model.train()
    rng = np.random.default_rng(0)
    batch = {
        "inputs": mx.array(rng.integers(0, 11, (rows, 32)).astype(np.int32)),
        "labels": mx.array(rng.integers(0, 11, (rows, 32)).astype(np.int32)),
        "puzzle_identifiers": mx.array(rng.integers(0, 3, (rows,)).astype(np.int32)),
    }
    carry, data = model.begin_step(model.initial_carry(batch), batch)
    puzzle_rows = mx.random.normal((rows, 128))  # non-zero rows, so their gradient is exercised too
    mx.eval(carry, model.parameters())

    def loss_fn(params, puzzle_rows):
        model.update(params)
        return head.step(carry, data, puzzle_rows)[1]

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
    loss, grads, peak = compiled_gradients(False, **variant)
    loss_rc, grads_rc, peak_rc = compiled_gradients(True, **variant)
    assert loss_rc == loss
    assert grads_rc.keys() == grads.keys()
    for name, value in grads.items():
        np.testing.assert_allclose(np.array(grads_rc[name]), np.array(value), rtol=1e-5, atol=1e-7, err_msg=name)
    if device.backend() == "cpu":
        # The backward keeps each block's input instead of its activations: measured 0.33 (attention) and 0.34
        # (MLP-t) of the plain peak at these sizes; a recomputation that ran during the forward would keep them
        # all. Not on a GPU: at these small sizes the whole step is queued before any buffer can be released, so
        # both peaks are the same there; the paper-size figures are in docs/BENCHMARKS.md.
        assert peak_rc < 0.6 * peak, (peak_rc, peak)


def test_recompute_policy():
    assert device.recompute_share("blocks") == 1.0 and device.recompute_share("none") == 0.0
    assert device.recompute_share("auto") == (0.0 if device.backend() == "cpu" else 1.0)
    assert device.recompute_share(0.6) == 0.6
    for wrong in ("everything", 1.5, True):
        with pytest.raises(ValueError, match="recompute must be one of"):
            device.recompute_share(wrong)


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
    if device.backend() == "cpu":  # see the test above for why not on a GPU
        assert peaks[1.0] < peaks[0.3] < peaks[0.0], peaks


def test_a_memory_limit_lowers_the_peak_not_the_numbers():
    """MLX keeps the inputs of queued work alive until it has run; under `memory_limit` (device.set_memory_limit)
    the host waits for queued work past the limit, so a step's peak drops towards its working set (the queue
    holds dead intermediates) with the same gradients. On the CPU device, whose queue of a step this small is long
    enough to show it (a GPU's is not, and its paper-size figures are in docs/BENCHMARKS.md)."""
    default_limit, default_device = mx.get_memory_limit(), mx.default_device()
    mx.set_default_device(mx.cpu)
    try:
        loss, grads, peak = compiled_gradients(0.0)
        device.set_memory_limit((mx.get_active_memory() + 0.5 * peak) / 2**30)
        loss_limited, grads_limited, peak_limited = compiled_gradients(0.0)
    finally:
        mx.set_memory_limit(default_limit)
        mx.set_default_device(default_device)
    assert loss_limited == loss
    for name, grad in grads.items():
        np.testing.assert_array_equal(np.array(grads_limited[name]), np.array(grad), err_msg=name)
    assert peak_limited < 0.9 * peak, (peak_limited, peak)
    with pytest.raises(ValueError, match="memory_limit"):
        device.set_memory_limit(0)


def test_memory_headroom_caps_the_limit_on_cuda_and_restores_it(monkeypatch):
    """Evaluation's cap (`device.memory_headroom`): on CUDA the limit becomes min(limit, in use + extra) and comes
    back afterwards, never raised; on Metal and the CPU it is left alone."""
    default_limit = mx.get_memory_limit()
    monkeypatch.setattr(device, "backend", lambda: "cuda")
    try:
        in_use = mx.get_active_memory()
        with device.memory_headroom(2**20):
            assert mx.get_memory_limit() == min(default_limit, in_use + 2**20)
        assert mx.get_memory_limit() == default_limit
        mx.set_memory_limit(in_use + 2**10)
        with device.memory_headroom(2**30):
            assert mx.get_memory_limit() == in_use + 2**10
        assert mx.get_memory_limit() == in_use + 2**10
        for other in ("metal", "cpu"):
            monkeypatch.setattr(device, "backend", lambda: other)
            with device.memory_headroom(2**20):
                assert mx.get_memory_limit() == in_use + 2**10
    finally:
        mx.set_memory_limit(default_limit)


def test_evaluation_runs_under_one_cap_sized_by_a_batchs_carry(monkeypatch, tiny_data):
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
    real = device.memory_headroom

    def recording(extra_bytes):
        calls.append(extra_bytes)
        return real(extra_bytes)

    monkeypatch.setattr(loop.device, "memory_headroom", recording)
    loop.evaluate(ACTLossHead(model), dataset, progress=False)
    states = 2 * batch * (prefix + SEQ_LEN) * hidden * 4
    assert len(calls) == 1
    assert 24 * states <= calls[0] <= 24 * (states + 1024), calls
