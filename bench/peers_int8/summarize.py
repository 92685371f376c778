#!/usr/bin/env python3
"""Markdown table of the medians in a results .jsonl written by run_all.sh
(torch_int8.py, ort_bench.mjs and lowbit's int8_infer_bench lines; machine_state
lines summarised below), then lowbit's ratios to each peer's best int8 variant.

  python3 summarize.py results/int8_peers_<stamp>.jsonl"""
import json, sys

rows, states, cpu = {}, [], None
for fn in sys.argv[1:]:
    for line in open(fn):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("bench") == "machine_state":
            states.append(r)
            continue
        if r.get("bench") not in ("torch_int8", "ort_int8", "lowbit_int8"):
            continue
        cpu = cpu or (r.get("cpu_family"), r.get("cpu_model"))
        for k, unit in (("images_per_s", "img/s"), ("latency_us", "µs"), ("latency_ms", "ms")):
            if k in r:
                key = (r["model"], r["batch"], unit, r["peer"], r["kind"])
                rows.setdefault(key, {})[r["threads"]] = r[k]


def fmt(s, unit):
    if s is None:
        return "–"
    m = s["median"]
    v = "{:,.0f}".format(m) if unit == "img/s" else ("{:.0f}".format(m) if unit == "µs" else "{:.2f}".format(m))
    return v


if cpu:
    print("CPU: %s (cpu family %s)\n" % (cpu[1], cpu[0]))
threads = sorted({t for v in rows.values() for t in v})
print("| model | batch | unit | peer | variant | " + " | ".join("%d thread%s" % (t, "s" if t > 1 else "") for t in threads) + " |")
print("|---|---|---|---|---|" + "---|" * len(threads))
order = {"cnn": 0, "identity": 1, "mobilenet_v2_1.0_224": 2}
for key in sorted(rows, key=lambda k: (order.get(k[0], 9), -k[1], k[3], k[4])):
    model, batch, unit, peer, kind = key
    cells = [fmt(rows[key].get(t), unit) for t in threads]
    print("| %s | %d | %s | %s | %s | %s |" % (model, batch, unit, peer, kind, " | ".join(cells)))
# lowbit's int8 against each peer's best int8 variant and against lowbit's own float, per
# (model, batch, threads): speed ratios (> 1: lowbit faster), from the medians.
def best(peer, model, batch, unit, t):
    vals = [(v[t]["median"], kind) for (m, b, u, p, kind), v in rows.items()
            if m == model and b == batch and u == unit and p == peer and t in v and "float" not in kind
            and kind != "s8s8_fused"]
    if not vals:
        return None
    return (max if unit == "img/s" else min)(vals)


lowbit_keys = [k for k in rows if k[3] == "lowbit" and "int8" in k[4]]
if lowbit_keys:
    print("\nlowbit's int8 speed relative to (> 1: lowbit faster; medians of the same run):\n")
    print("| model | batch | threads | lowbit int8 | vs lowbit float32 | vs PyTorch int8 (best) | vs ORT int8 (best) |")
    print("|---|---|---|---|---|---|---|")
    for key in sorted(lowbit_keys, key=lambda k: (order.get(k[0], 9), -k[1])):
        model, batch, unit, _, kind = key
        for t in threads:
            if t not in rows[key]:
                continue
            mine = rows[key][t]["median"]
            ratio = (lambda other: mine / other) if unit == "img/s" else (lambda other: other / mine)
            cells = []
            f = rows.get((model, batch, unit, "lowbit", "float32"), {}).get(t)
            cells.append("%.2fx" % ratio(f["median"]) if f else "–")
            for peer in ("pytorch", "onnxruntime"):
                b = best(peer, model, batch, unit, t)
                cells.append("%.2fx (%s %s)" % (ratio(b[0]), b[1], fmt({"median": b[0]}, unit)) if b else "–")
            print("| %s | %d | %d | %s %s | %s |" % (model, batch, t, fmt({"median": mine}, unit), unit, " | ".join(cells)))
if states:
    print("\nMachine state before each step (CPUs busy with other processes, of %s):" % states[0].get("cpus"))
    for s in states:
        if s.get("during"):
            print("- %s %s, during: others used %.1f CPU-s in %.0f s (%.2f CPUs on average)%s" % (
                s["time_utc"], s["step"], s["others_cpu_s"], s["wall_s"], s["others_busy_cpus_mean"],
                "" if s["others_busy_cpus_mean"] < 0.1 else "  <- figures of this step disturbed"))
        else:
            print("- %s %s, before: %.2f%s" % (s["time_utc"], s["step"], s["busy_cpus_by_others"],
                                               "" if s["idle"] else "  (NOT idle: %s)" % ", ".join(p["comm"] for p in s["top"])))
