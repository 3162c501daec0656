"""The CPU BLAS choice on Linux: the system's OpenBLAS where it is installed, else the MKL that pip installs with
trm-mlx on x86-64, so that the README's plain install trains at full speed. Each check runs in a fresh process,
since a BLAS can only be chosen before MLX is loaded; `TRM_MLX_BLAS=mkl` stands in for a machine without OpenBLAS."""

import os
import platform
import subprocess
import sys

import pytest

from trm_mlx import blas

MKL_HERE = sys.platform.startswith("linux") and platform.machine() == "x86_64"
needs_mkl = pytest.mark.skipif(not MKL_HERE, reason="the mkl wheel is a dependency on Linux x86-64 only")


def run(code: str, **env: str) -> list[str]:
    """`code` in a fresh Python with `env` added; its stdout lines."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_system_openblas_comes_before_the_installed_mkl():
    auto = blas.candidates("auto")
    assert auto[: len(blas.CANDIDATES)] == list(blas.CANDIDATES)
    assert auto[len(blas.CANDIDATES) :] == blas.installed_mkl()
    assert blas.candidates("openblas") == list(blas.CANDIDATES)
    assert blas.candidates("/opt/lib/libblas.so") == ["/opt/lib/libblas.so"]


@needs_mkl
def test_the_installed_mkl_is_found_in_this_environment():
    """The dependency put libmkl_rt in this environment's lib/, where `installed_mkl` looks."""
    found = blas.installed_mkl()
    assert found, f"no libmkl_rt.so.* under {sys.prefix}/lib: is the mkl wheel installed?"
    assert all(os.path.basename(path).startswith("libmkl_rt.so.") for path in found)


MKL_PRODUCT = """
from trm_mlx import blas
print(blas.load_fast_blas())
import mlx.core as mx
import numpy as np
mx.set_default_device(mx.cpu)
rng = np.random.default_rng(0)
a, b = rng.standard_normal((256, 192), dtype=np.float32), rng.standard_normal((192, 128), dtype=np.float32)
got = np.array(mx.array(a) @ mx.array(b))
print(float(np.abs(got - a.astype(np.float64) @ b.astype(np.float64)).max()))
import os
mapped = {line.split()[-1] for line in open("/proc/self/maps") if "/" in line}
system = {os.path.realpath(path) for path in blas.CANDIDATES} | set(blas.CANDIDATES)
print(any("libmkl_rt" in path for path in mapped), bool(mapped & system))
print(blas.describe())
"""


@needs_mkl
def test_without_openblas_mlx_multiplies_through_mkl():
    """With the system OpenBLAS out of the way, MLX's CPU products run in MKL (MKL_VERBOSE logs its SGEMM) and
    agree with float64 NumPy to fp32 rounding; no system OpenBLAS is loaded."""
    lines = run(MKL_PRODUCT, TRM_MLX_BLAS="mkl", MKL_VERBOSE="1")
    printed = [line for line in lines if not line.startswith("MKL_VERBOSE")]
    path, error, maps, described = printed
    assert path in blas.installed_mkl()
    assert float(error) < 1e-3  # sums of 192 products of unit normals: fp32 rounding is ~1e-5
    assert maps == "True False"
    assert described.endswith(", MKL")
    assert any(line.startswith("MKL_VERBOSE SGEMM") for line in lines), "MLX's product did not reach MKL"


LANES_WITH_MKL = """
import ctypes
from trm_mlx import blas
blas.load_fast_blas()
from trm_mlx.lanes import Lanes, cpu_cores
from trm_mlx.runtime import Runtime
print(Runtime.create(device="cpu", batch_size=64).cpu_lanes, cpu_cores())
Lanes(2)
print(ctypes.CDLL(blas.loaded).MKL_Get_Max_Threads())
"""


@needs_mkl
def test_cpu_lanes_share_the_mkl_threads_out():
    """With MKL, `cpu_lanes: auto` is two lanes on two or more cores, each with its share of MKL's threads."""
    (lanes_and_cores, threads) = run(LANES_WITH_MKL, TRM_MLX_BLAS="mkl")
    lanes, cores = map(int, lanes_and_cores.split())
    assert lanes == (2 if cores >= 2 else 1)
    assert int(threads) == max(1, cores // 2)


LOAD_FIRST = """
import sys, warnings
warnings.simplefilter("error")
import trm_mlx
from trm_mlx import blas
print("mlx.core" in sys.modules, blas.loaded)
trm_mlx.load
print("mlx.core" in sys.modules, blas.loaded is not None)
"""

MLX_FIRST = """
import warnings
import mlx.core
import trm_mlx
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    trm_mlx.load
print(any("reference BLAS" in str(w.message) for w in caught))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the BLAS choice is Linux's")
def test_trm_mlx_load_brings_the_fast_blas_before_mlx():
    """A user's script gets the fast BLAS from `trm_mlx.load` alone; importing mlx first earns a warning instead of
    a silently slow model."""
    before, after = run(LOAD_FIRST)
    assert before == "False None"
    assert after == "True True"
    assert run(MLX_FIRST) == ["True"]


CHOSEN_ONCE = """
import warnings
from trm_mlx import blas
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print(blas.load_fast_blas())
    import mlx.core
    print(blas.load_fast_blas())
for w in caught:
    print(w.message)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the BLAS choice is Linux's")
def test_a_choice_made_before_mlx_stands_without_a_late_warning():
    """Where no fast BLAS is found, the choice (MLX's own) is made once: a later call, after MLX loaded, keeps it
    instead of warning that MLX came first."""
    lines = run(CHOSEN_ONCE, TRM_MLX_BLAS="/nonexistent/libblas.so")
    assert lines == ["None", "None", "TRM_MLX_BLAS=/nonexistent/libblas.so: no such library"]
