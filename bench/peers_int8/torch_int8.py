#!/usr/bin/env python3
"""PyTorch peer: int8 inference (eager-mode post-training static quantization)
against float32, side by side in one process.

  MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184 MALLOC_TOP_PAD_=268435456 \\
    /usr/bin/python3 torch_int8.py --threads 1 [--models cnn,mbv2] [--engines onednn]

Models (qmodels.py): the bench CNN on 28x28x1 (trained 3 epochs, calibrated on
4 x 256 MNIST test images) and torchvision's quantizable MobileNetV2-1.0 on
224x224x3 (default init, calibrated on random images).  Variants: float32 (the
eval model with conv+bn(+relu) fused, i.e. BN folded: float at its best) and
int8 for each quantized engine (Debian's PyTorch 1.13 has onednn and qnnpack;
it is built without fbgemm, so torch.backends.quantized.engine='fbgemm' or 'x86'
is refused: onednn is its x86 int8 path, oneDNN 2.6 with AVX512-VNNI/AVX2).

Measured, after warm-up, variants interleaved rep by rep:
  cnn  batch 256: images/s of back-to-back forward() calls for >= --min-time s, per rep
  cnn  batch 1  : latency of single forward() calls (µs), median of --lat-iters calls per rep
  mbv2 batch 1  : latency (ms), median of --mbv2-iters calls per rep
Each figure: median (min, max) over --reps reps.  One JSON line per model/batch/variant.
"""
import argparse, json, os, statistics, sys
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.abspath(os.environ.get("PEERS_DIR", os.path.join(HERE, "..", "..", "..", "shared", "peers"))))
import common  # the shared peers' helpers

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--models", default="cnn,mbv2")
ap.add_argument("--engines", default="onednn", help="comma list of quantized engines (onednn, qnnpack)")
ap.add_argument("--reps", type=int, default=9)
ap.add_argument("--min-time", type=float, default=0.5, help="seconds per batch-256 throughput rep")
ap.add_argument("--lat-iters", type=int, default=400, help="batch-1 CNN calls per rep")
ap.add_argument("--mbv2-iters", type=int, default=40, help="MobileNetV2 calls per rep")
ap.add_argument("--out", default="torch_int8", help="results file <PEER_RESULTS_DIR>/<out>.jsonl")
args = ap.parse_args()
common.set_thread_env(args.threads)

import warnings  # noqa: E402
warnings.filterwarnings("ignore", message="must run observer before")  # unused FloatFunctionals in MobileNetV2
import torch  # noqa: E402
import qmodels  # noqa: E402

torch.set_num_threads(args.threads)
now = common.now


def cpu_info():
    fam = model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu family") and not fam:
                fam = line.split(":")[1].strip()
            if line.startswith("model name") and not model:
                model = line.split(":")[1].strip()
    return {"cpu_family": int(fam) if fam else None, "cpu_model": model}


BASE = {"peer": "pytorch", "torch": torch.__version__, "threads": args.threads,
        "env_malloc": {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")},
        **cpu_info()}


def variants(model):
    out = {}
    f = qmodels.cnn_float() if model == "cnn" else qmodels.mbv2_float()
    out["float32"] = (qmodels.fused_float(f), None)
    for eng in args.engines.split(","):
        if eng not in qmodels.engines_available():
            print("engine %s not available (have %s): skipped" % (eng, qmodels.engines_available()), file=sys.stderr)
            continue
        q = qmodels.cnn_int8(eng, f) if model == "cnn" else qmodels.mbv2_int8(eng, f)
        out["int8 " + eng] = (q, eng)
    return out


def use(eng):
    if eng:
        torch.backends.quantized.engine = eng


def throughput(m, x, min_time):
    t0 = now(); cnt = 0
    while True:
        m(x); cnt += 1
        t = now() - t0
        if t >= min_time:
            return x.shape[0] * cnt / t


def latency(m, x, iters):
    ts = []
    for _ in range(iters):
        t0 = now(); m(x); ts.append(now() - t0)
    return statistics.median(ts)


def emit(rec):
    common.emit({**rec, **BASE}, args.out)


@torch.no_grad()
def bench_cnn():
    vs = variants("cnn")
    x, y = qmodels.mnist_test()
    xb, x1 = x[:256].contiguous(), x[:1].contiguous()
    acc = {}
    for k, (m, eng) in vs.items():
        use(eng)
        acc[k] = (m(x).argmax(1) == y).float().mean().item()
        for _ in range(5): m(xb)
        for _ in range(50): m(x1)
    thr = {k: [] for k in vs}; lat = {k: [] for k in vs}
    for _ in range(args.reps):
        for k, (m, eng) in vs.items():
            use(eng)
            thr[k].append(throughput(m, xb, args.min_time))
            lat[k].append(latency(m, x1, args.lat_iters) * 1e6)
    for k in vs:
        extra = {}
        if k != "float32":
            extra["speedup_vs_float32"] = common.summarize([a / b for a, b in zip(thr[k], thr["float32"])])
        emit({"bench": "torch_int8", "model": "cnn", "kind": k, "batch": 256, "images_per_s": common.summarize(thr[k]),
              "test_acc": round(acc[k], 4), **extra})
        extra = {}
        if k != "float32":
            extra["speedup_vs_float32"] = common.summarize([b / a for a, b in zip(lat[k], lat["float32"])])
        emit({"bench": "torch_int8", "model": "cnn", "kind": k, "batch": 1, "latency_us": common.summarize(lat[k]),
              "lat_iters_per_rep": args.lat_iters, **extra})


@torch.no_grad()
def bench_mbv2():
    vs = variants("mbv2")
    x1 = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    for k, (m, eng) in vs.items():
        use(eng)
        for _ in range(10): m(x1)
    lat = {k: [] for k in vs}
    for _ in range(args.reps):
        for k, (m, eng) in vs.items():
            use(eng)
            lat[k].append(latency(m, x1, args.mbv2_iters) * 1e3)
    for k in vs:
        extra = {}
        if k != "float32":
            extra["speedup_vs_float32"] = common.summarize([b / a for a, b in zip(lat[k], lat["float32"])])
        emit({"bench": "torch_int8", "model": "mobilenet_v2_1.0_224", "kind": k, "batch": 1,
              "latency_ms": common.summarize(lat[k]), "iters_per_rep": args.mbv2_iters, **extra})


if "cnn" in args.models:
    bench_cnn()
if "mbv2" in args.models:
    bench_mbv2()
