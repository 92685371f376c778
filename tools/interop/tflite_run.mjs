// Runs a .tflite model in TFLite's interpreter compiled to WebAssembly (npm
// @tensorflow/tfjs-tflite, wasm/tflite_web_api_cc_simd.{js,wasm}) under node, on inputs given as
// .npy files, and writes every subgraph output as a .npy file: how lowbit's interop tests check
// an exported .tflite in a real TFLite interpreter (tests/testing/tflite_run.h calls it).
//
//   node tools/interop/tflite_run.mjs MODEL.tflite OUT_DIR INPUT.npy ...
//
// Inputs are fed to the model's inputs in order (their dtype must be the input's). Writes
// OUT_DIR/<i>_<output name>.npy and prints one JSON line {"outputs": [{"name", "file", "dtype",
// "shape"}]}. Exit 1 with a message on any error.
//
// The shim (docs/interop-tflite.md): the package's emscripten module is built for browsers only
// (no node branch), so it is evaluated in a vm context that has no `window`/`document`, with
// the wasm bytes handed over as Module.wasmBinary instead of fetched. Its embind class
// TFLiteWebModelRunner.CreateFromBufferAndOptions(ptr, size, options) then builds the
// interpreter from the model bytes copied into the wasm heap (what tfjs-tflite's own loader
// does in a browser). One thread.
import fs from 'node:fs';
import path from 'node:path';
import vm from 'node:vm';
import { readNpy, writeNpy } from './npy.mjs';

const here = path.dirname(new URL(import.meta.url).pathname);
const wasmDir = path.join(here, 'node_modules', '@tensorflow', 'tfjs-tflite', 'wasm');

async function loadModule() {
  const js = path.join(wasmDir, 'tflite_web_api_cc_simd.js');
  if (!fs.existsSync(js))
    throw new Error(`@tensorflow/tfjs-tflite is not installed in ${here}/node_modules: run scripts/setup ` +
                    `(or: npm install --ignore-scripts --prefix ${here})`);
  const ctx = { console, WebAssembly, TextDecoder, TextEncoder, setTimeout, clearTimeout, performance, URL };
  ctx.self = ctx;
  vm.createContext(ctx);
  vm.runInContext(fs.readFileSync(js, 'utf8') + '\n;globalThis.__factory = tflite_web_api_ModuleFactory;', ctx);
  return ctx.__factory({ wasmBinary: fs.readFileSync(path.join(wasmDir, 'tflite_web_api_cc_simd.wasm')),
    print: (s) => process.stderr.write(s + '\n'), printErr: (s) => process.stderr.write(s + '\n') });
}

function toArray(v) {
  const a = [];
  for (let i = 0; i < v.size(); ++i) a.push(v.get(i));
  v.delete();
  return a;
}

async function main() {
  const args = process.argv.slice(2);
  if (args.length < 2) throw new Error('usage: node tflite_run.mjs MODEL.tflite OUT_DIR [INPUT.npy ...]');
  const [model, outDir, ...inputs] = args;
  const M = await loadModule();
  const bytes = fs.readFileSync(model);
  const ptr = M._malloc(bytes.length);
  M.HEAPU8.set(bytes, ptr);
  const made = M.TFLiteWebModelRunner.CreateFromBufferAndOptions(ptr, bytes.length,
    { numThreads: 1, enableProfiling: false, maxProfilingBufferEntries: 1024 });
  if (!made.ok()) throw new Error(`${model}: ${made.errorMessage()}`);
  const runner = made.value();
  const ins = toArray(runner.GetInputs());
  if (inputs.length !== ins.length) throw new Error(`${model}: the model has ${ins.length} inputs but ${inputs.length} were given`);
  inputs.forEach((f, i) => {
    const t = readNpy(f);
    if (t.dtype !== ins[i].dataType) throw new Error(`${f}: dtype ${t.dtype}, but input ${i} is ${ins[i].dataType}`);
    const dst = ins[i].data();
    if (dst.length !== t.data.length)
      throw new Error(`${f}: ${t.data.length} values, but input ${i} has shape [${ins[i].shape}] (${dst.length})`);
    dst.set(t.data);
  });
  if (!runner.Infer()) throw new Error(`${model}: Infer failed`);
  fs.mkdirSync(outDir, { recursive: true });
  const listed = [];
  toArray(runner.GetOutputs()).forEach((o, i) => {
    const shape = String(o.shape).split(',').filter((s) => s.length).map(Number);
    const file = path.join(outDir, `${i}_${o.name.replace(/[^A-Za-z0-9_.-]/g, '_')}.npy`);
    writeNpy(file, { dtype: o.dataType, shape, data: o.data().slice() });
    listed.push({ name: o.name, file, dtype: o.dataType, shape });
  });
  console.log(JSON.stringify({ outputs: listed }));
}

main().catch((e) => { console.error(`tflite_run: ${e.message ?? e}`); process.exit(1); });
