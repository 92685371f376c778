// ONNX Runtime peer (onnxruntime-node, CPU execution provider): float32 vs int8 QDQ inference of
// the models written by export_onnx.py, side by side in one process, rep by rep.
//
//   node ort_bench.mjs --threads 1 [--models cnn,mbv2] [--variants float32,u8s8,s8s8,s8s8_fused]
//
// Sessions: intraOpNumThreads = --threads, interOpNumThreads 1, sequential execution,
// graphOptimizationLevel 'all' (QDQ fusion into QLinearConv/QGemm/..., NCHWc/NHWC layouts).
// Variants:
//   float32          *_float.onnx
//   s8s8             *_int8_qdq.onnx (int8 activations and weights, as ORT's quantize_static writes by default)
//                    with ORT's x86-64 defaults: only Conv/MatMul groups fused (through an S8->U8 rewrite),
//                    Add/pool/Gemm run in float between DequantizeLinear and QuantizeLinear
//   s8s8_fused       the same model with session.qdqisint8allowed=1: every QDQ group fused into QLinear*
//                    ops with int8 activations (ort_check.mjs lists the kernels) -- slow kernels on x86-64
//   u8s8             *_u8s8_qdq.onnx (uint8 activations, int8 weights: ORT's recommended type on x86-64),
//                    defaults: every group fused (QLinearConv, QLinearAdd, QLinearGlobalAveragePool, QGemm)
// Measured after warm-up:
//   cnn  batch 256: images/s of back-to-back run() calls for >= --min-time s, per rep
//   cnn  batch 1  : latency of single awaited run() calls (µs), median of --lat-iters calls per rep
//   mbv2 batch 1  : latency (ms), median of --mbv2-iters calls per rep
//   identity      : the same batch-1 call on a one-node Identity model: the cost of run() itself here
// Each figure: median (min, max) over --reps reps. JSON lines on stdout, appended to <PEER_RESULTS_DIR>/<out>.jsonl.
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const ort = require('onnxruntime-node');

const HERE = path.dirname(new URL(import.meta.url).pathname);
const argv = process.argv.slice(2);
const opt = (k, d) => { const i = argv.indexOf(k); return i >= 0 ? argv[i + 1] : d; };
const threads = +opt('--threads', 1);
const models = opt('--models', 'cnn,mbv2').split(',');
const variantsWanted = opt('--variants', 'float32,u8s8,s8s8,s8s8_fused').split(',');
const reps = +opt('--reps', 9);
const minTime = +opt('--min-time', 0.5);
const latIters = +opt('--lat-iters', 400);
const mbv2Iters = +opt('--mbv2-iters', 40);
const dir = path.resolve(opt('--models-dir', process.env.PEER_INT8_MODELS || path.join(HERE, 'models')));
const outName = opt('--out', 'ort_int8');
const resultsDir = process.env.PEER_RESULTS_DIR || process.cwd();

function cpuInfo() {
  const t = fs.readFileSync('/proc/cpuinfo', 'utf8');
  const fam = /^cpu family\s*:\s*(\d+)/m.exec(t); const mod = /^model name\s*:\s*(.*)$/m.exec(t);
  return { cpu_family: fam ? +fam[1] : null, cpu_model: mod ? mod[1].trim() : '' };
}
const BASE = { peer: 'onnxruntime', onnxruntime: ort.env.versions?.common ?? '', threads, ...cpuInfo() };

const median = (a) => { const s = [...a].sort((x, y) => x - y); const n = s.length; return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2; };
const summarize = (v) => ({ median: median(v), min: Math.min(...v), max: Math.max(...v), n: v.length, values: v.map((x) => +x.toFixed(4)) });
function emit(rec) {
  const line = JSON.stringify({ ...rec, ...BASE });
  console.log(line);
  fs.mkdirSync(resultsDir, { recursive: true });
  fs.appendFileSync(path.join(resultsDir, outName + '.jsonl'), line + '\n');
}
const now = () => Number(process.hrtime.bigint()) / 1e9;

const I8 = { session: { qdqisint8allowed: '1' } };
const VARIANTS = {
  float32: (m) => [m + '_float.onnx', {}],
  s8s8: (m) => [m + '_int8_qdq.onnx', {}],
  s8s8_fused: (m) => [m + '_int8_qdq.onnx', I8],
  u8s8: (m) => [m + '_u8s8_qdq.onnx', {}],
};

async function session(file, extra) {
  const f = path.join(dir, file);
  if (!fs.existsSync(f)) throw new Error(`${f} missing: run export_onnx.py first`);
  return ort.InferenceSession.create(f, { intraOpNumThreads: threads, interOpNumThreads: 1, executionMode: 'sequential',
    graphOptimizationLevel: 'all', extra });
}

function input(shape, seed) {
  // deterministic pseudo-random input in [0, 1) (the CNN's input range), or real MNIST if given
  const n = shape.reduce((a, b) => a * b, 1); const a = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; a[i] = s / 4294967296; }
  return new ort.Tensor('float32', a, shape);
}
function mnistInput(n) {
  const f = path.join(dir, 'cnn_in.f32');  // the first 256 MNIST test images (written by export_onnx.py)
  if (!fs.existsSync(f)) return input([n, 1, 28, 28], 1);
  const b = fs.readFileSync(f); const all = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
  return new ort.Tensor('float32', all.slice(0, n * 784), [n, 1, 28, 28]);
}

async function throughput(s, feeds, batch) {
  const t0 = now(); let cnt = 0;
  for (;;) { await s.run(feeds); cnt++; const t = now() - t0; if (t >= minTime) return batch * cnt / t; }
}
async function latency(s, feeds, iters) {
  const ts = [];
  for (let i = 0; i < iters; i++) { const t0 = now(); await s.run(feeds); ts.push(now() - t0); }
  return median(ts);
}

async function variants(model) {
  const out = {};
  for (const v of variantsWanted) {
    if (!VARIANTS[v]) throw new Error('unknown variant ' + v);
    const [file, extra] = VARIANTS[v](model);
    out[v] = { s: await session(file, extra), file, extra };
  }
  return out;
}

async function benchCnn() {
  const vs = await variants('cnn');
  const id = await session('identity.onnx', {});
  const xb = { input: mnistInput(256) }, x1 = { input: mnistInput(1) };
  for (const v of Object.values(vs)) { for (let i = 0; i < 5; i++) await v.s.run(xb); for (let i = 0; i < 50; i++) await v.s.run(x1); }
  for (let i = 0; i < 200; i++) await id.run(x1);
  const thr = {}, lat = {}, idl = [];
  for (const k in vs) { thr[k] = []; lat[k] = []; }
  for (let r = 0; r < reps; r++) {
    for (const [k, v] of Object.entries(vs)) {
      thr[k].push(await throughput(v.s, xb, 256));
      lat[k].push(await latency(v.s, x1, latIters) * 1e6);
    }
    idl.push(await latency(id, x1, latIters) * 1e6);
  }
  for (const [k, v] of Object.entries(vs)) {
    const ex = k === 'float32' || !thr.float32 ? {} : { speedup_vs_float32: summarize(thr[k].map((a, i) => a / thr.float32[i])) };
    emit({ bench: 'ort_int8', model: 'cnn', kind: k, onnx: v.file, session_config: v.extra, batch: 256, images_per_s: summarize(thr[k]), ...ex });
    const ex1 = k === 'float32' || !lat.float32 ? {} : { speedup_vs_float32: summarize(lat[k].map((a, i) => lat.float32[i] / a)) };
    emit({ bench: 'ort_int8', model: 'cnn', kind: k, onnx: v.file, session_config: v.extra, batch: 1, latency_us: summarize(lat[k]), lat_iters_per_rep: latIters, ...ex1 });
  }
  emit({ bench: 'ort_int8', model: 'identity', kind: 'run() overhead', onnx: 'identity.onnx', batch: 1, latency_us: summarize(idl), lat_iters_per_rep: latIters });
}

async function benchMbv2() {
  const vs = await variants('mbv2');
  const x1 = { input: input([1, 3, 224, 224], 5) };
  for (const v of Object.values(vs)) for (let i = 0; i < 10; i++) await v.s.run(x1);
  const lat = {};
  for (const k in vs) lat[k] = [];
  for (let r = 0; r < reps; r++) for (const [k, v] of Object.entries(vs)) lat[k].push(await latency(v.s, x1, mbv2Iters) * 1e3);
  for (const [k, v] of Object.entries(vs)) {
    const ex = k === 'float32' || !lat.float32 ? {} : { speedup_vs_float32: summarize(lat[k].map((a, i) => lat.float32[i] / a)) };
    emit({ bench: 'ort_int8', model: 'mobilenet_v2_1.0_224', kind: k, onnx: v.file, session_config: v.extra, batch: 1, latency_ms: summarize(lat[k]), iters_per_rep: mbv2Iters, ...ex });
  }
}

if (models.includes('cnn')) await benchCnn();
if (models.includes('mbv2')) await benchMbv2();
