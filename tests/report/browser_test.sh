#!/usr/bin/env bash
# The quantization report in a real browser (issue 16): quant_report writes a report, headless
# Chromium renders it to a screenshot and dumps its DOM after load; the test checks that every
# section holds the plots it announces (the page's own check writes "plots-ok" into #dom-check),
# that no script error or console message was logged, and that the PNG is a real picture. It
# then plants a broken copy (one plot removed, a script error) and checks that both are caught.
#   tests/report/browser_test.sh QUANT_REPORT_BIN DATA_DIR OUT_DIR
# Skips (exit 77) when no Chromium is installed, except in CI (CI set), where that fails.
set -euo pipefail
BIN="$1" DATA="$2" OUT="$3"
fail() { echo "browser_test: FAIL: $*" >&2; exit 1; }

CHROMIUM=""
for c in chromium chromium-browser google-chrome; do
  if command -v "$c" >/dev/null; then CHROMIUM=$(command -v "$c"); break; fi
done
if [[ -z "$CHROMIUM" ]]; then
  [[ -n "${CI:-}" ]] && fail "no chromium on PATH in CI: scripts/setup installs Debian's chromium"
  echo "browser_test: SKIPPED: no chromium on PATH (apt-get install chromium, or scripts/setup)"
  exit 77
fi

mkdir -p "$OUT"
rm -f "$OUT"/report.html "$OUT"/report.png "$OUT"/dom.html "$OUT"/chromium.log
"$BIN" --data "$DATA" --out "$OUT/report.html" --images 1024 >/dev/null

# Runs chromium headless on file $1 with the extra flags after it; its log goes to $OUT/chromium.log.
chrome() {
  local file="$1"
  shift
  # --no-sandbox: the sandbox refuses to run as root (containers, CI).
  timeout 120 "$CHROMIUM" --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
    --no-first-run --enable-logging=stderr --v=0 --user-data-dir="$OUT/profile" "$@" \
    "file://$(realpath "$file")" 2>>"$OUT/chromium.log"
}

# 1. The DOM after load.
chrome "$OUT/report.html" --dump-dom >"$OUT/dom.html"
grep -q '<pre id="dom-check">plots-ok ' "$OUT/dom.html" ||
  fail "the page's plot check did not pass: $(grep -o '<pre id="dom-check">[^<]*' "$OUT/dom.html")"
grep -q 'data-js-error="' "$OUT/dom.html" && fail "a script error: $(grep -o 'data-js-error="[^"]*"' "$OUT/dom.html")"
if grep -q ':CONSOLE' "$OUT/chromium.log"; then
  grep ':CONSOLE' "$OUT/chromium.log" >&2
  fail "console messages on load (above)"
fi
# Plots per section, counted here too: at least what the demo model has (2 curves, 4 weight
# quantizers, 5 activation quantizers, the SQNR and size bar charts) and the scale table.
plots_in() {  # the <svg class="plot ..."> elements between <section id="$1"> and its end
  awk -v id="$1" 'index($0, "<section id=\"" id "\"") { on = 1 } on { print } on && /<\/section>/ { exit }' \
    <(sed 's/<section /\n<section /g; s/<\/section>/<\/section>\n/g' "$OUT/dom.html") |
    grep -o '<svg class="plot' | wc -l
}
for want in curves:2 weights:4 activations:5 sqnr:1 size:1; do
  id=${want%:*} min=${want#*:}
  n=$(plots_in "$id")
  ((n >= min)) || fail "section '$id' has $n plots, want at least $min"
  echo "browser_test: section $id: $n plots"
done
grep -q '<table class="data" id="scale-table">' "$OUT/dom.html" || fail "no scale table"
n_rows=$(grep -o '<tr><td class="op">' "$OUT/dom.html" | wc -l)
((n_rows >= 5)) || fail "the scale table has $n_rows ops"

# 2. The screenshot: a PNG of the window's size, not blank (a blank 1280x2400 page compresses to
# a few KB; the report's is hundreds).
chrome "$OUT/report.html" --screenshot="$OUT/report.png" --window-size=1280,2400 >/dev/null
[[ -s "$OUT/report.png" ]] || fail "no screenshot written"
[[ "$(head -c 8 "$OUT/report.png" | od -An -tx1 | tr -d ' \n')" == 89504e470d0a1a0a ]] ||
  fail "the screenshot is not a PNG"
size=$(stat -c %s "$OUT/report.png")
dims=$(od -An -tu1 -j16 -N8 "$OUT/report.png" | awk '{ print $1*16777216+$2*65536+$3*256+$4 "x" $5*16777216+$6*65536+$7*256+$8 }')
[[ "$dims" == 1280x2400 ]] || fail "screenshot is $dims, want 1280x2400"
((size > 100000)) || fail "screenshot is only $size bytes: blank?"
echo "browser_test: screenshot $OUT/report.png ($dims, $size bytes)"

# 3. The checks can fail: a copy with one plot fewer and a script error is refused.
sed '0,/<svg class="plot weights"/s//<svg class="removed"/' "$OUT/report.html" |
  sed 's#</main>#<script>no_such_function();</script></main>#' >"$OUT/broken.html"
: >"$OUT/chromium.log"
chrome "$OUT/broken.html" --dump-dom >"$OUT/broken_dom.html"
grep -q '<pre id="dom-check">plots-mismatch .*weights=' "$OUT/broken_dom.html" ||
  fail "a missing plot was not noticed: $(grep -o '<pre id="dom-check">[^<]*' "$OUT/broken_dom.html")"
grep -q 'data-js-error="' "$OUT/broken_dom.html" || fail "a script error was not recorded in the DOM"
grep -q ':CONSOLE.*no_such_function' "$OUT/chromium.log" || fail "a script error was not logged"
echo "browser_test: ok (and a broken copy was refused)"
