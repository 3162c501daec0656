"""MLX's default device pinned for part of a test, for what is the CPU's to measure or compute, also on a GPU
machine."""

import contextlib

import mlx.core as mx


@contextlib.contextmanager
def cpu_default_device():
    """MLX's default device set to the CPU for the block, then back to what it was."""
    previous = mx.default_device()
    mx.set_default_device(mx.cpu)
    try:
        yield
    finally:
        mx.set_default_device(previous)
