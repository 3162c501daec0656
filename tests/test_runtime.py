"""The runtime is the one place that decides how the code runs: importing trm_mlx changes nothing in the process,
the model reads no process-wide policy, and each backend's choices reach the model as its `Execution`."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from trm_mlx.model import Execution
from trm_mlx.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]

# Prints what importing trm_mlx changed: the environment, the shared libraries mapped into the process, whether glibc
# serves a large block from its heap (mallopt's M_MMAP_MAX = 0) instead of a fresh mapping, and whether MLX loaded.
# Last, as a control, what the probe sees after the runtime's own allocator setting.
IMPORT_PROBE = """
import ctypes, json, os, sys

def libraries():
    return {line.split()[-1] for line in open("/proc/self/maps") if ".so" in line}

def large_block_in_heap():
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc(256 << 20)
    heaps = [line.split()[0].split("-") for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
    inside = any(int(start, 16) <= block < int(end, 16) for start, end in heaps)
    libc.free(block)
    return inside

environment, loaded, in_heap = dict(os.environ), libraries(), large_block_in_heap()
import trm_mlx
changed = {
    "environment": sorted(set(os.environ.items()) ^ set(environment.items())),
    "libraries": sorted(libraries() - loaded),
    "allocator": [in_heap, large_block_in_heap()],
    "mlx": "mlx.core" in sys.modules,
}
from trm_mlx.runtime import keep_freed_memory
keep_freed_memory()
changed["control"] = large_block_in_heap()
print(json.dumps(changed))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps and glibc's allocator")
def test_importing_trm_mlx_changes_nothing_in_the_process():
    run = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, check=True)  # fmt: skip
    changed = json.loads(run.stdout)
    assert changed["environment"] == [] and changed["libraries"] == [] and not changed["mlx"], changed
    assert changed["allocator"] == [False, False], changed
    assert changed["control"], "the probe cannot see the allocator setting it checks"


# The model's modules must not ask how the process runs: no import of the modules that decide it (or of os, sys,
# platform, ctypes), no question to MLX about its device, memory or ranks, no module state they rebind.
POLICY_MODULES = ("trm_mlx.device", "trm_mlx.runtime", "trm_mlx.blas", "trm_mlx.lanes", "os", "sys", "platform",
                  "ctypes")  # fmt: skip
PROCESS_QUERIES = ("default_device", "set_default_device", "default_stream", "get_memory_limit", "set_memory_limit",
                   "get_active_memory", "distributed", "metal", "cuda", "device_info", "environ", "getenv")  # fmt: skip


def policy_reads(source: str, package: str = "trm_mlx.model") -> list[str]:
    """Each import of a policy module, process query and `global` statement in `source` (a module of `package`)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            modules = [module] + [f"{module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Attribute) and node.attr in PROCESS_QUERIES:
            found.append(f"line {node.lineno}: .{node.attr}")
            continue
        elif isinstance(node, ast.Global):
            found.append(f"line {node.lineno}: global {', '.join(node.names)}")
            continue
        else:
            continue
        for module in modules:
            if any(module == bad or module.startswith(bad + ".") for bad in POLICY_MODULES):
                found.append(f"line {node.lineno}: import {module}")
    return found


def test_the_checker_finds_each_kind_of_policy_read():
    bad = """
from .. import device
from ..runtime import Runtime
import os
import trm_mlx.blas as blas
mode = None
def f(x):
    global mode
    return mx.default_device() == mx.cpu or os.environ.get("X")
"""
    found = policy_reads(bad)
    for expected in ("import trm_mlx.device", "import trm_mlx.runtime", "import os", "import trm_mlx.blas",
                     "global mode", ".default_device", ".environ"):  # fmt: skip
        assert any(expected in line for line in found), (expected, found)
    assert policy_reads("from .layers import Block\nfrom ..kernels import swiglu\nimport mlx.core as mx\n") == []


def test_the_model_reads_no_process_policy():
    files = sorted((ROOT / "trm_mlx" / "model").glob("*.py"))
    assert len(files) > 5
    found = {path.name: policy_reads(path.read_text()) for path in files}
    assert not any(found.values()), {name: lines for name, lines in found.items() if lines}


def test_each_backend_reaches_the_model_as_its_execution():
    cuda = Runtime("cuda", "auto", frozenset({"swiglu"}), recompute=1.0).execution
    assert cuda == Execution(fused_kernels=frozenset({"swiglu"}), attention_tile=128, recompute=1.0)
    assert Runtime("metal").execution == Execution()
    cpu = Runtime("cpu", cpu_lanes=2, recompute=0.3).execution
    assert cpu == Execution(cpu_paths=True, fp32_products=True, recompute=0.3, loss_dtype="float64")
    assert not Runtime("cpu", "reference").execution.cpu_paths


def test_create_selects_the_device_and_makes_every_choice(monkeypatch):
    monkeypatch.delenv("TRM_MLX_KERNELS", raising=False)
    runtime = Runtime.create(device="cpu", kernels="reference", recompute="blocks", cpu_lanes=3, batch_size=6)
    assert mx.default_device() == mx.cpu
    assert (runtime.backend, runtime.kernel_mode, runtime.fused_kernels) == ("cpu", "reference", frozenset())
    assert (runtime.recompute, runtime.cpu_lanes, runtime.rank, runtime.ranks) == (1.0, 3, 0, 1)
    assert Runtime.create(device="cpu").recompute == 0.0  # auto: memory is not the limit on a CPU
    summary = runtime.summary()
    assert summary.startswith("backend: cpu") and "fused kernels (reference): none;" in summary
    assert "recompute: blocks" in summary and summary.endswith("CPU lanes: 3")
