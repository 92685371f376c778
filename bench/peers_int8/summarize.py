#!/usr/bin/env python3
"""Markdown table of the medians in a results .jsonl written by run_all.sh
(torch_int8.py and ort_bench.mjs lines; machine_state lines summarised below).

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
        if r.get("bench") not in ("torch_int8", "ort_int8"):
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
