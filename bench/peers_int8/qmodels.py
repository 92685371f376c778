"""Models shared by torch_int8.py and export_onnx.py: the bench CNN (from the
shared peers' models.py) and torchvision's quantizable MobileNetV2-1.0, in
float and as eager-mode post-training static int8 (fuse, prepare, calibrate,
convert).

The bench CNN is trained briefly (3 epochs, seed 0, Adam 1e-3, batch 64 on the
8k train split) so that accuracies mean something; the float weights are
cached in models/cnn_float_e3.pt so that torch_int8.py and export_onnx.py use the
very same model.  MobileNetV2 has torchvision's default (random, seeded)
initialisation (BN statistics re-estimated on random inputs, see mbv2_float):
nothing is downloaded.

Calibration: the bench CNN on the first CALIB_BATCHES x 256 MNIST test images;
MobileNetV2 on random N(0,1) 224x224 images (seeded)."""
import copy, os, sys

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.environ.get("PEERS_DIR", os.path.join(HERE, "..", "..", "..", "shared", "peers"))
sys.path.insert(0, os.path.abspath(PEERS))
MODELS = os.environ.get("PEER_INT8_MODELS", os.path.join(HERE, "models"))
CALIB_BATCHES = 4
TRAIN_EPOCHS = 3

import numpy as np
import torch
import torch.nn as nn
import torch.ao.quantization as tq
import common  # noqa: E402  (shared peers: data loading, timing, JSON output)
from models import CNN  # noqa: E402  (the bench CNN)


def engines_available():
    return list(torch.backends.quantized.supported_engines)


def mnist_test():
    data = common.load_mnist()
    x = torch.from_numpy(data["test"][0].astype(np.float32) / 255.0).unsqueeze(1).contiguous()
    y = torch.from_numpy(data["test"][1].astype(np.int64))
    return x, y


def _train_cnn():
    data = common.load_mnist()
    xtr = torch.from_numpy(data["train"][0].astype(np.float32) / 255.0).unsqueeze(1)
    ytr = torch.from_numpy(data["train"][1].astype(np.int64))
    torch.manual_seed(0)
    m = CNN().train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    lossf = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    B = 64
    for _ in range(TRAIN_EPOCHS):
        perm = torch.randperm(xtr.shape[0], generator=g)
        for i in range(xtr.shape[0] // B):
            idx = perm[i * B:(i + 1) * B]
            opt.zero_grad(set_to_none=True)
            lossf(m(xtr[idx]), ytr[idx]).backward()
            opt.step()
    return m.eval()


def cnn_float():
    """The trained bench CNN in eval mode (BN not folded; QuantStub/DeQuantStub are identities)."""
    path = os.path.join(MODELS, "cnn_float_e%d.pt" % TRAIN_EPOCHS)
    m = CNN()
    if os.path.exists(path):
        m.load_state_dict(torch.load(path))
        return m.eval()
    with torch.enable_grad():
        m = _train_cnn()
    os.makedirs(MODELS, exist_ok=True)
    torch.save(m.state_dict(), path)
    return m


def fused_float(m):
    """Eval-mode fusion (conv+bn folded, relu fused): the float model at its best in PyTorch."""
    m = copy.deepcopy(m).eval()
    if isinstance(m, CNN):
        return tq.fuse_modules(m, m.fuse_groups)
    m.fuse_model()
    return m


def cnn_int8(engine, float_model=None, x_calib=None):
    torch.backends.quantized.engine = engine
    m = fused_float(float_model if float_model is not None else cnn_float())
    m.qconfig = tq.get_default_qconfig(engine)
    tq.prepare(m, inplace=True)
    if x_calib is None:
        x_calib = mnist_test()[0][:CALIB_BATCHES * 256]
    with torch.no_grad():
        for i in range(0, x_calib.shape[0], 256):
            m(x_calib[i:i + 256])
    return tq.convert(m).eval()


def mbv2_float():
    """torchvision's default initialisation (seed 0); BN running statistics then
    re-estimated on 8 random batches (train-mode forward passes, no weight update),
    so that activations neither vanish nor explode through the 17 blocks (with the
    initial mean 0 / var 1 statistics the logits come out ~1e-5 and the int8
    output is a constant)."""
    from torchvision.models.quantization import mobilenet_v2
    torch.manual_seed(0)
    m = mobilenet_v2(weights=None, quantize=False)
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.reset_running_stats(); mod.momentum = None  # cumulative average
    m.train()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for _ in range(8):
            m(torch.randn(4, 3, 224, 224, generator=g))
    return m.eval()


def mbv2_calib():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, 224, 224, generator=g) for _ in range(CALIB_BATCHES)]


def mbv2_int8(engine, float_model=None):
    torch.backends.quantized.engine = engine
    m = fused_float(float_model if float_model is not None else mbv2_float())
    m.qconfig = tq.get_default_qconfig(engine)
    tq.prepare(m, inplace=True)
    with torch.no_grad():
        for xb in mbv2_calib():
            m(xb)
    return tq.convert(m).eval()
