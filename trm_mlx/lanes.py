"""CPU lanes: a batch split into equal row slices, each run by its own compiled graph on its own CPU stream.

MLX runs a CPU stream's work on one thread (OpenBLAS threads only the matrix products), so one graph keeps one core
busy with a step's element-wise work; lanes put it on several cores. They run at once only if MLX's evaluation tape
interleaves them, which `Runtime.create` sets up on the CPU (`trm_mlx.runtime`, which also decides how many).
Used by the train step (`training/lanes.py`) and the evaluation loop; figures in docs/BENCHMARKS.md ("CPU lanes").
"""

import os

import mlx.core as mx
from mlx.utils import tree_flatten, tree_map

from trm_mlx import blas


def cpu_cores() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Lanes:
    """`count` CPU streams, each running its own copy of a compiled function on its slice of the batch rows."""

    def __init__(self, count: int):
        self.count = count
        self.streams = [mx.new_stream(mx.cpu) for _ in range(count)]
        # The cores shared out: each lane's matrix products on its share of the BLAS's threads (unshared, every
        # lane's products claim all the cores at once: docs/BENCHMARKS.md, CPU lanes).
        blas.set_threads(max(1, cpu_cores() // count))

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
