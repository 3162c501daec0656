"""An optimised BLAS for MLX's CPU backend on Linux.

The `mlx[cpu]` wheel links a reference BLAS (about 5 GFLOP/s on a laptop-class core); an optimised BLAS loaded with
RTLD_GLOBAL *before* MLX's own library is loaded supplies the same symbols ~30x faster (docs/BENCHMARKS.md). Every
command line calls `load_fast_blas` first, before anything imports `mlx.core`. The system's OpenBLAS comes first where
it is installed, else the MKL that pip installs with trm-mlx on Linux x86-64 (the `mkl` wheel, no system library
needed). TRM_MLX_BLAS chooses: `auto` (that order), `openblas`, `mkl`, a library path, or `off` (MLX's own BLAS).
"""

import ctypes
import glob
import os
import sys
import sysconfig
import warnings

# Debian/Ubuntu (libopenblas0-pthread, libopenblas0-openmp), Fedora/RHEL, and a plain OpenBLAS install.
CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-openmp/libblas.so.3",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
    "/usr/local/lib/libopenblas.so.0",
)

INSTALL_HINT = (
    "MLX's CPU build on Linux uses a slow reference BLAS. Install OpenBLAS for ~30x faster matrix products, e.g. "
    "`sudo apt-get install libopenblas0-pthread` (Debian/Ubuntu) or `sudo dnf install openblas` (Fedora), "
    "`pip install mkl` (x86-64), or point TRM_MLX_BLAS at a BLAS shared library."
)

loaded: str | None = None  # the library load_fast_blas loaded, if any
chosen = False  # load_fast_blas has made its choice, before MLX loaded: later calls keep it


def installed_mkl() -> list[str]:
    """MKL's single dynamic library as the `mkl` wheel installs it: in the `lib/` of this environment's data
    directory (a virtual environment's prefix), or of the user's (`pip install --user`)."""
    schemes = (sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user"))
    data_dirs = dict.fromkeys(sysconfig.get_paths(scheme)["data"] for scheme in schemes)
    return [path for data in data_dirs for path in sorted(glob.glob(os.path.join(data, "lib", "libmkl_rt.so.*")))]


def candidates(choice: str) -> list[str]:
    """The libraries to try, in order, for a TRM_MLX_BLAS value."""
    if choice == "openblas":
        return list(CANDIDATES)
    if choice == "mkl":
        return installed_mkl()
    if choice == "auto":
        return [*CANDIDATES, *installed_mkl()]
    return [choice]


def load_fast_blas() -> str | None:
    """Load an optimised BLAS for MLX's CPU backend (Linux only, once); returns its path, or None (not on Linux,
    TRM_MLX_BLAS=off, none found, or MLX already loaded)."""
    global loaded, chosen
    choice = os.environ.get("TRM_MLX_BLAS", "auto")
    if not sys.platform.startswith("linux") or choice == "off" or chosen:
        return loaded
    if "mlx.core" in sys.modules:  # too late: MLX already bound its BLAS symbols
        warnings.warn("MLX was imported before trm_mlx.blas.load_fast_blas(), so its CPU matrix products use its slow "
                      "reference BLAS: call load_fast_blas() (or trm_mlx.load) before importing mlx")
        return None
    chosen = True
    for path in candidates(choice):
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError as e:
                warnings.warn(f"TRM_MLX_BLAS: could not load {path}: {e}")
                continue
            loaded = path
            return path
    if choice != "auto":
        warnings.warn(f"TRM_MLX_BLAS={choice}: no such library")
    return None


def is_mkl() -> bool:
    return loaded is not None and hasattr(ctypes.CDLL(loaded), "MKL_Set_Num_Threads")


def shares_threads() -> bool:
    """Whether `set_threads` can share the loaded BLAS's threads out among CPU lanes (OpenBLAS, MKL)."""
    return is_mkl() or openblas_core() is not None


def set_threads(count: int) -> None:
    """The loaded OpenBLAS's or MKL's thread count for MLX's CPU matrix products (nothing for another BLAS)."""
    if loaded is None:
        return
    library = ctypes.CDLL(loaded)
    setter = getattr(library, "openblas_set_num_threads", None) or getattr(library, "MKL_Set_Num_Threads", None)
    if setter is not None:
        setter(count)


def openblas_core() -> str | None:
    """The CPU kernels OpenBLAS runs (e.g. `Cooperlake`, `Haswell`), or None when the loaded BLAS is not OpenBLAS.

    `OPENBLAS_CORETYPE` can force an older core than the CPU has, and a slower step with it (docs/BENCHMARKS.md).
    """
    if loaded is None:
        return None
    try:
        corename = ctypes.CDLL(loaded).openblas_get_corename
    except (OSError, AttributeError):
        return None
    corename.restype = ctypes.c_char_p
    return corename().decode()


def describe() -> str:
    """The CPU BLAS in use, for logs and benchmark records."""
    if loaded is None:
        return f"MLX bundled reference BLAS; {INSTALL_HINT}"
    if is_mkl():
        return f"{loaded}, MKL"
    core = openblas_core()
    if core is None:
        return loaded
    forced = " forced by OPENBLAS_CORETYPE" if os.environ.get("OPENBLAS_CORETYPE") else ""
    return f"{loaded}, OpenBLAS {core} kernels{forced}"
