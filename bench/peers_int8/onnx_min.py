"""A minimal hand-written ONNX protobuf writer (and a small reader for checks),
so that no `onnx` python package is needed (there is no PyPI here).

Only the fields used by these benchmark models are covered (field numbers from
onnx.proto: ModelProto, GraphProto, NodeProto, AttributeProto, TensorProto,
ValueInfoProto, TypeProto, OperatorSetIdProto)."""
import struct
import numpy as np

# TensorProto.DataType
FLOAT, UINT8, INT8, INT32, INT64 = 1, 2, 3, 6, 7
NP2ONNX = {np.dtype(np.float32): FLOAT, np.dtype(np.uint8): UINT8, np.dtype(np.int8): INT8,
           np.dtype(np.int32): INT32, np.dtype(np.int64): INT64}
# AttributeProto.AttributeType
A_FLOAT, A_INT, A_STRING, A_TENSOR, A_FLOATS, A_INTS = 1, 2, 3, 4, 6, 7


def _varint(n):
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field, wire):
    return _varint((field << 3) | wire)


def f_int(field, v):
    return _key(field, 0) + _varint(int(v))


def f_bytes(field, b):
    if isinstance(b, str):
        b = b.encode()
    return _key(field, 2) + _varint(len(b)) + b


def f_float(field, v):
    return _key(field, 5) + struct.pack("<f", v)


def tensor(name, arr):
    arr = np.asarray(arr, order="C")  # (not ascontiguousarray: it turns a scalar into shape [1])
    out = b"".join(f_int(1, d) for d in arr.shape)
    out += f_int(2, NP2ONNX[arr.dtype]) + f_bytes(8, name) + f_bytes(9, arr.tobytes())
    return out


def attr(name, v):
    out = f_bytes(1, name)
    if isinstance(v, float):
        return out + f_float(2, v) + f_int(20, A_FLOAT)
    if isinstance(v, (int, np.integer)):
        return out + f_int(3, v) + f_int(20, A_INT)
    if isinstance(v, str):
        return out + f_bytes(4, v) + f_int(20, A_STRING)
    if isinstance(v, (list, tuple)):
        return out + b"".join(f_int(8, x) for x in v) + f_int(20, A_INTS)
    raise TypeError(v)


def node(op, inputs, outputs, name="", domain="", **attrs):
    out = b"".join(f_bytes(1, i) for i in inputs) + b"".join(f_bytes(2, o) for o in outputs)
    out += f_bytes(3, name or outputs[0]) + f_bytes(4, op)
    out += b"".join(f_bytes(5, attr(k, v)) for k, v in attrs.items())
    if domain:
        out += f_bytes(7, domain)
    return out


def value_info(name, elem_type, shape):
    dims = b"".join(f_bytes(1, f_bytes(2, d) if isinstance(d, str) else f_int(1, d)) for d in shape)
    ttype = f_int(1, elem_type) + f_bytes(2, dims)
    return f_bytes(1, name) + f_bytes(2, f_bytes(1, ttype))


def model(nodes, initializers, inputs, outputs, name="g", opset=13, ir_version=7,
          producer="lowbit bench/peers_int8"):
    g = b"".join(f_bytes(1, n) for n in nodes) + f_bytes(2, name)
    g += b"".join(f_bytes(5, t) for t in initializers)
    g += b"".join(f_bytes(11, v) for v in inputs) + b"".join(f_bytes(12, v) for v in outputs)
    m = f_int(1, ir_version) + f_bytes(2, producer) + f_bytes(7, g)
    m += f_bytes(8, f_bytes(1, "") + f_int(2, opset))
    return m


# ---------------- reader (for checks: which ops a model holds) ----------------
def _read_varint(b, i):
    n = s = 0
    while True:
        c = b[i]; i += 1
        n |= (c & 0x7F) << s; s += 7
        if not c & 0x80:
            return n, i


def fields(b):
    """Yield (field, wire, value) of one protobuf message (value: int or bytes)."""
    i = 0
    while i < len(b):
        k, i = _read_varint(b, i)
        f, w = k >> 3, k & 7
        if w == 0:
            v, i = _read_varint(b, i)
        elif w == 2:
            ln, i = _read_varint(b, i); v = b[i:i + ln]; i += ln
        elif w == 5:
            v = b[i:i + 4]; i += 4
        elif w == 1:
            v = b[i:i + 8]; i += 8
        else:
            raise ValueError("wire type %d" % w)
        yield f, w, v


def op_types(model_bytes):
    """List of (domain, op_type) of the nodes in a model's main graph."""
    ops = []
    for f, _, v in fields(model_bytes):
        if f == 7:
            for gf, _, gv in fields(v):
                if gf == 1:
                    d = {nf: nv for nf, _, nv in fields(gv) if nf in (4, 7)}
                    ops.append((d.get(7, b"").decode(), d.get(4, b"").decode()))
    return ops


def initializer_types(model_bytes):
    """{name: (data_type, dims)} of the main graph's initializers."""
    out = {}
    for f, _, v in fields(model_bytes):
        if f == 7:
            for gf, _, gv in fields(v):
                if gf == 5:
                    dims, dt, name = [], None, ""
                    for tf, _, tv in fields(gv):
                        if tf == 1: dims.append(tv)
                        elif tf == 2: dt = tv
                        elif tf == 8: name = tv.decode()
                    out[name] = (dt, dims)
    return out
