"""One rank of a trm-train run for test_distributed.py: the real command line (``trm_mlx.training.cli``), with every
logged step recorded. Run by ``mlx.launch``, started by hand with the ring's environment variables, or alone.

    distributed_worker.py RESULT_PREFIX [--fail=RANK:STEP:exit|hang] OVERRIDE...

Writes RESULT_PREFIX.<rank>.json ({"steps": [...], "eval": [...]}) when training ends normally, and prints
``step N`` as each step is logged. ``--fail`` makes rank RANK exit (status 3) a second after step STEP is logged, or
hang there.
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trm_mlx.blas import load_fast_blas  # noqa: E402

load_fast_blas()  # as trm-train does first: before MLX loads

import mlx.core as mx  # noqa: E402

from trm_mlx.training import cli  # noqa: E402
from trm_mlx.training.logging import RunLogger  # noqa: E402

FAIL_EXIT_STATUS = 3


def main() -> None:
    prefix, args = Path(sys.argv[1]), sys.argv[2:]
    fail = None
    if args and args[0].startswith("--fail="):
        fail_rank, fail_step, fail_mode = args.pop(0).removeprefix("--fail=").split(":")
        fail = (int(fail_rank), int(fail_step), fail_mode)
    rank = mx.distributed.init().rank()
    record = {"steps": [], "eval": []}
    log_step, log_evaluation = RunLogger.train_step, RunLogger.evaluation

    def train_step(self, metrics, step, peak_memory_gib):
        record["steps"].append({"step": step, **metrics})
        print(f"step {step}", flush=True)
        if fail is not None and fail[:2] == (rank, step):
            if fail[2] == "exit":  # after the step: its last ring messages reach the peer before the socket closes
                time.sleep(1)
                os._exit(FAIL_EXIT_STATUS)
            time.sleep(3600)
        log_step(self, metrics, step, peak_memory_gib)

    def evaluation(self, metrics, step):
        record["eval"].append({"step": step, **metrics})
        log_evaluation(self, metrics, step)

    RunLogger.train_step, RunLogger.evaluation = train_step, evaluation
    sys.argv = ["trm-train", *args]
    cli.main()
    prefix.with_name(f"{prefix.name}.{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
