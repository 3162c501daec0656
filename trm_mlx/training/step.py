"""The two halves of an optimizer step, shared by the one-graph step (`trainer.make_train_step`) and the CPU lanes'
step (`training/lanes.py`): the gradients of one ACT step's loss, and the updates they make."""

import mlx.core as mx

from trm_mlx.training.optimizers import sparse_sign_sgd


def gradients(head, optimizer, carry: dict, rows, scale: float, draws):
    """(new carry, metrics, grads) of one ACT step from `carry` (halted rows reset) with its loss scaled by `scale`;
    grads has "weights" when an optimizer trains them and "rows" (of the puzzle rows `rows`) when there are rows."""

    def loss_fn(params, rows):
        head.update(params)
        step = head.model(carry, rows, draws)
        loss, metrics = head.loss_and_metrics(step)
        return scale * loss, (step.carry, metrics)

    params = head.trainable_parameters()
    argnums = tuple(i for i, wanted in enumerate((optimizer is not None, rows is not None)) if wanted)
    (_, (carry, metrics)), grads = mx.value_and_grad(loss_fn, argnums=argnums)(params, rows)
    head.update(params)  # drop the traced copies loss_fn installed
    grads = grads if len(argnums) > 1 else (grads,)
    return carry, metrics, {("weights", "rows")[i]: grad for i, grad in zip(argnums, grads)}


def rank_draws(model, rows: int, rank: int = 0, ranks: int = 1):
    """This rank's `rows` rows of the global batch's exploration numbers (None where the model does not explore):
    every rank draws the whole global batch's from the same random state and keeps its own rows, so N ranks halt
    the rows one process would."""
    if not model.explores():
        return None
    uniform, min_steps = model.exploration_draws(rows * ranks)
    if ranks == 1:
        return uniform, min_steps
    own = slice(rank * rows, (rank + 1) * rows)
    return uniform[own], min_steps[own]


def apply_updates(head, optimizer, grads: dict, ids: mx.array, lr, puzzle_lr, weight_decay: float) -> None:
    """AdamATan2 on grads["weights"], and the sparse sign-SGD of the puzzle table's rows `ids` by grads["rows"]."""
    if "weights" in grads:
        optimizer.learning_rate = lr
        head.update(optimizer.apply_gradients(grads["weights"], head.trainable_parameters()))
    if "rows" in grads:
        emb = head.model.puzzle_emb
        emb.weights = sparse_sign_sgd(emb.weights, ids, grads["rows"], puzzle_lr, weight_decay)
