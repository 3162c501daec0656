#!/usr/bin/env bash
# One lease of a trm-train run relayed over machines held for a short time (docs/TRAINING.md, "Relaying a run").
#
#   scripts/relay_lease.sh MINUTES RUN_DIR [trm-train overrides ...]
#
# Trains for MINUTES, continuing the run in RUN_DIR: from the training state there (a later lease on the same
# machine: exact, carry included), else from the parts in $RELAY_IN (the first lease on a new machine), else from
# scratch. With $RELAY_OUT set it packs the state into $RELAY_OUT/step_N as parts of $RELAY_PART_SIZE (default
# 15MiB), without the ACT carry unless RELAY_CARRY=1, and keeps the newest two such folders. With $RELAY_EVERY=M it
# trains in segments of M minutes and packs after each, so that a machine lost during the lease costs at most one
# segment. Commands run as `$PYTHON -m ...` (default python3), so the package need not be installed, only importable.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 MINUTES RUN_DIR [trm-train overrides ...]" >&2; exit 2; }
minutes=$1; run_dir=$2; shift 2
every=${RELAY_EVERY:-$minutes}
python=${PYTHON:-python3}
relay() { "$python" -m trm_mlx.training.relay "$@"; }
newest_step() { { ls -d "$run_dir"/train_state_step_* 2>/dev/null || true; } | sed 's/.*_step_//' | sort -n | tail -1; }
calc() { awk "BEGIN { print $1 }"; }

pack_into_out() {
  local step=$1 folder="$RELAY_OUT/step_$1" carry=(--no-carry)
  [ -d "$folder" ] && return
  if [ "${RELAY_CARRY:-0}" = 1 ]; then carry=(); fi
  rm -rf "$RELAY_OUT/.packing"
  relay pack "$run_dir" "$RELAY_OUT/.packing" --part-size "${RELAY_PART_SIZE:-15MiB}" "${carry[@]}"
  mv "$RELAY_OUT/.packing" "$folder"
  ls -d "$RELAY_OUT"/step_* | sort -V | head -n -2 | xargs -r rm -rf
  echo "packed step $step into $folder"
}

if [ -z "$(newest_step)" ] && [ -n "${RELAY_IN:-}" ]; then
  relay unpack "$RELAY_IN" "$run_dir"
fi
left=$minutes
# Segments until the minutes are spent (up to float rounding) or a segment makes no progress (the run has ended).
while [ "$(calc "($left > 1e-6 * $minutes)")" = 1 ]; do
  segment=$(calc "($every < $left) ? $every : $left")
  before=$(newest_step)
  resume=()
  if [ -n "$before" ]; then resume=("resume=$run_dir"); fi
  "$python" -m trm_mlx.training.cli "$@" "+checkpoint_path=$run_dir" "max_minutes=$segment" "${resume[@]}"
  after=$(newest_step)
  if [ -n "${RELAY_OUT:-}" ]; then pack_into_out "$after"; fi
  left=$(calc "$left - $segment")
  [ "$after" != "$before" ] || break
done
