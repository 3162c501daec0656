"""Exchange picklable evaluator state between the processes of a data-parallel evaluation."""

import pickle

import mlx.core as mx
import numpy as np


def all_gather_objects(obj, group: mx.distributed.Group) -> list:
    """Every rank's `obj`, in rank order, on every rank (payloads are padded to the longest one)."""
    payload = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
    sizes = mx.distributed.all_gather(mx.array([payload.size], dtype=mx.int64), group=group, stream=mx.cpu)
    sizes = np.array(sizes)
    padded = np.zeros(int(sizes.max()), dtype=np.uint8)
    padded[: payload.size] = payload
    gathered = mx.distributed.all_gather(mx.array(padded), group=group, stream=mx.cpu)
    rows = np.array(gathered).reshape(group.size(), -1)
    return [pickle.loads(rows[rank, : sizes[rank]].tobytes()) for rank in range(group.size())]
