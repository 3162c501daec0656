#!/usr/bin/env bash
# One lease of a trm-train run relayed over machines held for a short time (docs/TRAINING.md, "Relaying a run").
#
#   scripts/relay_lease.sh MINUTES RUN_DIR [trm-train overrides ...]
#
# Trains for MINUTES, continuing the run in RUN_DIR: from the training state there (a later lease on the same
# machine: exact, carry included), else from the parts in $RELAY_IN (the first lease on a new machine), else from
# scratch. With $RELAY_OUT set it then packs the state there as parts of $RELAY_PART_SIZE (default 15MiB), without
# the ACT carry unless RELAY_CARRY=1. Commands run as `$PYTHON -m ...` (default python3), so the package need not
# be installed, only importable.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 MINUTES RUN_DIR [trm-train overrides ...]" >&2; exit 2; }
minutes=$1; run_dir=$2; shift 2
python=${PYTHON:-python3}
relay() { "$python" -m trm_mlx.training.relay "$@"; }

if ! ls -d "$run_dir"/train_state_step_* >/dev/null 2>&1 && [ -n "${RELAY_IN:-}" ]; then
  relay unpack "$RELAY_IN" "$run_dir"
fi
resume=()
if ls -d "$run_dir"/train_state_step_* >/dev/null 2>&1; then resume=("resume=$run_dir"); fi
"$python" -m trm_mlx.training.cli "$@" "+checkpoint_path=$run_dir" "max_minutes=$minutes" "${resume[@]}"

if [ -n "${RELAY_OUT:-}" ]; then
  carry=(--no-carry)
  if [ "${RELAY_CARRY:-0}" = 1 ]; then carry=(); fi
  relay pack "$run_dir" "$RELAY_OUT" --part-size "${RELAY_PART_SIZE:-15MiB}" "${carry[@]}"
fi
