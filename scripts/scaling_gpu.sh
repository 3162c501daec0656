#!/usr/bin/env bash
# Data-parallel scaling of trm-train's step: 1 process, then 2 ranks under mlx.launch, each bounded by `timeout`
# and by the tool's own --max-seconds (which still writes the JSON line), then a one-line efficiency summary. For
# one short attempt on a 2-GPU machine (python3 with MLX, no venv):
#
#     PYTHONPATH=/tmp/site:$PWD bash scripts/scaling_gpu.sh            # results in $OUT (else ./scaling_out)
#
# The same logic on a CPU, with the small preset and the ring backend:
#
#     SCALING_PRESET=demo SCALING_BACKEND=ring SCALING_ROWS=8 PYTHON=.venv/bin/python bash scripts/scaling_gpu.sh
#
# Each run's limit: SCALING_ONE_S / SCALING_TWO_S seconds (default 200 + 240: on a fresh GPU machine the first step
# compiles the whole ARC step); the tool stops queueing steps SCALING_MARGIN_S seconds before it.
set -u
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PRESET=${SCALING_PRESET:-arc1}
BACKEND=${SCALING_BACKEND:-nccl}
ROWS=${SCALING_ROWS:-96}  # the rows of docs/BENCHMARKS.md's 2-GPU figures; 192 fits one GPU with block recomputation
WARMUP=${SCALING_WARMUP:-5}
STEPS=${SCALING_STEPS:-50}
ONE_S=${SCALING_ONE_S:-200}
TWO_S=${SCALING_TWO_S:-240}
MARGIN_S=${SCALING_MARGIN_S:-30}
LAUNCH_ARGS=${SCALING_LAUNCH_ARGS:-}  # more mlx.launch arguments, e.g. --starting-port for the ring
RESULTS=${OUT:-scaling_out}

export NCCL_NVLS_ENABLE=0  # NVLink multicast off on shared hosts
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
mkdir -p "$RESULTS"
REPORT="$RESULTS/scaling.jsonl"
rm -f "$REPORT"
# mlx.launch's entry point, which need not be on PATH where MLX is only on PYTHONPATH.
LAUNCHER=(-c 'from mlx._distributed_utils.launch import main; main()')
TOOL=(-m trm_mlx.training.throughput --preset "$PRESET" --rows-per-rank "$ROWS" --warmup "$WARMUP" --steps "$STEPS"
      --out "$REPORT")

"$PYTHON" -c 'import mlx.core as mx; print("mlx", mx.__version__, "| default device", mx.default_device())'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader

echo "== 1 process, $PRESET, $ROWS rows (limit $ONE_S s)"
timeout -k 10 "$ONE_S" "$PYTHON" "${TOOL[@]}" --ranks 1 --max-seconds $((ONE_S - MARGIN_S)) 2>&1 |
    tee "$RESULTS/one.log"
echo "exit status ${PIPESTATUS[0]}"

echo "== 2 ranks over $BACKEND, $PRESET, $ROWS rows each (limit $TWO_S s)"
# shellcheck disable=SC2086  # LAUNCH_ARGS is a list of words
timeout -k 10 "$TWO_S" "$PYTHON" "${LAUNCHER[@]}" -n 2 --backend "$BACKEND" $LAUNCH_ARGS -- \
    "$PYTHON" "${TOOL[@]}" --ranks 2 --max-seconds $((TWO_S - MARGIN_S)) 2>&1 | tee "$RESULTS/two.log"
echo "exit status ${PIPESTATUS[0]} (mlx.launch reports 0 even when a rank failed: see the log)"

if [[ -s "$REPORT" ]]; then
    "$PYTHON" -m trm_mlx.training.throughput --summarize "$REPORT" | tee "$RESULTS/summary.txt"
else
    echo "scaling: no results (see $RESULTS/one.log and $RESULTS/two.log)" | tee "$RESULTS/summary.txt"
fi
