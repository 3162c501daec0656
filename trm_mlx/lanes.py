"""CPU lanes: a batch split into equal row slices, each run by its own compiled graph on its own CPU stream.

MLX runs a CPU stream's work on one thread (OpenBLAS threads only the matrix products), so one graph keeps one core
busy with a step's element-wise work; lanes put it on several cores. They run at once only if MLX's evaluation tape
interleaves them, which `device.widen_cpu_tape` sets up when trm_mlx is imported on the CPU. Used by the train
step (`training/lanes.py`) and the evaluation loop; figures in docs/BENCHMARKS.md ("CPU lanes").
"""

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map

from trm_mlx import device


# `cpu_lanes: auto`: two lanes were faster than one on every CPU and preset measured (Linux with OpenBLAS, 2 and 16
# cores), more than two were not always (docs/BENCHMARKS.md, CPU lanes). Another BLAS's threads are not shared out
# among the lanes (unmeasured), so there auto stays at one.
AUTO_LANES = 2


def count_here(requested: int | str, group: mx.distributed.Group | None = None, batch_size: int | None = None) -> int:
    """The lanes to run: on the CPU backend in a single process `requested`, where `auto` is AUTO_LANES if OpenBLAS
    is loaded, the process has that many cores and they split `batch_size` evenly (when given), else 1; elsewhere 1
    (a GPU runs its step as one graph, and ranks already split the batch)."""
    if device.backend() != "cpu" or (group is not None and group.size() > 1):
        return 1
    if requested != "auto":
        return requested
    splits = batch_size is None or batch_size % AUTO_LANES == 0
    measured = device.openblas_core() is not None and device.cpu_cores() >= AUTO_LANES
    return AUTO_LANES if measured and splits else 1


class Lanes:
    """`count` CPU streams, each running its own copy of a compiled function on its slice of the batch rows."""

    def __init__(self, count: int):
        self.count = count
        self.streams = [mx.new_stream(mx.cpu) for _ in range(count)]
        # The cores shared out: each lane's matrix products on its share of OpenBLAS's threads (unshared, every
        # lane's products claim all the cores at once: docs/BENCHMARKS.md, CPU lanes).
        device.set_blas_threads(max(1, device.cpu_cores() // count))

    def run(self, graphs: list, *trees):
        """[graphs[i](*lane i's rows of trees)] for every lane i; a None tree stays None."""
        size = rows(trees) // self.count
        results = []
        for index, (stream, graph) in enumerate(zip(self.streams, graphs)):
            with mx.stream(stream):
                results.append(graph(*(None if t is None else slice_rows(t, index, size) for t in trees)))
        return results


def rows(trees) -> int:
    """The batch size: the first axis of the first array in `trees`."""
    return next(a for t in trees if t is not None for _, a in tree_flatten(t)).shape[0]


def slice_rows(tree, lane: int, size: int):
    """Rows [lane * size, (lane + 1) * size) of every array in `tree` (each has the batch as its first axis)."""
    return tree_map(lambda a: a[lane * size : (lane + 1) * size], tree)


def concatenate_rows(parts: list):
    """The lanes' trees of row slices joined back in row order."""
    return tree_map(lambda *arrays: mx.concatenate(arrays), *parts)


def add(parts: list):
    """The lanes' trees of sums (metrics, weight gradients) added."""
    return tree_map(lambda *arrays: sum(arrays[1:], arrays[0]), *parts)
