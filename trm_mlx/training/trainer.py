"""The training loop of the original ``pretrain.py`` in MLX: one optimizer step per ACT step, the carry persisting
across batches, AdamATan2 on the weights and sign-SGD on the puzzle-embedding rows of the batch, evaluation and
checkpoints every ``eval_interval`` epochs, exact resume, and data parallelism over ``mx.distributed``."""

import math
import time
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from trm_mlx.data import DatasetFormatError, PuzzleDataset
from trm_mlx.data.builtin import DEFAULT_PATH as BUILTIN_SUDOKU_PATH
from trm_mlx.data.builtin import ensure_builtin_sudoku
from trm_mlx.evaluation.evaluators import create_evaluator
from trm_mlx.evaluation.loop import evaluate
from trm_mlx.runtime import Runtime
from trm_mlx.training.checkpointing import (
    STATE_PREFIX,
    find_train_state,
    global_carry,
    load_train_state,
    read_train_state_meta,
    save_model_checkpoint,
    save_train_state,
    write_all_config,
)
from trm_mlx.training.config import PretrainConfig, with_naming_defaults
from trm_mlx.training.distributed import (
    HeartbeatDataset,
    Watchdog,
    all_gather,
    broadcast_object,
    is_backend_error,
    peer_lost,
    sum_gradients,
    sum_metrics,
    watchdog_timeout,
)
from trm_mlx.training.lanes import make_lane_train_step
from trm_mlx.training.logging import METRICS_FILE, RunLogger
from trm_mlx.training.schedule import warmup_cosine_lr
from trm_mlx.training.state import TrainState, create_train_state, num_params
from trm_mlx.training.step import apply_updates, gradients, rank_draws


def training_runtime(config: PretrainConfig, group: mx.distributed.Group | None = None) -> Runtime:
    """The runtime of a training run: the config's execution keys, its batch split into `cpu_lanes`, `group`."""
    return Runtime.create(device=config.device, kernels=config.kernels, recompute=config.recompute,
                          memory_limit=config.memory_limit, cpu_lanes=config.cpu_lanes,
                          batch_size=config.global_batch_size, group=group)  # fmt: skip


def make_train_step(state: TrainState, config: PretrainConfig, runtime: Runtime):
    """The whole optimizer step as one compiled function ``(carry, batch, lr, puzzle_lr) -> (carry, metrics)``.

    Forward, loss (scaled by 1/global batch), gradients of the weights and of the gathered puzzle rows, the
    AdamATan2 update and the sparse sign-SGD update of the table all run in one graph. The model, optimizer state
    and MLX's random state (ACT exploration draws from it) are implicit inputs and outputs, so nothing is traced
    again and no value goes to the host. Learning rates are inputs: the schedule is evaluated on the host.

    With several ranks (``runtime.group``) the collectives are part of the same graph: the weight gradients are
    summed over the ranks, every rank's puzzle ids and row gradients are gathered before the sign-SGD sums them per
    row, and the metrics are summed, so every rank applies the update of the whole global batch and keeps identical
    weights. ACT exploration draws the global batch's random numbers on every rank, which keeps its own rows of them.
    """
    lanes = runtime.cpu_lanes
    if lanes > 1:
        if config.global_batch_size % lanes:
            raise ValueError(f"cpu_lanes={lanes} must divide global_batch_size={config.global_batch_size}")
        return make_lane_train_step(state, config, lanes)
    head, model, optimizer = state.head, state.model, state.optimizer
    scale = 1.0 / config.global_batch_size
    compiled_state = [head.state, mx.random.state] + ([optimizer.state] if optimizer is not None else [])
    group, parallel = runtime.group, runtime.ranks > 1

    def step(carry, batch, lr, puzzle_lr):
        carry = model.reset_halted(carry, batch)
        draws = rank_draws(model, batch["inputs"].shape[0], runtime.rank, runtime.ranks)
        carry, metrics, grads = gradients(head, optimizer, carry, model.puzzle_rows(carry), scale, draws)
        ids = carry["current_data"]["puzzle_identifiers"]
        if parallel:
            metrics = sum_metrics(metrics, group)
            if "weights" in grads:
                grads["weights"] = sum_gradients(grads["weights"], group)
            if "rows" in grads:
                ids, grads["rows"] = all_gather(ids, group), all_gather(grads["rows"], group)
        apply_updates(head, optimizer, grads, ids, lr, puzzle_lr, config.puzzle_emb_weight_decay)
        return carry, metrics

    return mx.compile(step, inputs=compiled_state, outputs=compiled_state), compiled_state


def make_ema_update(rate: float):
    """``ema <- (1 - rate) * params + rate * ema`` as one compiled call; the factors are host doubles rounded once to
    fp32, like the original's Python-scalar arithmetic."""
    take, keep = 1.0 - rate, rate

    @mx.compile
    def update(ema: dict, params: dict) -> dict:
        return {name: take * params[name] + keep * value for name, value in ema.items()}

    def apply(state: TrainState) -> None:
        state.ema = update(state.ema, dict(tree_flatten(state.head.trainable_parameters())))
        mx.async_eval(state.ema)  # keep the lazy graph from growing step after step

    return apply


def past_deadline(deadline: float, step: int, group: mx.distributed.Group, every: int = 32) -> bool:
    """Whether ``max_minutes`` has run out. Ranks' clocks differ, so with several ranks they agree on it, every
    ``every`` steps (a host sync), and all stop at the same step."""
    if group.size() == 1:
        return time.monotonic() >= deadline
    if step % every:
        return False
    late = mx.distributed.all_sum(mx.array(int(time.monotonic() >= deadline)), group=group)
    return late.item() > 0


class NonFiniteLoss(ValueError):
    """A training loss became NaN or infinite (``on_nan_loss=stop``)."""


def check_finite_losses(metrics: dict[str, float], step: int, checkpoint_path: str | None) -> None:
    """Stop on a NaN or infinite training loss: the weights it updated are no use, and nothing is saved past it."""
    bad = [f"{key} = {value}" for key, value in metrics.items() if key.endswith("loss") and not math.isfinite(value)]
    if bad:
        kept = f"; the training state saved last under {checkpoint_path} is kept" if checkpoint_path else ""
        raise NonFiniteLoss(f"step {step}: {', '.join(bad)}: training stopped{kept} (on_nan_loss=continue goes on)")


def learning_rates(config: PretrainConfig, state: TrainState) -> tuple[float, float]:
    """(weights, puzzle embedding) rates of the current step, from the original schedule."""
    shape = dict(warmup_steps=round(config.lr_warmup_steps), total_steps=state.total_steps, min_ratio=config.lr_min_ratio)
    return (
        warmup_cosine_lr(state.step, base_lr=config.lr, **shape),
        warmup_cosine_lr(state.step, base_lr=config.puzzle_emb_lr, **shape),
    )


def reduce_train_metrics(metrics: dict, global_batch_size: int, lr: float) -> dict[str, float]:
    """The original's ``train/*`` values: losses per global-batch row, the rest per halted row."""
    values = {key: value.item() for key, value in sorted(metrics.items())}
    count = max(values["count"], 1)
    reduced = {f"train/{k}": v / (global_batch_size if k.endswith("loss") else count) for k, v in values.items()}
    reduced["train/lr"] = lr
    return reduced


def train_batch(config: PretrainConfig, state: TrainState, step_fn, compiled_state, batch: dict):
    """Queue one step; returns its (lazy) metrics and logged rate, or None past ``total_steps`` (step still counts)."""
    state.step += 1
    if state.step > state.total_steps:
        return None
    arrays = {key: mx.array(value) for key, value in batch.items()}
    if state.carry is None:
        state.carry = state.model.initial_carry(arrays)
    lr, puzzle_lr = learning_rates(config, state)
    state.carry, metrics = step_fn(state.carry, arrays, mx.array(lr, mx.float32), mx.array(puzzle_lr, mx.float32))
    mx.async_eval(state.carry, metrics, compiled_state)
    return metrics, (lr if state.trains_weights else puzzle_lr)


def _ensure_builtin_data(paths: list[str], group: mx.distributed.Group) -> None:
    """The built-in Sudoku set is generated on first use wherever a config names its path.

    Ranks take turns, so that ranks sharing a disk do not build the same folder at once; a rank on another machine
    builds its own copy.
    """
    builtin = [p for p in paths if Path(p).resolve() == Path(BUILTIN_SUDOKU_PATH).resolve()]
    if not builtin:
        return
    for turn in range(group.size()):
        if turn == group.rank():
            for path in builtin:
                ensure_builtin_sudoku(path)
        if group.size() > 1:
            mx.eval(mx.distributed.all_sum(mx.array(0), group=group))


def open_datasets(
    config: PretrainConfig, epochs_per_iter: int, log, group: mx.distributed.Group
) -> tuple[PuzzleDataset, PuzzleDataset | None]:
    """This rank's train and test data: every rank samples the same global batches and takes its slice of them."""
    test_paths = config.data_paths_test or config.data_paths
    _ensure_builtin_data(list(config.data_paths) + list(test_paths), group)
    shard = dict(rank=group.rank(), world_size=group.size())
    train = PuzzleDataset(
        config.data_paths, "train", config.global_batch_size, seed=config.seed, epochs_per_iter=epochs_per_iter, **shard
    )
    try:
        test = PuzzleDataset(test_paths, "test", config.global_batch_size, **shard)
    except DatasetFormatError as e:
        log(f"no evaluation: {e}")
        test = None
    if test is not None:
        check_test_data(train, test)
    return train, test


TEST_MATCHES_TRAIN = ("seq_len", "vocab_size", "pad_id", "ignore_label_id", "blank_identifier_id")


def check_test_data(train: PuzzleDataset, test: PuzzleDataset) -> None:
    """The training data sizes the model: test data of another length or vocabulary, or with puzzle identifiers
    past its embedding table, would run through it meaninglessly, so the run stops before it trains."""
    for key in TEST_MATCHES_TRAIN:
        trained, tested = getattr(train.metadata, key), getattr(test.metadata, key)
        if tested != trained:
            raise ValueError(f"{test.paths} (test split): {key} {tested}, the training data's is {trained}")
    trained, tested = train.metadata.num_puzzle_identifiers, test.metadata.num_puzzle_identifiers
    if tested > trained:
        raise ValueError(f"{test.paths} (test split): {tested} puzzle identifiers, more than the training data's "
                         f"{trained} (the model's puzzle embeddings)")


def refuse_overwriting(config: PretrainConfig) -> None:
    """A new run (no ``resume=``) in a folder that holds a run would replace its metrics and remove its training
    state, so it is refused: the user continues that run or names another folder."""
    root = Path(config.checkpoint_path)
    if config.resume is not None or not root.is_dir():
        return
    held = sorted(p.name for p in root.iterdir() if p.name.startswith(("step_", STATE_PREFIX)))
    metrics = root / METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size:
        held.append(METRICS_FILE)
    if held:
        listed = f"{', '.join(held[:3])}{', ...' if len(held) > 3 else ''}"
        resumable = any(name.startswith(STATE_PREFIX) for name in held)
        action = f"continue it with resume={root}, or" if resumable else "remove it, or"
        raise ValueError(f"{root}: holds a run ({listed}); {action} give the new run another +run_name or "
                         "+checkpoint_path")


def create_evaluators(config: PretrainConfig, eval_data: PuzzleDataset | None, log) -> list:
    if eval_data is None:
        return []
    evaluators = []
    for spec in config.evaluators:
        try:
            evaluators.append(create_evaluator(spec.model_dump(), eval_data.paths, eval_data.metadata))
        except ValueError as e:  # the original drops evaluators it cannot build, too
            log(f"evaluator {spec.name} not used: {e}")
    return evaluators


def save_training_state(config: PretrainConfig, state: TrainState, train_data, group: mx.distributed.Group) -> None:
    """Rank 0 writes the full training state, with the carry of every rank (collective: every rank calls it)."""
    carry = global_carry(state, group)
    if group.rank() == 0:
        save_train_state(config, state, train_data, carry)


def evaluate_and_checkpoint(
    config, state, eval_data, evaluators, logger, is_last_iter: bool, train_data, runtime: Runtime, watchdog
) -> bool:
    """Evaluate (the EMA weights when ``ema``), write ``step_N`` of those weights, then the full training state;
    returns whether the training state was written.

    Every rank evaluates its slice of each test batch; rank 0 writes the checkpoints.
    """
    live = None
    if state.ema is not None:
        live = state.head.trainable_parameters()
        state.head.update(tree_unflatten(list(state.ema.items())))
    save = config.checkpoint_path is not None and (config.checkpoint_every_eval or is_last_iter)
    try:
        if eval_data is not None:
            metrics = evaluate(
                state.head, HeartbeatDataset(eval_data, watchdog), runtime, evaluators,
                save_outputs=config.eval_save_outputs, save_dir=config.checkpoint_path, step=state.step,
                progress=not logger.bar.disable,
            )
            logger.evaluation(metrics, state.step)
        if save and runtime.rank == 0:
            save_model_checkpoint(config, state.model, state.step)
    finally:
        if live is not None:
            state.head.update(live)
        state.model.train()
    if save:
        save_training_state(config, state, train_data, runtime.group)
    return save


def resolve_names(config: PretrainConfig) -> PretrainConfig:
    """Naming defaults; a resumed run keeps the names (and checkpoint folder) of the run it continues."""
    if config.resume is not None:
        saved = read_train_state_meta(find_train_state(config.resume))["config"]
        keep = ("project_name", "run_name", "checkpoint_path")
        config = config.model_copy(update={k: saved[k] for k in keep if getattr(config, k) is None})
    return with_naming_defaults(config)


def train(config: PretrainConfig, show_progress: bool = True, metrics_every: int = 100) -> dict:
    """Run training as ``pretrain.py`` does; returns the step reached and the last train and eval metrics.
    ``metrics.jsonl`` gets a line of training metrics every ``metrics_every`` steps. The process runs as the
    config's execution keys say (``training_runtime``), the first line of the log.

    Under ``mlx.launch`` every process is one rank of a data-parallel run (see docs/DISTRIBUTED.md); rank 0 alone
    logs and writes checkpoints, and the returned metrics are the same on every rank.
    """
    group = mx.distributed.init()
    try:
        return _train(config, show_progress, metrics_every, group)
    except RuntimeError as e:
        if group.size() > 1 and is_backend_error(e):
            raise peer_lost(group, e) from e
        raise


def _train(config: PretrainConfig, show_progress: bool, metrics_every: int, group: mx.distributed.Group) -> dict:
    primary = group.rank() == 0
    timeout_s = watchdog_timeout()
    runtime = training_runtime(config, group)
    config = resolve_names(config)
    if group.size() > 1:
        config = broadcast_object(config, group)  # rank 0's names (the run name has a random part)
        if config.global_batch_size % group.size():
            raise ValueError(f"global_batch_size={config.global_batch_size} is not a multiple of {group.size()} ranks")
    refuse_overwriting(config)
    epochs_per_iter = config.eval_interval if config.eval_interval is not None else config.epochs
    if config.epochs % epochs_per_iter != 0:
        raise ValueError(f"eval_interval={epochs_per_iter} must divide epochs={config.epochs}")
    total_iters = config.epochs // epochs_per_iter

    log = print if primary else (lambda _line: None)
    train_data, eval_data = open_datasets(config, epochs_per_iter, log, group)
    evaluators = create_evaluators(config, eval_data, log)
    state = create_train_state(config, train_data.metadata, runtime)
    log(runtime.summary())
    if config.resume is not None:
        load_train_state(find_train_state(config.resume), state, train_data, group)
    last_step = state.total_steps if config.max_steps is None else min(state.total_steps, config.max_steps)
    if config.resume is not None and state.step >= last_step:  # e.g. a relay's segment after the run's end
        log(f"nothing to train: the run is at step {state.step}, which is its last ({last_step})")
        return {"step": state.step, "train": {}, "eval": {}, "config": config}
    step_fn, compiled_state = make_train_step(state, config, runtime)
    update_ema = make_ema_update(config.ema_rate)

    logger = RunLogger(config, last_step, initial_step=state.step,
                       show_progress=show_progress, primary=primary, metrics_every=metrics_every)  # fmt: skip
    logger.log({"num_params": num_params(state.head)}, step=0)
    if config.checkpoint_path is not None and primary:
        write_all_config(config)
    if group.size() > 1:
        logger.write(f"data-parallel over {group.size()} ranks: {train_data.local_batch_size} rows of each global "
                     f"batch of {config.global_batch_size} per rank")  # fmt: skip

    deadline = None if config.max_minutes is None else time.monotonic() + 60 * config.max_minutes
    out_of_time = False

    def stop_requested() -> bool:
        return out_of_time or (config.max_steps is not None and state.step >= config.max_steps)

    def stop_and_save() -> None:
        if config.checkpoint_path is not None:
            limit = f"max_minutes={config.max_minutes}" if out_of_time else f"max_steps={config.max_steps}"
            logger.write(f"stopped at step {state.step} ({limit}); resume={config.checkpoint_path} continues")
            save_training_state(config, state, train_data, group)

    def report(pending) -> None:
        metrics = reduce_train_metrics(pending[0], config.global_batch_size, pending[1])
        logger.train_step(metrics, pending[2], mx.get_peak_memory() / 2**30)
        watchdog.beat()
        if config.on_nan_loss == "stop":
            check_finite_losses(metrics, pending[2], config.checkpoint_path)

    with Watchdog(timeout_s, group) as watchdog:
        pending = None  # the previous step's metrics, read while the next step runs
        for iter_id in range(state.next_iter, total_iters):
            if stop_requested():
                break
            state.next_iter = iter_id
            state.model.train()
            batches = 0
            for _set_name, batch, _global_batch in train_data.iter_train():
                batches += 1
                queued = train_batch(config, state, step_fn, compiled_state, batch)
                if pending is not None:
                    report(pending)
                pending = None if queued is None else (*queued, state.step)
                if state.ema is not None:
                    update_ema(state)
                if deadline is not None and not out_of_time:
                    out_of_time = past_deadline(deadline, state.step, group)
                if stop_requested():
                    break
            if pending is not None:
                report(pending)
                pending = None
            if batches == 0:
                raise ValueError(f"global_batch_size={config.global_batch_size} is more than one iteration of the "
                                 f"training data holds (eval_interval={epochs_per_iter} epochs of "
                                 f"{train_data.metadata.total_groups} groups): no step can run; lower the batch size "
                                 "or raise eval_interval")
            # A stop on an iteration's last batch still evaluates, as the run straight through does: the sampler
            # already stands at the next iteration, so the saved state must too.
            if stop_requested() and not train_data.between_iterations:
                stop_and_save()
                break
            state.next_iter = iter_id + 1
            saved = False
            if iter_id >= config.min_eval_interval:
                is_last = iter_id == total_iters - 1
                saved = evaluate_and_checkpoint(
                    config, state, eval_data, evaluators, logger, is_last, train_data, runtime, watchdog
                )
                watchdog.beat()
            if stop_requested():
                if not saved:
                    stop_and_save()
                break

    logger.close(state.step, config.checkpoint_path)
    return {"step": state.step, "train": logger.last_train, "eval": logger.last_eval, "config": config}
