import trm_mlx  # noqa: F401  (first: picks the fast CPU BLAS before MLX loads; see trm_mlx/device.py)

from pathlib import Path

import mlx.core as mx
import pytest

from tiny_dataset import write_tiny_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
