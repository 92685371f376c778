# shellcheck shell=bash
# Sourced by the scripts in this folder (not run on its own): strict mode, "==> step" banners,
# an exit trap that names the step that failed, and phase timings.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   step "building"; ...            # prints "==> building"
#   timed "release build" ninja -C build -j2
#   print_timings                   # one line per timed phase

set -euo pipefail

LOWBIT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOWBIT_SCRIPT="$(basename "$0")"
LOWBIT_STEP="starting"
LOWBIT_TIMINGS=()
LOWBIT_T0=$SECONDS

step() {
  LOWBIT_STEP="$*"
  echo "==> $*"
}

die() {
  echo "error: $LOWBIT_SCRIPT: $*" >&2
  exit 1
}

# "83s" -> "1m23s"
fmt_seconds() {
  local s=$1
  if ((s >= 60)); then printf '%dm%02ds' $((s / 60)) $((s % 60)); else printf '%ds' "$s"; fi
}

# timed NAME CMD...: runs CMD as a step named NAME and records how long it took; returns CMD's
# exit code. (CMD runs on the left of `||`, where bash ignores `set -e`: a function passed as
# CMD must check its own commands.)
timed() {
  local name=$1 t0=$SECONDS rc=0 note=""
  shift
  step "$name"
  "$@" || rc=$?
  if ((rc != 0)); then note="  (failed, exit $rc)"; fi
  LOWBIT_TIMINGS+=("$(printf '%-40s %7s%s' "$name" "$(fmt_seconds $((SECONDS - t0)))" "$note")")
  return $rc
}

print_timings() {
  ((${#LOWBIT_TIMINGS[@]})) || return 0
  echo "==> timings ($LOWBIT_SCRIPT)"
  local line
  for line in "${LOWBIT_TIMINGS[@]}"; do echo "    $line"; done
  printf '    %-40s %7s\n' "total" "$(fmt_seconds $((SECONDS - LOWBIT_T0)))"
}

lowbit_on_exit() {
  local rc=$?
  if ((rc != 0)); then
    print_timings >&2
    echo "error: $LOWBIT_SCRIPT failed (exit $rc) in step: $LOWBIT_STEP" >&2
  fi
}
trap lowbit_on_exit EXIT

# configure_tree DIR BUILD_TYPE [CMAKE ARGS...]: the one place that configures a build tree, so
# scripts/demo and scripts/test share build/ without reconfiguring it back and forth.
# Warnings are errors (as in CI) unless LOWBIT_WERROR=OFF is set in the environment.
configure_tree() {
  local dir=$1 type=$2
  shift 2
  cmake -S "$LOWBIT_ROOT" -B "$LOWBIT_ROOT/$dir" -G Ninja -DCMAKE_BUILD_TYPE="$type" \
    -DLOWBIT_WERROR="${LOWBIT_WERROR:-ON}" "$@"
}

cd "$LOWBIT_ROOT"
