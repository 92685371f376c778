#!/usr/bin/env bash
# Documentation that points at nothing (issue 14, item 13): every repository path that the
# README, docs/, headers, sources and examples mention must exist, and none may send a reader
# outside the repository for a spec (../shared/docs: the copies are in docs/spec/). The golden
# vectors and the MNIST split may be named in ../shared (the tests read them there).
#   tests/scripts/docs_check.sh [REPO_ROOT]
set -euo pipefail
ROOT="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
cd "$ROOT"
fail=0
files=$(find README.md docs include src examples tests bench scripts tools fuzz -type f \
  \( -name '*.md' -o -name '*.h' -o -name '*.cc' -o -name '*.inc' -o -name '*.mjs' -o -path 'scripts/*' \) \
  -not -path 'docs/spec/*' -not -path '*/fixtures/*' 2>/dev/null | sort)
[[ -n $files ]] || { echo "docs_check: no files found under $ROOT (not a git checkout?)" >&2; exit 1; }
# 1. Specs outside the repository.
if grep -n 'shared/docs' $files; then
  echo "docs_check: the lines above point at ../shared/docs; the specs are in docs/spec/" >&2
  fail=1
fi
# 2. Repository paths that do not exist (a path is a top-level folder of the repository and a
#    file name with an extension; globs and placeholders such as <name> are skipped).
dirs='docs|src|include|examples|tests|scripts|tools|bench|cmake|fuzz'
while IFS=: read -r file line path; do
  path="${path%.}"
  [[ $path == *'*'* || $path == *'<'* ]] && continue
  if [[ ! -e $path ]]; then
    echo "$file:$line: names $path, which does not exist" >&2
    fail=1
  fi
done < <(grep -n -o -P "(^|[^A-Za-z0-9_./-])($dirs)/[A-Za-z0-9_./<>*-]+\.(md|h|cc|inc|sh|mjs|txt|cmake|in)(?![A-Za-z0-9_])" $files |
  sed -E "s/^([^:]+:[0-9]+:)[^a-z]?/\1/")
# 3. Relative markdown links in docs/ and the README.
for md in README.md docs/*.md; do
  dir=$(dirname "$md")
  while IFS= read -r target; do
    target="${target%%#*}"
    [[ -z $target || $target == http* || $target == mailto:* || $target == *' '* ]] && continue
    if [[ ! -e "$dir/$target" ]]; then
      echo "$md: links to $target, which does not exist" >&2
      fail=1
    fi
  done < <(grep -o -E '\]\([^)]+\)' "$md" | sed -E 's/^\]\((.*)\)$/\1/')
done
((fail == 0)) && echo "docs_check: ok: every path named in $(echo "$files" | wc -l) files exists"
exit $fail
