// Runs an ONNX model in ONNX Runtime (onnxruntime-node, CPU, one thread) on inputs given as .npy
// files and writes every graph output as a .npy file: how lowbit's interop tests check a model in
// the real runtime (tests/testing/ort.h calls it). Never a dependency of the library.
//
//   node tools/interop/ort_run.mjs MODEL.onnx OUT_DIR [NAME=INPUT.npy ...] [--opt all|basic|disabled]
//
// Inputs without NAME= are fed to the model's inputs in order. Writes OUT_DIR/<output name>.npy
// (the name with every character outside [A-Za-z0-9_.-] replaced by '_') and prints one JSON line
// {"outputs": [{"name", "file", "dtype", "shape"}]}. Exit 1 with a message on any error.
// Supported .npy dtypes: those of npy.mjs (C order, version 1.0).
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import { readNpy, writeNpy } from './npy.mjs';

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

// .npy files as ONNX Runtime tensors (bool as the Uint8Array-backed 'bool' tensor) and back.
function readTensor(file) {
  const { dtype, shape, data } = readNpy(file);
  return new ort.Tensor(dtype, dtype === 'bool' ? Uint8Array.from(data, (v) => v !== 0) : data, shape);
}

function writeTensor(file, t) {
  writeNpy(file, { dtype: t.type, shape: t.dims, data: t.data });
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
    feeds[name] = readTensor(eq > 0 ? spec.slice(eq + 1) : spec);
  });
  const out = await s.run(feeds);
  fs.mkdirSync(outDir, { recursive: true });
  const listed = [];
  for (const name of s.outputNames) {
    const file = path.join(outDir, name.replace(/[^A-Za-z0-9_.-]/g, '_') + '.npy');
    writeTensor(file, out[name]);
    listed.push({ name, file, dtype: out[name].type, shape: out[name].dims });
  }
  console.log(JSON.stringify({ outputs: listed }));
}

main().catch((e) => { console.error(`ort_run: ${e.message}`); process.exit(1); });
