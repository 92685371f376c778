#!/usr/bin/env bash
# ctest check_deps: scripts/check-deps on a built tree passes with scripts/setup's package list
# and fails, naming the package, the file and the fix, when the list lacks a package the build
# used. Usage: check_deps_test.sh SOURCE_DIR BUILD_DIR
set -uo pipefail
src=$1
build=$2
fail=0
full="$("$src/scripts/setup" --print-packages)"

echo "--- with scripts/setup's list: must pass"
if ! "$src/scripts/check-deps" "$build"; then
  echo "FAILED: check-deps rejected the build with setup's own list"
  fail=1
fi

# without PKG: must exit 1 and name PKG, a file it owns and the line to add
expect_missing() {
  local pkg=$1 file_re=$2 out rc=0
  echo "--- without $pkg: must fail and name it"
  out="$(LOWBIT_CHECK_DEPS_PACKAGES="$(tr ' ' '\n' <<<"$full" | grep -vx "$pkg" | tr '\n' ' ')" \
    "$src/scripts/check-deps" "$build" 2>&1)" || rc=$?
  echo "$out"
  if ((rc != 1)); then
    echo "FAILED: check-deps without $pkg exited $rc, expected 1"
    fail=1
  fi
  if ! grep -Eq "$file_re belongs to the Debian package '$pkg'" <<<"$out"; then
    echo "FAILED: the error does not name $pkg and a file matching $file_re"
    fail=1
  fi
  if ! grep -Fq "REQUIRED+=($pkg)" <<<"$out"; then
    echo "FAILED: the error does not say the line to add for $pkg"
    fail=1
  fi
}
grep -qw ocl-icd-opencl-dev <<<"$full" || { echo "FAILED: setup does not list ocl-icd-opencl-dev"; fail=1; }
expect_missing ocl-icd-opencl-dev '/usr/lib/x86_64-linux-gnu/libOpenCL\.so'
expect_missing libdnnl-dev '/usr/(include/(dnnl|oneapi)|lib/x86_64-linux-gnu/(libdnnl|cmake/dnnl))[^ ]*'
exit $fail
