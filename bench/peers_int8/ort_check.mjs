// Checks the ONNX models written by export_onnx.py in ONNX Runtime (onnxruntime-node, CPU):
//  - outputs against PyTorch's on the same inputs (int8 QDQ vs PyTorch int8; float vs PyTorch float),
//    as the max |difference| in LSB of the int8 output scale, and argmax agreement;
//  - which kernels ORT actually runs (a profiled run: op_name of every executed node), so that
//    the int8 QDQ model is seen to run QLinearConv / QGemm / QLinearAdd ... and not float Conv.
// One JSON line per model.     node ort_check.mjs [--models DIR]
import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const ort = require('onnxruntime-node');

const args = process.argv.slice(2);
const opt = (k, d) => { const i = args.indexOf(k); return i >= 0 ? args[i + 1] : d; };
const dir = path.resolve(opt('--models', path.join(path.dirname(new URL(import.meta.url).pathname), 'models')));
const PROFILE_RUNS = 3;  // profiled runs after the first; kernel counts and times are their means
const meta = JSON.parse(fs.readFileSync(path.join(dir, 'meta.json'), 'utf8'));

function readF32(f) { const b = fs.readFileSync(f); return new Float32Array(b.buffer, b.byteOffset, b.length / 4); }
function argmaxRows(a, n, c) { const r = []; for (let i = 0; i < n; i++) { let k = 0; for (let j = 1; j < c; j++) if (a[i * c + j] > a[i * c + k]) k = j; r.push(k); } return r; }

async function check(name, file, ref, outScale, extra) {
  const f = path.join(dir, file);
  if (!fs.existsSync(f)) return null;
  const m = meta.models[name];
  const prof = fs.mkdtempSync(path.join(os.tmpdir(), 'ortprof-'));
  const s = await ort.InferenceSession.create(f, { intraOpNumThreads: 1, interOpNumThreads: 1, executionMode: 'sequential',
    graphOptimizationLevel: 'all', extra, enableProfiling: true, profileFilePrefix: path.join(prof, 'p') });
  const x = readF32(path.join(dir, ref + '_in.f32'));
  const want = readF32(path.join(dir, ref + '_out.f32'));
  const feeds = { input: new ort.Tensor('float32', x, m.in_shape) };
  const out = (await s.run(feeds)).output.data;
  for (let i = 0; i < PROFILE_RUNS; i++) await s.run(feeds);
  s.endProfiling();
  const kernels = {}, kernelUs = {};
  for (const pf of fs.readdirSync(prof)) {
    const evs = JSON.parse(fs.readFileSync(path.join(prof, pf), 'utf8'));
    // kernel counts and times from the runs after the first one (warm-up: allocations, packing)
    const runs = evs.filter((e) => e.cat === 'Session' && e.name === 'model_run').sort((a, b) => a.ts - b.ts);
    const after = runs.length ? runs[0].ts + runs[0].dur : 0;
    for (const ev of evs)
      if (ev.cat === 'Node' && ev.ts > after && ev.args && ev.args.op_name && ev.name.endsWith('_kernel_time'))
        kernels[ev.args.op_name] = (kernels[ev.args.op_name] || 0) + 1 / PROFILE_RUNS,
        kernelUs[ev.args.op_name] = (kernelUs[ev.args.op_name] || 0) + ev.dur / PROFILE_RUNS;
  }
  fs.rmSync(prof, { recursive: true, force: true });
  let maxd = 0, sumd = 0;
  for (let i = 0; i < want.length; i++) { const d = Math.abs(out[i] - want[i]); maxd = Math.max(maxd, d); sumd += d; }
  const [n, c] = m.out_shape;
  const a = argmaxRows(out, n, c), b = argmaxRows(want, n, c);
  let agree = 0; for (let i = 0; i < n; i++) agree += a[i] === b[i];
  return { bench: 'ort_check', model: file, session_config: extra, reference: 'pytorch ' + (ref.endsWith('float') ? 'float32' : 'int8 ' + meta.engine),
    n, max_abs_diff: maxd, mean_abs_diff: sumd / want.length, int8_out_scale: outScale,
    max_diff_lsb: maxd / outScale, mean_diff_lsb: sumd / want.length / outScale,
    argmax_agreement: agree / n, kernels_run: Object.fromEntries(Object.entries(kernels).map(([k, v]) => [k, Math.round(v)])),
    kernel_time_us_per_run_1thread: Object.fromEntries(Object.entries(kernelUs).map(([k, v]) => [k, Math.round(v)])) };
}

// session.qdqisint8allowed=1: lets ORT fuse int8-activation (S8S8) QDQ groups into QLinear* ops on
// x86-64 (its default there is 0: only Conv/MatMul get fused, via an S8->U8 rewrite)
const I8 = { session: { qdqisint8allowed: '1' } };
const cases = [];
for (const name of ['cnn', 'mbv2']) cases.push(
  [name, name + '_float.onnx', name + '_float', {}],
  [name, name + '_int8_qdq.onnx', name, I8], [name, name + '_int8_qdq.onnx', name, {}],
  [name, name + '_u8s8_qdq.onnx', name, {}], [name, name + '_torch_qdq.onnx', name, {}]);
for (const [name, file, ref, extra] of cases) {
  if (!meta.models[name]) continue;
  try {
    const r = await check(name, file, ref, meta.models[name].out_scale, extra);
    if (r) console.log(JSON.stringify(r));
  } catch (e) { console.log(JSON.stringify({ bench: 'ort_check', model: file, error: String(e) })); }
}
