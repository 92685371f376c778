// .npy reading and writing (version 1.0, C order) for the interop runners (ort_run.mjs,
// tflite_run.mjs): readNpy returns {dtype, shape, data} with data a typed array; writeNpy takes
// the same. dtypes: float32 float64 int8 uint8 int16 int32 int64 bool.
import fs from 'node:fs';

const BY_DESCR = { '<f4': ['float32', Float32Array], '<f8': ['float64', Float64Array],
  '|i1': ['int8', Int8Array], '|u1': ['uint8', Uint8Array], '<i2': ['int16', Int16Array],
  '<i4': ['int32', Int32Array], '<i8': ['int64', BigInt64Array], '|b1': ['bool', Uint8Array] };
const DESCR = Object.fromEntries(Object.entries(BY_DESCR).map(([d, [t]]) => [t, d]));

export function readNpy(file) {
  const b = fs.readFileSync(file);
  if (b.length < 10 || b.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error(`${file}: not a .npy file`);
  const major = b[6];
  const hlen = major === 1 ? b.readUInt16LE(8) : b.readUInt32LE(8);
  const hstart = major === 1 ? 10 : 12;
  const header = b.toString('latin1', hstart, hstart + hlen);
  const descr = /'descr':\s*'([^']+)'/.exec(header)?.[1];
  if (!descr || !BY_DESCR[descr]) throw new Error(`${file}: unsupported dtype ${descr}`);
  if (/'fortran_order':\s*True/.test(header)) throw new Error(`${file}: fortran order is not supported`);
  const shape = (/'shape':\s*\(([^)]*)\)/.exec(header)?.[1] ?? '').split(',').map((s) => s.trim())
    .filter((s) => s.length).map(Number);
  const [dtype, Arr] = BY_DESCR[descr];
  const n = shape.reduce((a, c) => a * c, 1);
  const off = hstart + hlen;
  const bytes = b.subarray(off, off + n * Arr.BYTES_PER_ELEMENT);
  if (bytes.length !== n * Arr.BYTES_PER_ELEMENT) throw new Error(`${file}: truncated data`);
  const data = new Arr(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length));
  return { dtype, shape, data };
}

export function writeNpy(file, { dtype, shape, data }) {
  const descr = DESCR[dtype];
  if (!descr) throw new Error(`dtype ${dtype} is not supported`);
  const s = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${s}, }`;
  const pad = 64 - ((10 + header.length + 1) % 64);
  header += ' '.repeat(pad % 64) + '\n';
  const h = Buffer.alloc(10);
  h.write('\x93NUMPY', 0, 'latin1');
  h[6] = 1; h[7] = 0; h.writeUInt16LE(header.length, 8);
  const body = dtype === 'bool' ? Buffer.from(Uint8Array.from(data, (v) => (v ? 1 : 0)))
                                : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  fs.writeFileSync(file, Buffer.concat([h, Buffer.from(header, 'latin1'), body]));
}
