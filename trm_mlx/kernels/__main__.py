"""`python -m trm_mlx.kernels --check`: each fused kernel's status and error against its reference here."""

import argparse
import sys
import warnings

from ..runtime import FUSED_BY_DEFAULT, KERNELS_ENV, Runtime
from . import check_all
from .registry import OPS, TOLERANCE


def report() -> int:
    """Print the table; the exit status is 1 when a kernel failed its check on a GPU backend."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the table says it
        runtime = Runtime.create()
        results = check_all(runtime.backend) if runtime.backend != "cpu" else {}
    print(f"backend: {runtime.backend}; kernels mode: {runtime.kernel_mode} (config or {KERNELS_ENV})")
    if runtime.backend == "cpu":
        print("MLX has no custom kernels on the CPU: every op below runs its plain-MLX reference. Unless the mode is")
        print("`reference`, SwiGLU, the attention, the head split and the token mixing run trm_mlx.kernels.cpu's versions.")
        for name, op in OPS.items():
            print(f"  {name:<18} reference  {op.summary}")
        return 0
    tolerances = ", ".join(f"{k} {v:.0e}" for k, v in TOLERANCE.items())
    print(f"relative error ||fused - reference|| / ||reference||, forward / worst gradient (tolerance {tolerances})")
    print(f"  {'kernel':<18} {'status':<9} {'float32':<21} {'bfloat16':<21} {'default':<8} {'runs now'}")
    failed = 0
    for name, result in results.items():
        errors = {k: f"{f:.1e} / {b:.1e}" for k, (f, b) in result.errors.items()}
        default = "on" if name in FUSED_BY_DEFAULT.get(runtime.backend, ()) else "off"
        runs = "fused" if name in runtime.fused_kernels else "reference"
        status = "ok" if result.ok else "DISABLED"
        print(
            f"  {name:<18} {status:<9} {errors.get('float32', '-'):<21} {errors.get('bfloat16', '-'):<21} "
            f"{default:<8} {runs}"
        )
        if not result.ok:
            failed += 1
            print(f"      {result.detail}")
    return 1 if failed else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trm_mlx.kernels", description=__doc__)
    parser.add_argument("--check", action="store_true", help="self-check every fused kernel and print the table")
    args = parser.parse_args(argv)
    if not args.check:
        parser.print_help()
        return 2
    return report()


if __name__ == "__main__":
    sys.exit(main())
