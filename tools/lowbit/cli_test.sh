#!/usr/bin/env bash
# End-to-end test of the `lowbit` command line (ctest lowbit_cli_chain; tools/CMakeLists.txt):
# train -> quantize -> convert -> eval -> inspect -> bench -> graph -> report on the small MNIST split,
# asserting on the --json output and the exit codes, then bad flags (2) and bad files (1).
#   cli_test.sh LOWBIT_BINARY EXAMPLE_CONFIG MNIST_DIR WORK_DIR
set -euo pipefail
LOWBIT=$1 CONFIG=$2 DATA=$3 WORK=$4
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"

fail() { echo "FAIL: $*" >&2; exit 1; }
# check FILE EXPR: evaluates a JavaScript expression on the JSON value j in FILE (node is in
# scripts/setup's list; python is not).
check() {
  node -e "const j = JSON.parse(require('fs').readFileSync('$1', 'utf8')); process.exit(($2) ? 0 : 1)" ||
    fail "$1: expected $2; got: $(cat "$1")"
}
# expect_rc RC NEEDLE CMD...: runs CMD, expects exit code RC and NEEDLE in its stderr.
expect_rc() {
  local want=$1 needle=$2 rc=0
  shift 2
  "$@" >out.txt 2>err.txt || rc=$?
  [[ $rc == "$want" ]] || fail "'$*' exited $rc, expected $want; stderr: $(cat err.txt)"
  grep -qF -- "$needle" err.txt || fail "'$*': stderr lacks '$needle': $(cat err.txt)"
}

echo "== train"
"$LOWBIT" train "$CONFIG" -o float.lbm --data "$DATA" --limit 2000 --epochs 2 --json \
  --history float.csv >train.json
check train.json "j.phase === 'float' && j.history.loss.length === 2"
check train.json "j.history.val_accuracy.at(-1) > 0.5"
check float.lbm.history.json "j.phase === 'float' && j.epochs.join() === '0,1'"
head -1 float.csv | grep -qx "epoch,accuracy,loss,val_accuracy,val_loss" || fail "float.csv header"

echo "== quantize"
echo '{"overrides": {"conv2d": {"weight_bits": 8}}, "quant_delay": 0}' >qat.json
"$LOWBIT" quantize float.lbm --scheme w4a8 --config qat.json --data "$DATA" --limit 1000 \
  -o qat.lbm --json >quantize.json
check quantize.json "j.scheme === 'w4a8' && j.history.loss.length === 1"
check qat.lbm.history.json "j.phase === 'qat'"
"$LOWBIT" quantize float.lbm --scheme w8a8 --calibrate-only --data "$DATA" --limit 500 \
  -o calibrated.lbm --json >calibrate.json
check calibrate.json "j.calibrated_batches === 16"

echo "== convert"
"$LOWBIT" convert qat.lbm -o int.lbi --json >convert.json
check convert.json "j.packed_bytes < j.int8_unpacked_bytes && j.int8_unpacked_bytes < j.float_weight_bytes"
"$LOWBIT" convert calibrated.lbm -o calibrated_u8.lbi --uint8 --single-rounding -q

echo "== eval"
"$LOWBIT" eval int.lbi --data "$DATA" --against qat.lbm --json >eval.json
check eval.json "j.samples === 2000 && j.accuracy > 0.6 && j.agreement > 0.97"
"$LOWBIT" eval float.lbm --data "$DATA" --limit 500 --json >eval_float.json
check eval_float.json "j.accuracy > 0.6 && j.loss > 0 && j.loss < 2"
"$LOWBIT" eval calibrated_u8.lbi --data "$DATA" --against float.lbm --json >eval_u8.json
check eval_u8.json "j.agreement > 0.95"
# The same test images named as IDX files: the same accuracy as through the directory.
"$LOWBIT" eval int.lbi --data "$DATA/test-images-idx3-ubyte" \
  --labels "$DATA/test-labels-idx1-ubyte" --json >eval_idx.json
node -e "const r = f => JSON.parse(require('fs').readFileSync(f, 'utf8')).accuracy;
  process.exit(r('eval_idx.json') === r('eval.json') ? 0 : 1)" || fail "IDX files vs directory"

echo "== inspect"
"$LOWBIT" inspect int.lbi >inspect.txt
grep -q "qconv2d  conv2d+conv2d_quant" inspect.txt || fail "inspect table: $(cat inspect.txt)"
"$LOWBIT" inspect int.lbi --json >inspect.json
check inspect.json "Array.isArray(j) && j.some(o => o.op === 'qfully_connected')"
"$LOWBIT" inspect qat.lbm >summary.txt
grep -q "weight quant kernel: tf 4-bit" summary.txt || fail "QAT summary: $(cat summary.txt)"
"$LOWBIT" inspect qat.lbm --json >summary.json
check summary.json "j.layers.some(l => l.class_name === 'FakeQuant' && l.quantizers.includes('range'))"

echo "== bench"
"$LOWBIT" bench int.lbi --batch 1,64 --threads 1,2 --reps 3 --json >bench.json
check bench.json "j.results.length === 4 && j.results.every(r => r.images_per_s > 0)"
"$LOWBIT" bench qat.lbm --batch 8 --reps 2 --data "$DATA" --limit 8 --json >bench_qat.json
check bench_qat.json "j.results[0].batch === 8"

echo "== graph"
"$LOWBIT" graph qat.lbm -o graph.dot --json >graph.json
check graph.json "j.format === 'dot' && j.bytes > 0"
grep -q "digraph" graph.dot || fail "graph.dot is not DOT"
if command -v dot >/dev/null; then
  "$LOWBIT" graph float.lbm -o graph.svg -q
  grep -q "<svg" graph.svg || fail "graph.svg is not SVG"
else
  expect_rc 1 "needs Graphviz's 'dot' program" "$LOWBIT" graph float.lbm -o graph.svg
fi

echo "== report"
"$LOWBIT" report qat.lbm --against float.lbm --data "$DATA" --limit 128 -o report.html --json >report.json
check report.json "j.samples === 128 && j.bytes > 10000 && j.histories.join() === 'float,qat'"
grep -q "<svg" report.html || fail "report.html has no SVG plot"
grep -q "SQNR" report.html || fail "report.html has no SQNR section"
if grep -qE '<script[^>]+src=|<link[^>]+href="https?:' report.html; then fail "report.html loads something"; fi
expect_rc 1 "integer model" "$LOWBIT" report int.lbi --data "$DATA" -o r.html
expect_rc 1 "no-such-history.json" "$LOWBIT" report qat.lbm --data "$DATA" -o r.html \
  --history no-such-history.json

echo "== usage errors (exit 2)"
expect_rc 2 "--bogus" "$LOWBIT" train "$CONFIG" -o x.lbm --data "$DATA" --bogus
expect_rc 2 "--output is required" "$LOWBIT" convert qat.lbm
expect_rc 2 "A subcommand is required" "$LOWBIT"
expect_rc 2 "--batch" "$LOWBIT" bench int.lbi --batch 0
expect_rc 2 "--split" "$LOWBIT" eval int.lbi --data "$DATA" --split val

echo "== runtime errors (exit 1, naming the file or key)"
expect_rc 1 "lowbit eval: " "$LOWBIT" eval no-such.lbi --data "$DATA"
grep -qF "no-such.lbi" err.txt || fail "missing model: $(cat err.txt)"
expect_rc 1 "no-such-dir" "$LOWBIT" eval int.lbi --data no-such-dir/images.idx --labels l.idx
expect_rc 1 "--labels" "$LOWBIT" eval int.lbi --data "$DATA/test-images-idx3-ubyte"
echo '{"model": ' >broken.json
expect_rc 1 "'broken.json' is not valid JSON" "$LOWBIT" train broken.json -o x.lbm --data "$DATA"
echo '{"model": {"class_name": "Sequential", "config": {"layers": []}}, "fitt": {}}' >typo.json
expect_rc 1 "unknown key 'fitt'" "$LOWBIT" train typo.json -o x.lbm --data "$DATA"
echo '{"overrides": {"conv2d": {"weight_bitz": 4}}}' >qtypo.json
expect_rc 1 "'qtypo.json': quantize config: unknown key 'overrides.conv2d.weight_bitz'" \
  "$LOWBIT" quantize float.lbm --scheme w4a8 --config qtypo.json --data "$DATA" -o y.lbm
expect_rc 1 "w9a9" "$LOWBIT" quantize float.lbm --scheme w9a9 --data "$DATA" -o y.lbm
expect_rc 1 "integer model" "$LOWBIT" graph int.lbi -o g.dot
"$LOWBIT" train --help | grep -q "Example:" || fail "train --help has no example"
echo "PASS"
