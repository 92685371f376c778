// Runs an ONNX model in ONNX Runtime (onnxruntime-node, CPU, one thread) on inputs given as .npy
// files and writes every graph output as a .npy file: how lowbit's interop tests check a model in
// the real runtime (tests/testing/ort.h calls it). Never a dependency of the library.
//
//   node tools/interop/ort_run.mjs MODEL.onnx OUT_DIR [NAME=INPUT.npy ...] [--opt all|basic|disabled]
//
// Inputs without NAME= are fed to the model's inputs in order. Writes OUT_DIR/<output name>.npy
// (the name with every character outside [A-Za-z0-9_.-] replaced by '_') and prints one JSON line
// {"outputs": [{"name", "file", "dtype", "shape"}]}. Exit 1 with a message on any error.
// Supported .npy dtypes: <f4 <f8 |i1 |u1 <i4 <i8 |b1 (C order, version 1.0).
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const here = path.dirname(new URL(import.meta.url).pathname);
let ort;
try {
  ort = require(path.join(here, 'node_modules', 'onnxruntime-node'));
} catch (e) {
  console.error(`ort_run: onnxruntime-node is not installed in ${here}/node_modules: run scripts/setup ` +
                `(or: npm install --ignore-scripts --prefix ${here}) (${e.message})`);
  process.exit(1);
}

const NPY = { '<f4': ['float32', Float32Array], '<f8': ['float64', Float64Array], '|i1': ['int8', Int8Array],
  '|u1': ['uint8', Uint8Array], '<i4': ['int32', Int32Array], '<i8': ['int64', BigInt64Array], '|b1': ['bool', Uint8Array] };

function readNpy(file) {
  const b = fs.readFileSync(file);
  if (b.length < 10 || b.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error(`${file}: not a .npy file`);
  const major = b[6];
  const hlen = major === 1 ? b.readUInt16LE(8) : b.readUInt32LE(8);
  const hstart = major === 1 ? 10 : 12;
  const header = b.toString('latin1', hstart, hstart + hlen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  const fortran = /'fortran_order':\s*True/.test(header);
  const shapeStr = /'shape':\s*\(([^)]*)\)/.exec(header)?.[1];
  if (!descr || !NPY[descr]) throw new Error(`${file}: unsupported dtype ${descr}`);
  if (fortran) throw new Error(`${file}: fortran order is not supported`);
  const shape = shapeStr.split(',').map((s) => s.trim()).filter((s) => s.length).map(Number);
  const [type, Arr] = NPY[descr];
  const n = shape.reduce((a, c) => a * c, 1);
  const off = hstart + hlen;
  const bytes = b.subarray(off, off + n * Arr.BYTES_PER_ELEMENT);
  if (bytes.length !== n * Arr.BYTES_PER_ELEMENT) throw new Error(`${file}: truncated data`);
  const data = new Arr(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  return new ort.Tensor(type, type === 'bool' ? Uint8Array.from(data, (v) => v !== 0) : data, shape);
}

function writeNpy(file, t) {
  const descr = { float32: '<f4', float64: '<f8', int8: '|i1', uint8: '|u1', int32: '<i4', int64: '<i8', bool: '|b1' }[t.type];
  if (!descr) throw new Error(`output of type ${t.type} is not supported`);
  const shape = t.dims.length === 1 ? `(${t.dims[0]},)` : `(${t.dims.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  const pad = 64 - ((10 + header.length + 1) % 64);
  header += ' '.repeat(pad % 64) + '\n';
  const h = Buffer.alloc(10);
  h.write('\x93NUMPY', 0, 'latin1');
  h[6] = 1; h[7] = 0; h.writeUInt16LE(header.length, 8);
  const data = t.type === 'bool' ? Buffer.from(Uint8Array.from(t.data, (v) => (v ? 1 : 0)))
                                 : Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength);
  fs.writeFileSync(file, Buffer.concat([h, Buffer.from(header, 'latin1'), data]));
}

async function main() {
  const args = process.argv.slice(2);
  let opt = 'all';
  const oi = args.indexOf('--opt');
  if (oi >= 0) { opt = args[oi + 1]; args.splice(oi, 2); }
  if (args.length < 2) throw new Error('usage: node ort_run.mjs MODEL.onnx OUT_DIR [NAME=INPUT.npy ...] [--opt all|basic|disabled]');
  const [model, outDir, ...inputs] = args;
  const s = await ort.InferenceSession.create(model, { intraOpNumThreads: 1, interOpNumThreads: 1,
    executionMode: 'sequential', graphOptimizationLevel: opt });
  const feeds = {};
  inputs.forEach((spec, i) => {
    const eq = spec.indexOf('=');
    const name = eq > 0 ? spec.slice(0, eq) : s.inputNames[i];
    if (name === undefined) throw new Error(`${model}: the model has ${s.inputNames.length} inputs but ${inputs.length} were given`);
    feeds[name] = readNpy(eq > 0 ? spec.slice(eq + 1) : spec);
  });
  const out = await s.run(feeds);
  fs.mkdirSync(outDir, { recursive: true });
  const listed = [];
  for (const name of s.outputNames) {
    const file = path.join(outDir, name.replace(/[^A-Za-z0-9_.-]/g, '_') + '.npy');
    writeNpy(file, out[name]);
    listed.push({ name, file, dtype: out[name].type, shape: out[name].dims });
  }
  console.log(JSON.stringify({ outputs: listed }));
}

main().catch((e) => { console.error(`ort_run: ${e.message}`); process.exit(1); });
