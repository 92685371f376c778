#!/usr/bin/env bash
# Runs the int8 inference peers (PyTorch eager int8, ONNX Runtime QDQ) and writes every result
# line into one .jsonl. Installs nothing: it checks what it needs and says how to get it.
#
#   bash run_all.sh                         # threads 1 and 2, results/int8_peers_<UTC stamp>.jsonl
#   THREADS=1 REPS=15 WAIT_IDLE=900 bash run_all.sh
#
# With lowbit's bench/int8_infer_bench built (LOWBIT_BENCH, default ../../build/bench/
# int8_infer_bench; LOWBIT=0 skips it), lowbit's float and integer bench CNN run in the same
# steps, and the table gets lowbit's ratios to each peer (side by side, one machine, one run).
#
# Environment: THREADS ("1 2"), REPS (9), ENGINES (onednn; "onednn,qnnpack" adds QNNPACK),
# WAIT_IDLE (seconds to wait for an idle machine before each step, default 300; 0: don't wait),
# RESULTS (the .jsonl path), FORCE_EXPORT=1 (re-export the ONNX models), MODELS (cnn,mbv2).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
PY=/usr/bin/python3
THREADS="${THREADS:-1 2}"
REPS="${REPS:-9}"
ENGINES="${ENGINES:-onednn}"
MODELS="${MODELS:-cnn,mbv2}"
WAIT_IDLE="${WAIT_IDLE:-300}"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS="${RESULTS:-$HERE/results/int8_peers_$STAMP.jsonl}"

fail() { echo "run_all.sh: $*" >&2; exit 1; }

# ---- prerequisites (nothing is installed here) ----
[ -x "$PY" ] || fail "$PY not found (apt-get install -y python3)"
"$PY" -c 'import torch, torchvision' 2>/dev/null ||
  fail "PyTorch/torchvision missing for $PY: apt-get install -y python3-torch python3-torchvision"
"$PY" - <<'EOF' || fail "this PyTorch has no onednn quantized engine (needed for the int8 models)"
import torch, sys
sys.exit(0 if "onednn" in torch.backends.quantized.supported_engines else 1)
EOF
command -v node >/dev/null || fail "node not found (apt-get install -y nodejs npm)"
node -e 'require.resolve("onnxruntime-node")' 2>/dev/null ||
  fail "onnxruntime-node missing: (cd $HERE && npm install --ignore-scripts)"
DATA="${MNIST_IDX_DIR:-$HERE/../../../shared/data}"
[ -f "$DATA/test-images-idx3-ubyte" ] || fail "MNIST IDX files not found in $DATA (set MNIST_IDX_DIR)"
[ -f "${PEERS_DIR:-$HERE/../../../shared/peers}/models.py" ] ||
  fail "shared peers (models.py, common.py) not found in ${PEERS_DIR:-$HERE/../../../shared/peers} (set PEERS_DIR)"
# Debian's torch links libblas.so.3: with the reference BLAS (libblas3) the float models are ~10x slower.
BLAS="$(readlink -f /usr/lib/x86_64-linux-gnu/libblas.so.3 2>/dev/null || true)"
case "$BLAS" in
  *openblas*) ;;
  *) [ "${ALLOW_REFERENCE_BLAS:-0}" = 1 ] ||
       fail "libblas.so.3 is '$BLAS', not OpenBLAS: PyTorch float would be measured on the reference BLAS. apt-get install -y libopenblas0-pthread (or ALLOW_REFERENCE_BLAS=1)";;
esac

# the peer at its best (see ../../../shared/peers/README.md): glibc malloc keeps its memory
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-33554432}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-17179869184}"
export MALLOC_TOP_PAD_="${MALLOC_TOP_PAD_:-268435456}"
export MNIST_IDX_DIR="$DATA"

mkdir -p "$(dirname "$RESULTS")"
export PEER_RESULTS_DIR="$(dirname "$RESULTS")"
OUT="$(basename "$RESULTS" .jsonl)"
state() { "$PY" machine_state.py --step "$1" --wait "$WAIT_IDLE" | tee -a "$RESULTS"; }
# runs a step and records the CPU time other processes took while it ran
during() { local step="$1"; shift; "$PY" machine_state.py --step "$step" --run -- "$@" | tee -a "$RESULTS"; }
echo "run_all.sh: results -> $RESULTS" >&2
grep -m1 'cpu family' /proc/cpuinfo >&2 || true

LOWBIT_BENCH="${LOWBIT_BENCH:-$HERE/../../build/bench/int8_infer_bench}"
if [ "${LOWBIT:-1}" = 1 ]; then
  [ -x "$LOWBIT_BENCH" ] ||
    fail "lowbit's bench not found at $LOWBIT_BENCH: build it (cmake --build build --target int8_infer_bench), set LOWBIT_BENCH, or LOWBIT=0 to run the peers only"
fi

# ---- models ----
if [ "${FORCE_EXPORT:-0}" = 1 ] || [ ! -f models/meta.json ] || [ ! -f models/mbv2_u8s8_qdq.onnx ] || [ ! -f models/cnn_u8s8_qdq.onnx ]; then
  # 1 thread: torch.onnx.export of the quantized MobileNetV2 fails with 2 threads (a oneDNN reorder error)
  OMP_NUM_THREADS=1 "$PY" export_onnx.py --try-torch-qdq 2> >(grep -v -i warn >&2) | tee -a "$RESULTS"
fi
node ort_check.mjs | tee -a "$RESULTS"

# ---- benchmarks: 1 thread first (2-thread figures swing more on this kind of machine) ----
for t in $THREADS; do
  state "torch_int8 threads=$t"
  during "torch_int8 threads=$t" "$PY" torch_int8.py --threads "$t" --reps "$REPS" --engines "$ENGINES" --models "$MODELS" --out "$OUT"
  state "ort_bench threads=$t"
  during "ort_bench threads=$t" node ort_bench.mjs --threads "$t" --reps "$REPS" --models "$MODELS" --out "$OUT"
  if [ "${LOWBIT:-1}" = 1 ]; then
    state "lowbit_int8 threads=$t"
    # the lines go to stdout and (--out) into the results file
    during "lowbit_int8 threads=$t" "$LOWBIT_BENCH" --threads "$t" --reps "$REPS" --models "$MODELS" --data "$DATA" --out "$RESULTS" >/dev/null
  fi
done
state "end"
echo >&2
"$PY" summarize.py "$RESULTS"
