"""Data-parallel training over ``mx.distributed`` (ring, NCCL or MPI, as ``mlx.launch`` sets up).

Every rank holds the whole model and trains on its slice of each global batch (spec §6.3). What the ranks exchange
is what the original's ``torch.distributed`` calls exchange: the weight gradients are summed (the loss is already
scaled by 1/global batch), the puzzle-embedding rows and ids are gathered before the sign-SGD, the metric vector is
summed, and the initial weights come from rank 0. Collectives use the group's own stream (the ring runs on the
CPU, NCCL on the GPU), so the same code runs on Macs, CPUs and NVIDIA GPUs.
"""

import itertools
import os
import pickle
import sys
import threading
import time

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

# mlx.nn.average_gradients' default: large enough that a step needs a handful of all-reduces, small enough that
# the concatenated copy stays a fraction of the gradient memory.
BUCKET_BYTES = 32 * 2**20

# Seconds without progress after which a rank of a data-parallel run gives up (0: wait forever). NCCL's collectives
# and a hung peer never time out by themselves; torch.distributed's default NCCL timeout is 10 minutes too.
TIMEOUT_ENV = "TRM_MLX_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0

# The prefixes of the errors MLX's backends raise when a peer disconnects or a collective fails.
BACKEND_ERROR_TAGS = ("[ring]", "[nccl]", "[mpi]", "[jaccl]")


class DistributedError(RuntimeError):
    """A collective failed: another rank stopped (its own output says why) or the connection broke."""


def describe_group(group: mx.distributed.Group) -> str:
    return f"rank {group.rank()} of {group.size()}"


def is_backend_error(error: BaseException) -> bool:
    return isinstance(error, RuntimeError) and str(error).startswith(BACKEND_ERROR_TAGS)


def peer_lost(group: mx.distributed.Group, error: RuntimeError) -> DistributedError:
    return DistributedError(
        f"{describe_group(group)}: communication with the other ranks failed ({error}); another rank has probably "
        "stopped, and its output says why"
    )


def sum_gradients(grads: dict, group: mx.distributed.Group, bucket_bytes: int = BUCKET_BYTES) -> dict:
    """Sum a gradient tree over the ranks with one all-reduce per bucket of about ``bucket_bytes``.

    The original all-reduces (SUM) every parameter's gradient; concatenating them into a few large buffers gives the
    same sums with far fewer messages. Arrays of another dtype than the bucket's start a new bucket.
    (`mlx.nn.utils.average_gradients` divides by the ranks, where the original sums, and stops bucketing altogether
    when the tree mixes dtypes.)
    """
    buckets: list[list[tuple[str, mx.array]]] = []
    size = 0
    for key, value in tree_flatten(grads):
        if not buckets or size >= bucket_bytes or value.dtype != buckets[-1][0][1].dtype:
            buckets.append([])
            size = 0
        buckets[-1].append((key, value))
        size += value.nbytes
    summed = []
    for bucket in buckets:
        total = mx.distributed.all_sum(mx.concatenate([value.reshape(-1) for _, value in bucket]), group=group)
        ends = list(itertools.accumulate(value.size for _, value in bucket))
        parts = mx.split(total, ends[:-1])
        summed.extend((key, part.reshape(value.shape)) for (key, value), part in zip(bucket, parts))
    return tree_unflatten(summed)


def sum_metrics(metrics: dict, group: mx.distributed.Group) -> dict:
    """Sum the per-rank metric sums over the ranks in one all-reduce; each keeps its dtype.

    As the original's stacked ``reduce``, in the widest float type of the values (fp64 where the loss is fp64);
    the integer counts are exact in it.
    """
    keys = sorted(metrics)
    wide = mx.float64 if any(metrics[k].dtype == mx.float64 for k in keys) else mx.float32
    total = mx.distributed.all_sum(mx.stack([metrics[k].astype(wide) for k in keys]), group=group)
    return {key: total[i].astype(metrics[key].dtype) for i, key in enumerate(keys)}


def all_gather(x: mx.array, group: mx.distributed.Group) -> mx.array:
    """Every rank's ``x`` concatenated along axis 0 in rank order (booleans travel as bytes: NCCL has no bool)."""
    if x.dtype == mx.bool_:
        return mx.distributed.all_gather(x.astype(mx.uint8), group=group).astype(mx.bool_)
    return mx.distributed.all_gather(x, group=group)


def broadcast_arrays(tree, group: mx.distributed.Group):
    """Rank 0's arrays on every rank (the others contribute zeros to a sum), evaluated one at a time.

    Evaluating each before the next keeps the extra memory to one array, which matters for the puzzle table.
    """
    def broadcast(value: mx.array) -> mx.array:
        dtype = value.dtype
        wire = value.astype(mx.uint8) if dtype == mx.bool_ else value
        contribution = wire if group.rank() == 0 else mx.zeros_like(wire)
        result = mx.distributed.all_sum(contribution, group=group).astype(dtype)
        mx.eval(result)
        return result

    return tree_map(broadcast, tree)


def broadcast_object(obj, group: mx.distributed.Group):
    """Rank 0's picklable ``obj`` on every rank (rank 0's resolved config, with its random run name)."""
    payload = pickle.dumps(obj) if group.rank() == 0 else b""
    length = mx.distributed.all_sum(mx.array([len(payload)], dtype=mx.int32), group=group).item()
    data = mx.array(np.frombuffer(payload, dtype=np.uint8)) if payload else mx.zeros((length,), dtype=mx.uint8)
    return pickle.loads(np.array(mx.distributed.all_sum(data, group=group)).tobytes())


def rank_rows(tree, rank: int, world_size: int, global_rows: int):
    """Rank ``rank``'s rows of every array of ``tree``, whose arrays hold the ``global_rows`` rows of a global batch."""
    local = global_rows // world_size

    def take(value: mx.array) -> mx.array:
        if value.shape[0] != global_rows:
            raise ValueError(f"expected {global_rows} rows (the global batch), got an array of shape {value.shape}")
        return value[rank * local : (rank + 1) * local]

    return tree_map(take, tree)


def watchdog_timeout() -> float:
    """``$TRM_MLX_DIST_TIMEOUT`` seconds, else the default."""
    value = os.environ.get(TIMEOUT_ENV)
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(f"environment variable {TIMEOUT_ENV}: expected seconds >= 0 (0 = no limit), got {value!r}")
    return seconds


class Watchdog:
    """Ends this process when it makes no progress for ``timeout_s`` seconds (a collective waiting forever).

    A rank that exits makes the ring backend fail the others' next collective at once, and makes ``mlx.launch``
    stop the others; but a rank that hangs, or one that dies where nothing notices (NCCL's collectives have no
    timeout of their own), would hold every other rank forever. The training loop calls :meth:`beat` after each step
    and evaluation batch. MLX releases the GIL while it waits, so this thread runs even when the main thread is
    blocked in a collective.
    """

    def __init__(self, timeout_s: float, group: mx.distributed.Group):
        self.timeout_s = timeout_s
        self.where = describe_group(group)
        self.last_beat = time.monotonic()
        self.stopped = threading.Event()
        if timeout_s > 0 and group.size() > 1:
            threading.Thread(target=self.watch, name="trm-watchdog", daemon=True).start()

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def watch(self) -> None:
        while not self.stopped.wait(min(10.0, self.timeout_s / 4)):
            idle = time.monotonic() - self.last_beat
            if idle > self.timeout_s:
                print(
                    f"trm-train {self.where}: no progress for {idle:.0f} s ({TIMEOUT_ENV}={self.timeout_s:g}); "
                    "another rank has probably stopped or hangs. Exiting.",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(1)  # the main thread is blocked inside a collective: nothing else can stop it

    def close(self) -> None:
        self.stopped.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class HeartbeatDataset:
    """A dataset as evaluation reads it, beating the watchdog at every test batch (evaluations can be long)."""

    def __init__(self, dataset, watchdog: Watchdog):
        self.dataset = dataset
        self.watchdog = watchdog

    def __getattr__(self, name):
        return getattr(self.dataset, name)

    def iter_test(self):
        for item in self.dataset.iter_test():
            self.watchdog.beat()
            yield item
