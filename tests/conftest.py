import os

from trm_mlx.blas import load_fast_blas

load_fast_blas()  # as every command line does first: before MLX loads
# On a CUDA GPU MLX rounds fp32 products' operands to TF32 by default; the tests hold fp32 to fp32 (as trm-parity does).
os.environ.setdefault("MLX_ENABLE_TF32", "0")

from pathlib import Path  # noqa: E402

import mlx.core as mx  # noqa: E402
import pytest  # noqa: E402

from tiny_dataset import write_tiny_dataset  # noqa: E402
from trm_mlx.runtime import Runtime  # noqa: E402

# This process's runtime (default settings, one CPU lane), made before any test evaluates: it sets the tape width.
RUNTIME = Runtime.create(cpu_lanes=1)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def runtime() -> Runtime:
    """This process's runtime: MLX's default device, the default settings, one CPU lane."""
    return RUNTIME


@pytest.fixture
def on_the_cpu():
    """MLX's default device set to the CPU for the test, also on a GPU machine (`restore_default_device` puts the
    previous one back)."""
    mx.set_default_device(mx.cpu)


@pytest.fixture
def shared_data() -> Path:
    """The real benchmark data beside the checkout (../shared/data); tests that need it skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not found (real ARC/Sudoku/Maze data is optional)")
    return SHARED_DATA


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A tiny Sudoku-shaped dataset (tests/tiny_dataset.py), built once per test module."""
    return write_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(autouse=True)
def restore_default_device():
    """Whatever device a test (or the trainer it runs) chooses, the next test starts on the previous default."""
    previous = mx.default_device()
    yield
    mx.set_default_device(previous)
