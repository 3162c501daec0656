import trm_mlx  # noqa: F401  (first: picks the fast CPU BLAS before MLX loads; see trm_mlx/device.py)

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real benchmark data beside the checkout (../shared/data); tests that need it skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not found (real ARC/Sudoku/Maze data is optional)")
    return SHARED_DATA
