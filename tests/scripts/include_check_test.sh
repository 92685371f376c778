#!/usr/bin/env bash
# The include directions of docs/design.md (issue 12): the repository follows them, and the
# check fails, naming the file and the rule, on an upward include (a kernel including an op
# header) planted in a copy.
#   tests/scripts/include_check_test.sh REPO_ROOT
set -euo pipefail
ROOT="$1"
node "$ROOT/tools/include_check.mjs" "$ROOT"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/docs"
cp -r "$ROOT/src" "$ROOT/include" "$tmp/"
cp "$ROOT/docs/design.md" "$tmp/docs/"
sed -i '0,/#include/s//#include "lowbit\/op.h"\n#include/' "$tmp/src/kernels/reference/matmul.cc"
if out=$(node "$ROOT/tools/include_check.mjs" "$tmp" 2>&1); then
  echo "include_check_test: an upward include (src/kernels -> include/lowbit/op.h) passed:" >&2
  echo "$out" >&2
  exit 1
fi
grep -q 'src/kernels/reference/matmul.cc:1: includes include/lowbit/op.h' <<<"$out" || {
  echo "include_check_test: the failure does not name the planted include:" >&2
  echo "$out" >&2
  exit 1
}
echo "include_check_test: ok (the planted upward include was refused)"
