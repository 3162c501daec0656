"""The train step over CPU lanes (`trm_mlx.lanes`): each lane's forward and backward its own compiled graph.

The weight gradients of the lanes are summed and the optimizer step is one more compiled graph. The update is
`make_train_step`'s up to the order of the gradient sums: the ACT exploration numbers of the whole batch are drawn
as it draws them, before the lanes take their rows.
"""

import mlx.core as mx

from trm_mlx import device
from trm_mlx.lanes import Lanes, add, concatenate_rows
from trm_mlx.training.optimizers import sparse_sign_sgd


def make_lane_train_step(state, config, count: int):
    """``make_train_step``'s ``(step_fn, compiled_state)`` with the batch split over `count` CPU lanes."""
    head, model, optimizer = state.head, state.model, state.optimizer
    scale = 1.0 / config.global_batch_size
    device.set_blas_threads(max(1, device.cpu_cores() // count))  # the cores shared out (measured on 2 of them)
    lanes = Lanes(count)

    def lane_graph():
        def run(carry, data, rows, draws):
            def loss_fn(params, rows):
                head.update(params)
                new_carry, loss, metrics, _ = head.step(carry, data, rows, draws)
                return scale * loss, (new_carry, metrics)

            params = head.trainable_parameters()
            argnums = tuple(i for i, wanted in enumerate((optimizer is not None, rows is not None)) if wanted)
            (_, (carry, metrics)), grads = mx.value_and_grad(loss_fn, argnums=argnums)(params, rows)
            head.update(params)
            return carry, metrics, grads if len(argnums) > 1 else (grads,)

        return mx.compile(run, inputs=[head.state])

    graphs = [lane_graph() for _ in range(count)]
    compiled_state = [head.state, mx.random.state] + ([optimizer.state] if optimizer is not None else [])

    def begin_step(carry, batch):
        """make_train_step's first part, and the whole batch's exploration numbers, drawn as it draws them."""
        carry, data = model.begin_step(carry, batch)
        draws = model.exploration_draws(data["inputs"].shape[0]) if model.draws_exploration() else None
        return carry, data, model.gather_puzzle_rows(data), draws

    begin = mx.compile(begin_step, inputs=[head.state, mx.random.state], outputs=[mx.random.state])

    def apply(grads, ids, lr, puzzle_lr):
        """The one-graph step's updates: AdamATan2 on the weight gradients, sign-SGD on the batch's puzzle rows."""
        grads = list(grads)
        if optimizer is not None:
            optimizer.learning_rate = lr
            params = head.trainable_parameters()
            head.update(optimizer.apply_gradients(grads.pop(0), params))
        if grads:
            emb = model.puzzle_emb
            emb.weights = sparse_sign_sgd(emb.weights, ids, grads[0], puzzle_lr, config.puzzle_emb_weight_decay)

    update = mx.compile(apply, inputs=compiled_state, outputs=compiled_state)

    def step(carry, batch, lr, puzzle_lr):
        carry, data, rows, draws = begin(carry, batch)
        carries, metrics, grads = zip(*lanes.run(graphs, carry, data, rows, draws))
        batch_grads = []  # the whole batch's: weight gradients summed, puzzle-row gradients in row order
        if optimizer is not None:
            batch_grads.append(add([g[0] for g in grads]))
        if rows is not None:
            batch_grads.append(concatenate_rows([g[-1] for g in grads]))
        update(batch_grads, data["puzzle_identifiers"], lr, puzzle_lr)
        return concatenate_rows(carries), add(metrics)

    return step, compiled_state
