"""The fused ops, their self-check against the reference, and the dispatch decision.

A fused kernel that fails to compile or disagrees with its reference must never reach a user's training run: before
an op is used on a backend (`trm_mlx.runtime.fused_kernels`), it runs once on a small random input, forward and VJP,
next to its plain-MLX reference. On an exception or a mismatch it is left out for the process with one warning, and
the reference path runs instead.
"""

import warnings
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx

# ||fused - reference|| / ||reference||, forward output and every input gradient. fp32 kernels differ from the
# reference only by summation order and rsqrt/exp rounding; bf16 ones additionally round once where the
# reference rounds after every op (about 2^-9 relative per element).
TOLERANCE = {"float32": 2e-5, "bfloat16": 1e-2, "float16": 2e-3}
CHECK_DTYPES = (mx.float32, mx.bfloat16)

# Dtypes the fused kernels (and the CPU paths) take: they accumulate in fp32 and round once to this dtype; others
# (float64 on the CPU) always run the reference.
KERNEL_DTYPES = (mx.float32, mx.float16, mx.bfloat16)


@dataclass(frozen=True)
class FusedOp:
    """One fused op: `fused(*arrays, **static)` must equal `reference(*arrays, **static)`, values and VJP."""

    name: str
    summary: str
    reference: Callable
    fused: Callable
    sample: Callable  # (key, dtype) -> (arrays, static kwargs): a small input for the self-check


@dataclass
class CheckResult:
    ok: bool
    detail: str
    errors: dict = field(default_factory=dict)  # dtype name -> (forward error, largest gradient error)


OPS: dict[str, FusedOp] = {}
RESULTS: dict[tuple[str, str], CheckResult] = {}


def register(op: FusedOp) -> FusedOp:
    OPS[op.name] = op
    return op


def relative_error(value: mx.array, expected: mx.array) -> float:
    value, expected = value.astype(mx.float32), expected.astype(mx.float32)
    scale = mx.sqrt(mx.sum(expected * expected)).item()
    diff = mx.sqrt(mx.sum((value - expected) ** 2)).item()
    return diff / scale if scale > 0 else diff


def outputs_and_vjp(fn: Callable, arrays: tuple, static: dict, cotangents: list):
    def flat(*primals):
        out = fn(*primals, **static)
        return list(out) if isinstance(out, tuple) else [out]

    outputs, grads = mx.vjp(flat, list(arrays), cotangents)
    mx.eval(outputs, grads)
    return outputs, grads


def compare(op: FusedOp, dtype, key) -> tuple[float, float]:
    """(forward error, largest gradient error) of the fused op against its reference on one random input."""
    sample_key, cot_key = mx.random.split(key)
    arrays, static = op.sample(sample_key, dtype)
    ref_out = op.reference(*arrays, **static)
    ref_out = list(ref_out) if isinstance(ref_out, tuple) else [ref_out]
    cot_keys = mx.random.split(cot_key, len(ref_out))
    cotangents = [mx.random.normal(o.shape, key=k).astype(o.dtype) for o, k in zip(ref_out, cot_keys)]
    expected, expected_grads = outputs_and_vjp(op.reference, arrays, static, cotangents)
    got, got_grads = outputs_and_vjp(op.fused, arrays, static, cotangents)
    for a, b in zip(got + got_grads, expected + expected_grads):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ValueError(f"fused result {a.shape} {a.dtype} where the reference gives {b.shape} {b.dtype}")
    forward = max(relative_error(a, b) for a, b in zip(got, expected))
    backward = max(relative_error(a, b) for a, b in zip(got_grads, expected_grads))
    return forward, backward


def check(op: FusedOp) -> CheckResult:
    """Run the fused op against its reference in fp32 and bf16; never raises."""
    errors = {}
    key = mx.random.key(20261122)  # an explicit key: the check must not move the global random state
    try:
        for dtype in CHECK_DTYPES:
            key, sub = mx.random.split(key)
            name = str(dtype).split(".")[-1]
            errors[name] = compare(op, dtype, sub)
    except Exception as e:  # a compile error surfaces here, at the first launch
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return CheckResult(False, f"failed to run: {first_line}", errors)
    for name, (forward, backward) in errors.items():
        if not (forward <= TOLERANCE[name] and backward <= TOLERANCE[name]):  # NaN fails too
            return CheckResult(
                False,
                f"{name} error vs reference {forward:.2e} (forward), {backward:.2e} (gradients) "
                f"over the tolerance {TOLERANCE[name]:.0e}",
                errors,
            )
    return CheckResult(True, "ok", errors)


def check_once(name: str, backend: str) -> CheckResult:
    """The op's self-check result on `backend` (MLX's default device), running it (and warning on failure) the
    first time."""
    key = (name, backend)
    if key not in RESULTS:
        result = check(OPS[name])
        RESULTS[key] = result
        if not result.ok:
            warnings.warn(
                f"trm_mlx.kernels: fused kernel {name!r} disabled on {key[1]} ({result.detail}); "
                "running its reference instead",
                RuntimeWarning,
                stacklevel=3,
            )
    return RESULTS[key]


def kernel_dtypes(*arrays: mx.array) -> bool:
    """Whether the fused kernels (and the CPU paths) take arrays of these dtypes."""
    return all(a.dtype in KERNEL_DTYPES for a in arrays)


def use_fused(name: str, execution, *arrays: mx.array) -> bool:
    """Whether this call runs the fused kernel: `execution` (trm_mlx.model.execution) runs it and the dtypes fit."""
    return name in execution.fused_kernels and kernel_dtypes(*arrays)
