#!/usr/bin/env bash
# ctest install_package: `cmake --install BUILD_DIR --prefix TMP/prefix`, then a project outside
# the tree (tests/install/consumer) finds it with find_package(lowbit), builds against
# lowbit::lowbit and runs. Fails if anything the installed package needs is missing (a header,
# the library, a dependency not found by lowbitConfig.cmake, a link error) or the program's
# results are wrong.
#   tests/install/run.sh BUILD_DIR WORK_DIR
set -euo pipefail
build=$1
work=$2
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rm -rf "$work"
mkdir -p "$work"
cmake --install "$build" --prefix "$work/prefix"
test -f "$work/prefix/include/lowbit/tensor.h"
test -f "$work/prefix/lib/cmake/lowbit/lowbitConfig.cmake"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$here/consumer" -B "$work/consumer" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$work/prefix"
cmake --build "$work/consumer"
"$work/consumer/consumer"
