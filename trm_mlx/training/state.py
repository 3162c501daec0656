"""Everything a training run carries from step to step, and how it is built from a config."""

from dataclasses import dataclass

import mlx.core as mx
from mlx.utils import tree_flatten

from trm_mlx.checkpoint import load_weights_into, read_model_source
from trm_mlx.model import ACTLossHead, create_model
from trm_mlx.runtime import Runtime
from trm_mlx.training.config import PretrainConfig, model_arch_config
from trm_mlx.training.distributed import broadcast_arrays
from trm_mlx.training.optimizers import AdamATan2


@dataclass
class TrainState:
    """The loss head (and through it the model and puzzle table), the weight optimizer, the ACT carry that persists
    across batches, the EMA of the weights, and the step counters. The sampler position lives in the dataset."""

    head: ACTLossHead
    optimizer: AdamATan2 | None  # None when only the puzzle embeddings train (freeze_weights)
    step: int
    total_steps: int
    carry: dict | None = None
    ema: dict[str, mx.array] | None = None  # flat {parameter name: EMA value} of the trainable parameters
    next_iter: int = 0  # the outer iteration (eval_interval epochs) to run next

    @property
    def model(self):
        return self.head.model

    @property
    def trains_weights(self) -> bool:
        return self.optimizer is not None


def total_steps(config: PretrainConfig, metadata) -> int:
    """The original's estimate of the number of optimizer steps (batches past it are skipped but counted)."""
    return int(config.epochs * metadata.total_groups * metadata.mean_puzzle_examples / config.global_batch_size)


def num_params(head: ACTLossHead) -> int:
    """Trainable parameter count, as the original logs it (the puzzle table and init vectors are buffers there)."""
    return sum(value.size for _, value in tree_flatten(head.trainable_parameters()))


def create_train_state(config: PretrainConfig, metadata, runtime: Runtime) -> TrainState:
    """Model (seeded init, or ``load_checkpoint`` with the puzzle-table resize rule), loss head and optimizer.

    With several ranks (``runtime.group``), rank 0 alone reads ``load_checkpoint`` and every rank then takes rank
    0's arrays, before the optimizer and the EMA are built from them, as the original broadcasts after loading.
    """
    mx.random.seed(config.seed)  # the same on every rank: the ranks then draw the same random numbers
    model = create_model(model_arch_config(config, metadata, runtime.ranks), runtime.execution)
    head = ACTLossHead(model, **(config.arch.loss.model_extra or {}))
    if config.load_checkpoint is not None and runtime.rank == 0:
        _, weights, _, _ = read_model_source(config.load_checkpoint)  # a file, or a run's newest training state
        load_weights_into(model, weights, config.load_checkpoint, resize_puzzle_embedding=True)
    mx.eval(model.parameters())
    if runtime.ranks > 1:
        model.update(broadcast_arrays(model.parameters(), runtime.group))

    # As the original: with no puzzle embedding AdamATan2 trains everything even under freeze_weights.
    optimizer = None
    if model.puzzle_emb is None or not config.freeze_weights:
        optimizer = AdamATan2(learning_rate=0.0, betas=(config.beta1, config.beta2), weight_decay=config.weight_decay)
        optimizer.init(head.trainable_parameters())

    ema = None
    if config.ema:
        ema = dict(tree_flatten(head.trainable_parameters()))  # arrays are immutable: sharing them is a copy
    return TrainState(head=head, optimizer=optimizer, step=0, total_steps=total_steps(config, metadata), ema=ema)
