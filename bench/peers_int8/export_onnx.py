#!/usr/bin/env python3
"""Export the bench CNN and MobileNetV2-1.0 as ONNX for ONNX Runtime: float
(torch.onnx.export of the eval model; ORT folds the BN itself) and int8 QDQ.

The int8 QDQ graphs are written from the PyTorch int8 models of qmodels.py
(eager-mode post-training static quantization, same calibration) with the
minimal protobuf writer of onnx_min.py, in the form ORT's static quantization
(quantize_static, QDQ format, QInt8 activations and weights, per_channel=True)
produces and ORT's graph optimizer fuses into int8 kernels:

  x -> QuantizeLinear -> DequantizeLinear -> Conv(W = DequantizeLinear(int8 W,
  per-channel scales, zp 0, axis 0), B = DequantizeLinear(int32 B, scale =
  s_in * s_w[c])) [-> Relu] -> QuantizeLinear -> DequantizeLinear -> ...
  Add: DQ(a), DQ(b) -> Add -> Q;  pool: DQ -> GlobalAveragePool -> Q;
  Flatten on the int8 tensor;  Gemm(transB=1) like Conv.

Activations are int8: PyTorch's quint8 (scale s, zero point z) becomes int8
(s, z - 128), the same real values; weights are PyTorch's per-channel
symmetric int8 weights (zero points 0), unchanged; bias = round(b / (s_in s_w)).
So the ORT int8 model computes what PyTorch's int8 model computes, up to
rounding (checked by ort_check.mjs against the reference outputs saved here).

PyTorch 1.13's own torch.onnx.export of the quantized eager models works too
(--try-torch-qdq writes models/*_torch_qdq.onnx): it writes uint8 activations
(PyTorch's quint8) with a Cast between QuantizeLinear and DequantizeLinear and
weights/biases as Constant nodes; ORT folds those and fuses it like the u8s8
model. It is kept as a cross-check of this writer (ort_check.mjs), not benchmarked.

Written into models/ (gitignored): cnn_float.onnx, cnn_int8_qdq.onnx (S8S8),
cnn_u8s8_qdq.onnx (uint8 activations, int8 weights), the same for mbv2_*,
identity.onnx (run() overhead), reference inputs/outputs *_in.f32/*_out.f32, meta.json.

  /usr/bin/python3 export_onnx.py [--engine onednn] [--out models]
"""
import argparse, json, os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import qmodels  # sets up the shared peers' path
import onnx_min as ox
import torch
import torch.nn as nn
import torch.nn.quantized as nnq
import torch.nn.intrinsic.quantized as nniq


class QDQ:
    """Builds an int8 QDQ graph. An activation is (dq_name, scale, int8 zero point)."""

    def __init__(self, act="s8"):
        self.nodes, self.inits = [], []
        # s8: int8 activations, zero point = PyTorch's quint8 zero point - 128 (same real values);
        # u8: uint8 activations as PyTorch has them (ORT's U8S8, its recommended type on x86-64)
        self.adt, self.off = (np.int8, 128) if act == "s8" else (np.uint8, 0)

    def zp(self, torch_zp):
        return int(torch_zp) - self.off

    def const(self, name, arr):
        self.inits.append(ox.tensor(name, arr))
        return name

    def q(self, x_float, scale, zp, name):
        # scalars (rank 0): FloatFunctional keeps its scale as a 1-element tensor, and a [1]-shaped
        # scale makes ORT's QLinearAdd fusion fail its type check
        s = self.const(name + "_scale", np.array(float(scale), np.float32))
        z = self.const(name + "_zp", np.array(int(zp), self.adt))
        self.nodes.append(ox.node("QuantizeLinear", [x_float, s, z], [name + "_q"]))
        return name + "_q", s, z

    def dq(self, qname, s, z, name):
        self.nodes.append(ox.node("DequantizeLinear", [qname, s, z], [name]))
        return name

    def qdq(self, x_float, scale, zp, name):
        qn, s, z = self.q(x_float, scale, zp, name)
        return (self.dq(qn, s, z, name + "_dq"), float(scale), int(zp))

    def weight(self, w, name):
        """Quantized per-channel weight -> DequantizeLinear(axis 0) of an int8 initializer."""
        assert w.qscheme() in (torch.per_channel_symmetric, torch.per_channel_affine), w.qscheme()
        assert w.q_per_channel_axis() == 0
        zps = w.q_per_channel_zero_points().numpy()
        assert (zps == 0).all(), "symmetric weights expected"
        wi = w.int_repr().numpy().astype(np.int8)
        ws = w.q_per_channel_scales().numpy().astype(np.float32)
        self.const(name + "_w", wi)
        self.const(name + "_w_scale", ws)
        self.const(name + "_w_zp", np.zeros(ws.shape, np.int8))
        self.nodes.append(ox.node("DequantizeLinear", [name + "_w", name + "_w_scale", name + "_w_zp"],
                                  [name + "_w_dq"], axis=0))
        return name + "_w_dq", ws

    def bias(self, b, in_scale, ws, name):
        bs = (np.float32(in_scale) * ws).astype(np.float32)
        bi = np.round(b.detach().numpy().astype(np.float64) / bs).astype(np.int32)
        self.const(name + "_b", bi)
        self.const(name + "_b_scale", bs)
        self.const(name + "_b_zp", np.zeros(bs.shape, np.int32))
        self.nodes.append(ox.node("DequantizeLinear", [name + "_b", name + "_b_scale", name + "_b_zp"],
                                  [name + "_b_dq"], axis=0))
        return name + "_b_dq"

    def conv(self, x, m, name):
        relu = isinstance(m, nniq.ConvReLU2d)
        assert isinstance(m, nnq.Conv2d), type(m)
        wn, ws = self.weight(m.weight(), name)
        ins = [x[0], wn]
        if m.bias() is not None:
            ins.append(self.bias(m.bias(), x[1], ws, name))
        kh, kw = m.kernel_size
        ph, pw = m.padding
        self.nodes.append(ox.node("Conv", ins, [name + "_out"], kernel_shape=[kh, kw],
                                  strides=list(m.stride), pads=[ph, pw, ph, pw],
                                  dilations=list(m.dilation), group=m.groups))
        y = name + "_out"
        if relu:
            self.nodes.append(ox.node("Relu", [y], [name + "_relu"]))
            y = name + "_relu"
        return self.qdq(y, m.scale, self.zp(m.zero_point), name + "_y")

    def add(self, a, b, m, name):
        self.nodes.append(ox.node("Add", [a[0], b[0]], [name + "_out"]))
        return self.qdq(name + "_out", m.scale, self.zp(m.zero_point), name + "_y")

    def pool_flatten(self, x, name):
        """GlobalAveragePool (output quantized like its input, as in PyTorch), Flatten on int8."""
        self.nodes.append(ox.node("GlobalAveragePool", [x[0]], [name + "_out"]))
        qn, s, z = self.q(name + "_out", x[1], x[2], name + "_y")
        self.nodes.append(ox.node("Flatten", [qn], [name + "_flat"], axis=1))
        return (self.dq(name + "_flat", s, z, name + "_flat_dq"), x[1], x[2])

    def gemm(self, x, m, name):
        assert isinstance(m, nnq.Linear), type(m)
        wn, ws = self.weight(m.weight(), name)
        ins = [x[0], wn] + ([self.bias(m.bias(), x[1], ws, name)] if m.bias() is not None else [])
        self.nodes.append(ox.node("Gemm", ins, [name + "_out"], transB=1))
        return self.qdq(name + "_out", m.scale, self.zp(m.zero_point), name + "_y")

    def quant_input(self, qstub):
        return self.qdq("input", float(qstub.scale), self.zp(qstub.zero_point), "input")

    def finish(self, last_dq, in_shape, n_out, path):
        # the output is the float DequantizeLinear of the last int8 tensor (as DeQuantStub)
        self.nodes.append(ox.node("Identity", [last_dq], ["output"]))
        data = ox.model(self.nodes, self.inits, [ox.value_info("input", ox.FLOAT, ["N"] + in_shape)],
                        [ox.value_info("output", ox.FLOAT, ["N", n_out])])
        with open(path, "wb") as f:
            f.write(data)


def qdq_cnn(q, path, act):
    g = QDQ(act)
    x = g.quant_input(q.quant)
    for i, c in enumerate([q.conv1, q.conv2, q.conv3], 1):
        x = g.conv(x, c, "conv%d" % i)
    x = g.pool_flatten(x, "pool")
    x = g.gemm(x, q.fc, "fc")
    g.finish(x[0], [1, 28, 28], 10, path)


def qdq_mbv2(q, path, act):
    from torchvision.ops.misc import Conv2dNormActivation
    from torchvision.models.quantization.mobilenetv2 import QuantizableInvertedResidual
    g = QDQ(act)
    x = g.quant_input(q.quant)

    def seq(x, mods, prefix):
        for j, m in enumerate(mods):
            if isinstance(m, Conv2dNormActivation):
                x = g.conv(x, m[0], "%s_%d" % (prefix, j))
                assert all(isinstance(k, nn.Identity) for k in list(m)[1:])
            elif isinstance(m, nnq.Conv2d):
                x = g.conv(x, m, "%s_%d" % (prefix, j))
            elif isinstance(m, (nn.Identity, nn.Dropout)):
                pass
            else:
                raise TypeError(type(m))
        return x

    for i, blk in enumerate(q.features):
        if isinstance(blk, QuantizableInvertedResidual):
            y = seq(x, blk.conv, "b%d" % i)
            x = g.add(x, y, blk.skip_add, "b%d_add" % i) if blk.use_res_connect else y
        else:
            x = seq(x, [blk], "f%d" % i)
    x = g.pool_flatten(x, "pool")
    assert isinstance(q.classifier[0], nn.Dropout)
    x = g.gemm(x, q.classifier[1], "fc")
    g.finish(x[0], [3, 224, 224], q.classifier[1].out_features, path)


def identity_model(path):
    """A one-node model (Identity on a 1x1x28x28 input): the cost of one session.run()
    call through onnxruntime-node, to read the CNN batch-1 latencies against."""
    data = ox.model([ox.node("Identity", ["input"], ["output"])], [],
                    [ox.value_info("input", ox.FLOAT, ["N", 1, 28, 28])],
                    [ox.value_info("output", ox.FLOAT, ["N", 1, 28, 28])])
    with open(path, "wb") as f:
        f.write(data)


def export_float(m, x, path):
    torch.onnx.export(m, x, path, opset_version=13, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})


def save_ref(name, x, y, out):
    """Reference inputs/outputs (raw little-endian float32) for ort_check.mjs."""
    x = x.contiguous().numpy().astype(np.float32); y = y.contiguous().numpy().astype(np.float32)
    x.tofile(os.path.join(out, name + "_in.f32")); y.tofile(os.path.join(out, name + "_out.f32"))
    return {"in_shape": list(x.shape), "out_shape": list(y.shape)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="onednn", help="PyTorch quantized engine whose int8 model is exported")
    ap.add_argument("--out", default=qmodels.MODELS)
    ap.add_argument("--models", default="cnn,mbv2")
    ap.add_argument("--try-torch-qdq", action="store_true",
                    help="also try torch.onnx.export on the quantized eager models (*_torch_qdq.onnx)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    meta_path = os.path.join(args.out, "meta.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {"models": {}}
    meta.update({"engine": args.engine, "torch": torch.__version__})
    identity_model(os.path.join(args.out, "identity.onnx"))
    with torch.no_grad():
        if "cnn" in args.models:
            f = qmodels.cnn_float()
            q = qmodels.cnn_int8(args.engine, f)
            xt, yt = qmodels.mnist_test()
            export_float(f, xt[:1], os.path.join(args.out, "cnn_float.onnx"))
            qdq_cnn(q, os.path.join(args.out, "cnn_int8_qdq.onnx"), "s8")
            qdq_cnn(q, os.path.join(args.out, "cnn_u8s8_qdq.onnx"), "u8")
            qo, fo = q(xt), f(xt)
            ref = save_ref("cnn", xt[:256], qo[:256], args.out)
            save_ref("cnn_float", xt[:256], fo[:256], args.out)
            ref["out_scale"] = float(q.fc.scale)
            ref["torch_int8_test_acc"] = (qo.argmax(1) == yt).float().mean().item()
            ref["torch_float_test_acc"] = (fo.argmax(1) == yt).float().mean().item()
            meta["models"]["cnn"] = ref
            if args.try_torch_qdq:
                try:
                    torch.onnx.export(q, xt[:1], os.path.join(args.out, "cnn_torch_qdq.onnx"), opset_version=13,
                                      input_names=["input"], output_names=["output"],
                                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
                    print("torch.onnx.export of the quantized CNN: written", file=sys.stderr)
                except Exception as e:  # noqa: BLE001
                    print("torch.onnx.export of the quantized CNN failed: %s" % e, file=sys.stderr)
        if "mbv2" in args.models:
            f = qmodels.mbv2_float()
            q = qmodels.mbv2_int8(args.engine, f)
            xr = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
            export_float(f, xr[:1], os.path.join(args.out, "mbv2_float.onnx"))
            qdq_mbv2(q, os.path.join(args.out, "mbv2_int8_qdq.onnx"), "s8")
            qdq_mbv2(q, os.path.join(args.out, "mbv2_u8s8_qdq.onnx"), "u8")
            ref = save_ref("mbv2", xr, q(xr), args.out)
            save_ref("mbv2_float", xr, f(xr), args.out)
            ref["out_scale"] = float(q.classifier[1].scale)
            ref["torch_int8_vs_float_max_diff_lsb"] = ((q(xr) - f(xr)).abs().max() / ref["out_scale"]).item()
            ref["torch_int8_vs_float_mean_diff_lsb"] = ((q(xr) - f(xr)).abs().mean() / ref["out_scale"]).item()
            meta["models"]["mbv2"] = ref
            if args.try_torch_qdq:
                try:
                    torch.onnx.export(q, xr[:1], os.path.join(args.out, "mbv2_torch_qdq.onnx"), opset_version=13,
                                      input_names=["input"], output_names=["output"],
                                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
                    print("torch.onnx.export of the quantized MobileNetV2: written", file=sys.stderr)
                except Exception as e:  # noqa: BLE001
                    print("torch.onnx.export of the quantized MobileNetV2 failed: %s" % e, file=sys.stderr)
    for fn in sorted(os.listdir(args.out)):
        if fn.endswith(".onnx"):
            b = open(os.path.join(args.out, fn), "rb").read()
            ops = {}
            for _, op in ox.op_types(b):
                ops[op] = ops.get(op, 0) + 1
            meta.setdefault("onnx", {})[fn] = {"bytes": len(b), "ops": ops}
    with open(meta_path, "w") as fh:
        json.dump(meta, fh, indent=1)
    print(json.dumps({"bench": "export_onnx", "out": args.out, **{k: v for k, v in meta.items() if k != "onnx"}}))


if __name__ == "__main__":
    main()
