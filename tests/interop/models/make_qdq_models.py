#!/usr/bin/env python3
"""Generator of the PyTorch-written QDQ int8 test models of tests/interop/onnx_integer_test.cc
(lowbit::onnx::import_onnx_qdq). Not needed to run the suite: its outputs are checked in.

  /usr/bin/python3 tests/interop/models/make_qdq_models.py   (Debian python3-torch 1.13)

qdq_torch_cnn.onnx: a small CNN with a residual Add (conv+bn+relu, conv+relu, conv, Add
  (FloatFunctional), ReLU, max pool, conv stride 2, global average pool, flatten, linear),
  trained for a few steps on random data (seeded), quantized with torch.ao.quantization
  (eager mode post-training static, onednn engine and qconfig: per-channel symmetric int8 weights on axis
  0, quint8 activations), calibrated on random images, exported with torch.onnx.export
  (opset 13). The input is NCHW [N, 1, 16, 16].
"""
import os
import torch
import torch.nn as nn
import torch.ao.quantization as tq

HERE = os.path.dirname(os.path.abspath(__file__))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.add = nn.quantized.FloatFunctional()
        self.relu3 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv4 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.relu4 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        x = self.quant(x)
        x = self.relu1(self.bn1(self.conv1(x)))
        h = self.relu2(self.conv2(x))
        h = self.conv3(h)
        x = self.relu3(self.add.add(x, h))
        x = self.pool(x)
        x = self.relu4(self.conv4(x))
        x = torch.flatten(self.gap(x), 1)
        return self.dequant(self.fc(x))


def main():
    torch.manual_seed(0)
    torch.backends.quantized.engine = "onednn"
    m = Net()
    x = torch.rand(256, 1, 16, 16)
    y = (x[:, 0, :8].mean((1, 2)) * 40).long().clamp(0, 9)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for i in range(60):
        idx = torch.randint(0, 256, (32,))
        opt.zero_grad()
        nn.functional.cross_entropy(m(x[idx]), y[idx]).backward()
        opt.step()
    m.eval()
    m = tq.fuse_modules(m, [["conv1", "bn1", "relu1"], ["conv2", "relu2"], ["conv4", "relu4"]])
    m.qconfig = tq.get_default_qconfig("onednn")
    tq.prepare(m, inplace=True)
    with torch.no_grad():
        m(x)
    tq.convert(m, inplace=True)
    xt = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    path = os.path.join(HERE, "qdq_torch_cnn.onnx")
    torch.onnx.export(m, xt[:1], path, opset_version=13, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})
    print(path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
    main()
