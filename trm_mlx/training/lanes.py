"""The train step over CPU lanes (`trm_mlx.lanes`): each lane's forward and backward its own compiled graph.

The lanes' weight gradients are summed and the updates (`training/step.py`) are one more compiled graph. The update
is `make_train_step`'s up to the order of the gradient sums: the ACT exploration numbers of the whole batch are drawn
as it draws them, before the lanes take their rows.
"""

import mlx.core as mx

from trm_mlx.lanes import Lanes, add, concatenate_rows
from trm_mlx.training.step import apply_updates, gradients, rank_draws


def make_lane_train_step(state, config, count: int):
    """``make_train_step``'s ``(step_fn, compiled_state)`` with the batch split over `count` CPU lanes."""
    head, model, optimizer = state.head, state.model, state.optimizer
    scale = 1.0 / config.global_batch_size
    lanes = Lanes(count)

    def lane_gradients(carry, rows, draws):
        return gradients(head, optimizer, carry, rows, scale, draws)

    graphs = [mx.compile(lane_gradients, inputs=[head.state]) for _ in range(count)]
    compiled_state = [head.state, mx.random.state] + ([optimizer.state] if optimizer is not None else [])

    def begin_step(carry, batch):
        """make_train_step's first part: the carry's halted rows reset, its puzzle rows and exploration numbers."""
        carry = model.reset_halted(carry, batch)
        return carry, model.puzzle_rows(carry), rank_draws(model, batch["inputs"].shape[0])

    begin = mx.compile(begin_step, inputs=[head.state, mx.random.state], outputs=[mx.random.state])

    def updates(grads, ids, lr, puzzle_lr):
        apply_updates(head, optimizer, grads, ids, lr, puzzle_lr, config.puzzle_emb_weight_decay)

    update = mx.compile(updates, inputs=compiled_state, outputs=compiled_state)

    def step(carry, batch, lr, puzzle_lr):
        carry, rows, draws = begin(carry, batch)
        carries, metrics, grads = zip(*lanes.run(graphs, carry, rows, draws))
        batch_grads = {}  # the whole batch's: weight gradients summed, puzzle-row gradients in row order
        if "weights" in grads[0]:
            batch_grads["weights"] = add([g["weights"] for g in grads])
        if "rows" in grads[0]:
            batch_grads["rows"] = concatenate_rows([g["rows"] for g in grads])
        update(batch_grads, carry["current_data"]["puzzle_identifiers"], lr, puzzle_lr)
        return concatenate_rows(carries), add(metrics)

    return step, compiled_state
