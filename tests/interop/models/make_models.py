#!/usr/bin/python3
"""Writes the small float ONNX models that tests/interop/onnx_import_test.cc imports.

Run with Debian's PyTorch 1.13 (python3-torch):  /usr/bin/python3 tests/interop/models/make_models.py
The .onnx files are checked in beside this script: the test suite never needs PyTorch. Each
model is exported with a dynamic batch dim (dynamic_axes) so that the Shape/Gather chains are
real, from fixed seeds, in eval mode. Keep each file small (the total stays under 2 MB)."""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

OUT = os.path.dirname(os.path.abspath(__file__))


class MLP(nn.Module):
    """Gemm (transB), ReLU, Dropout, Tanh, Sigmoid, Softmax; MatMul + Add on a rank-3 input."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(12, 24)
        self.fc2 = nn.Linear(24, 16)
        self.fc3 = nn.Linear(16, 6)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        h = self.drop(F.relu(self.fc1(x)))
        h = torch.tanh(self.fc2(h))
        return torch.softmax(self.fc3(h), dim=1)


class SeqMLP(nn.Module):
    """Linear on [B, T, F]: MatMul + Add (the bias), HardSigmoid, HardSwish, Sub/Div constants."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        h = F.hardswish(self.fc1((x - 0.5) / 2.0))
        return F.hardsigmoid(self.fc2(h))


class CNN(nn.Module):
    """Conv (pads = same), ReLU -> BatchNorm (not folded by the exporter: it follows a ReLU),
    a residual block with Add, MaxPool, a stride-2 conv whose symmetric pads differ from "same"
    (ZeroPadding2D), AveragePool, GlobalAveragePool, Flatten, Gemm."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(8)
        self.c4 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        h = self.bn1(F.relu(self.c1(x)))
        r = self.c3(F.relu(self.c2(h)))
        h = F.relu(self.bn3(h + r))
        h = F.max_pool2d(h, 2)
        h = F.relu(self.c4(h))
        h = F.avg_pool2d(h, 2)
        h = F.adaptive_avg_pool2d(h, 1)
        return self.fc(torch.flatten(h, 1))


class ViewCNN(nn.Module):
    """x.view(x.size(0), -1) after convs with a 3x3 map: the Shape-Gather-Unsqueeze-Concat chain
    that computes the Reshape target, and a flatten in NCHW order feeding a Gemm; also Concat on
    channels, Pad, and a grouped conv."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 6, 3)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1, groups=2)
        self.c3 = nn.Conv2d(12, 4, 1)
        self.fc = nn.Linear(4 * 4 * 4, 7)

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = torch.cat([h, F.relu(self.c2(h))], dim=1)
        h = F.pad(h, (1, 0, 1, 0))
        h = self.c3(h)
        h = F.max_pool2d(h, 2)
        return self.fc(h.view(h.size(0), -1))


class InvertedResidual(nn.Module):
    """A MobileNetV2-like block: 1x1 expand + BN + ReLU6 (Clip), 3x3 depthwise (group = channels)
    + BN + ReLU6, 1x1 project + BN, residual Add; then a squeeze-excite gate with HardSigmoid and
    a broadcast Mul, HardSwish, global pooling and a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU6())
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False),
                                nn.BatchNorm2d(24), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.se = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = self.stem(x)
        h = h + self.project(self.dw(self.expand(h)))
        g = F.hardsigmoid(self.se(F.adaptive_avg_pool2d(h, 1)))
        h = F.hardswish(h * g)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


class RNN(nn.Module):
    """An LSTM or GRU over padded sequences of lengths `lengths` (pack_padded_sequence: the
    exporter writes them as the node's sequence_lens), then a Linear on the last hidden state
    and on the padded outputs."""

    def __init__(self, cell, bidirectional=False):
        super().__init__()
        self.rnn = cell(5, 6, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(6 * (2 if bidirectional else 1), 3)

    def forward(self, x, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                   enforce_sorted=True)
        out, state = self.rnn(packed)
        h = state[0] if isinstance(state, tuple) else state
        y, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.fc(y), h


class PlainRNN(nn.Module):
    """An LSTM / GRU without lengths, batch_first, returning the whole sequence."""

    def __init__(self, cell, bidirectional=False):
        super().__init__()
        self.rnn = cell(5, 6, batch_first=True, bidirectional=bidirectional)
        self.fc = nn.Linear(6 * (2 if bidirectional else 1), 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y)


def export(name, model, args, input_names, output_names, opset, dynamic):
    torch.manual_seed(0)
    model.eval()
    path = os.path.join(OUT, name + ".onnx")
    torch.onnx.export(model, args, path, opset_version=opset, input_names=input_names,
                      output_names=output_names, dynamic_axes=dynamic, do_constant_folding=True)
    print("%-28s %6d bytes" % (os.path.basename(path), os.path.getsize(path)))


def randomize_bn(m):
    """Non-trivial running statistics and affine parameters, so BatchNormalization matters."""
    g = torch.Generator().manual_seed(1)
    for mod in m.modules():
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = mod.num_features
            mod.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            mod.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            mod.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            mod.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return m


def main():
    b = {0: "batch"}
    for opset in (11, 13):
        torch.manual_seed(0)
        export("mlp_op%d" % opset, MLP(), (torch.randn(2, 12),), ["x"], ["y"], opset,
               {"x": b, "y": b})
    torch.manual_seed(0)
    export("seq_mlp_op13", SeqMLP(), (torch.randn(2, 7, 8),), ["x"], ["y"], 13,
           {"x": b, "y": b})
    for opset in (11, 13):
        torch.manual_seed(0)
        export("cnn_op%d" % opset, randomize_bn(CNN()), (torch.randn(2, 3, 16, 16),), ["x"],
               ["y"], opset, {"x": b, "y": b})
    torch.manual_seed(0)
    export("view_cnn_op13", ViewCNN(), (torch.randn(2, 2, 9, 9),), ["x"], ["y"], 13,
           {"x": b, "y": b})
    for opset in (13, 17):
        torch.manual_seed(0)
        export("mobile_block_op%d" % opset, randomize_bn(InvertedResidual()),
               (torch.randn(2, 3, 12, 12),), ["x"], ["y"], opset, {"x": b, "y": b})
    for cell, cname in ((nn.LSTM, "lstm"), (nn.GRU, "gru")):
        torch.manual_seed(0)
        export("%s_op13" % cname, PlainRNN(cell), (torch.randn(2, 7, 5),), ["x"], ["y"], 13,
               {"x": b, "y": b})
        torch.manual_seed(0)
        export("%s_lens_op13" % cname, RNN(cell),
               (torch.randn(3, 7, 5), torch.tensor([7, 4, 2], dtype=torch.int64)),
               ["x", "lengths"], ["y", "h"], 13,
               {"x": b, "lengths": b, "y": b, "h": {1: "batch"}})
    torch.manual_seed(0)
    export("bilstm_op11", PlainRNN(nn.LSTM, bidirectional=True), (torch.randn(2, 7, 5),), ["x"],
           ["y"], 11, {"x": b, "y": b})
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT)
                if f.endswith(".onnx"))
    print("total %d bytes" % total)
    if total > 2_000_000:
        sys.exit("the models are too big for test data")


if __name__ == "__main__":
    main()
