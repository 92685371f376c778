#!/usr/bin/env python3
"""How busy the machine is apart from us: CPU time used by all processes over
--sample seconds (from /proc/stat, while this script only sleeps), and the top
CPU users.  With --wait S, waits up to S seconds for fewer than --idle busy
CPUs first.  Prints one JSON line (bench "machine_state").  Benchmarks on a
2-core machine mean little while something else runs.

  machine_state.py --step NAME [--wait S]              # before a step
  machine_state.py --step NAME --run -- CMD ARGS...    # runs CMD, then reports the CPU
      time other processes used WHILE it ran (all busy CPU time minus CMD's own)"""
import argparse, json, os, resource, subprocess, sys, time


def stat_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v[:8]) - v[3] - v[4]  # busy ticks, all CPUs


def busy_cpus(sample):
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v[:8]), idle
    t0, i0 = read(); time.sleep(sample); t1, i1 = read()
    return (os.cpu_count() or 1) * (1 - (i1 - i0) / max(1, t1 - t0))


def top_procs(n=3):
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                st = f.read()
            comm = st[st.index("(") + 1:st.rindex(")")]
            fields = st[st.rindex(")") + 2:].split()
            out.append((int(fields[11]) + int(fields[12]), int(pid), comm))  # utime + stime (ticks)
        except (OSError, ValueError, IndexError):
            pass
    time.sleep(0.5)
    res = []
    for ticks, pid, comm in out:
        try:
            with open("/proc/%d/stat" % pid) as f:
                st = f.read()
            fields = st[st.rindex(")") + 2:].split()
            d = int(fields[11]) + int(fields[12]) - ticks
            if d > 0:
                res.append({"pid": pid, "comm": comm, "cpu": round(d / os.sysconf("SC_CLK_TCK") / 0.5, 2)})
        except (OSError, ValueError, IndexError):
            pass
    return sorted(res, key=lambda r: -r["cpu"])[:n]


ap = argparse.ArgumentParser()
ap.add_argument("--step", default="")
ap.add_argument("--sample", type=float, default=1.0)
ap.add_argument("--wait", type=float, default=0.0)
ap.add_argument("--idle", type=float, default=0.25, help="busy CPUs below which the machine counts as idle")
argv, cmd = sys.argv[1:], None
if "--run" in argv:  # --run [--] CMD ARGS...: run CMD and report others' CPU use during it
    i = argv.index("--run"); argv, cmd = argv[:i], argv[i + 1:]
    cmd = cmd[1:] if cmd and cmd[0] == "--" else cmd
a = ap.parse_args(argv)
if cmd:
    hz = os.sysconf("SC_CLK_TCK")
    t0, b0 = time.time(), stat_ticks()
    rc = subprocess.call(cmd, stdout=subprocess.DEVNULL)
    wall, busy = time.time() - t0, (stat_ticks() - b0) / hz
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = ru.ru_utime + ru.ru_stime
    others = max(0.0, busy - own)
    print(json.dumps({"bench": "machine_state", "step": a.step, "during": True,
                      "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "wall_s": round(wall, 1),
                      "own_cpu_s": round(own, 1), "others_cpu_s": round(others, 1),
                      "others_busy_cpus_mean": round(others / wall, 3), "rc": rc}), flush=True)
    sys.exit(rc)
t0 = time.time()
b = busy_cpus(a.sample)
while b >= a.idle and time.time() - t0 < a.wait:
    time.sleep(5)
    b = busy_cpus(a.sample)
print(json.dumps({"bench": "machine_state", "step": a.step, "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "busy_cpus_by_others": round(b, 3), "cpus": os.cpu_count(), "waited_s": round(time.time() - t0 - a.sample, 1),
                  "idle": b < a.idle, "top": top_procs(), "loadavg": open("/proc/loadavg").read().split()[:3]}), flush=True)
