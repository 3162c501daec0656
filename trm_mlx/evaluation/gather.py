"""Exchange picklable evaluator state between the processes of a data-parallel evaluation."""

import pickle

import mlx.core as mx
import numpy as np


def all_gather_objects(obj, group: mx.distributed.Group) -> list:
    """Every rank's `obj`, in rank order, on every rank (payloads are padded to the longest one).

    The collectives run on the stream the group picks (the ring's on the CPU, NCCL's on the GPU, which has no CPU
    path), and the results come to the host after.
    """
    payload = np.frombuffer(pickle.dumps(obj), dtype=np.uint8)
    sizes = np.array(mx.distributed.all_gather(mx.array([payload.size], dtype=mx.int64), group=group))
    padded = np.zeros(int(sizes.max()), dtype=np.uint8)
    padded[: payload.size] = payload
    rows = np.array(mx.distributed.all_gather(mx.array(padded), group=group)).reshape(group.size(), -1)
    return [pickle.loads(rows[rank, : sizes[rank]].tobytes()) for rank in range(group.size())]
