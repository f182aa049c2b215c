#!/usr/bin/env python3
"""What the resident set of an idle `duli run` is made of, with and without a model.

    rss_breakdown.py DULI_BIN DX_DIR [N]

Starts `duli run` (quiet period of a day, so nothing is analysed) twice: with the default
model, and with `inference.model` naming no file (the daemon runs, stores and retries the
model). Each time prints VmRSS and its largest parts from /proc/PID/smaps, idle after start
and after N instances of DX_DIR (default 200) were stored with storescu.
"""
import os, sys, time, shutil, collections
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import start_duli, send, stop, status_kib

def breakdown(pid):
    groups = collections.Counter()
    cur = None
    with open("/proc/%d/smaps" % pid) as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:
                path = parts[5] if len(parts) >= 6 else "[anon]"
                if "openvino" in path and path.endswith(".so") or ".so" in path:
                    key = "shared libraries" if "openvino" not in path and "tbb" not in path else "OpenVINO libraries"
                elif path.endswith(".bin") or path.endswith(".xml"):
                    key = "model files (mapped)"
                elif "/data/" in path:
                    key = "store files (mapped)"
                elif path == "[heap]" or path == "[anon]" or path.startswith("[anon"):
                    key = "anonymous (heap, compiled network, caches)"
                elif "/duli" in path:
                    key = "duli binary"
                else:
                    key = path
                cur = key
            elif parts[0] == "Rss:":
                groups[cur] += int(parts[1])
    return groups

def show(tag, pid):
    g = breakdown(pid)
    print("%s: VmRSS %.1f MiB" % (tag, status_kib(pid, "VmRSS") / 1024))
    for k, v in g.most_common(6):
        print("   %7.1f MiB  %s" % (v / 1024, k))

binary, dx = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 200
files = sorted(os.path.join(dx, f) for f in os.listdir(dx) if f.endswith(".dcm"))[:n]
for label, extra in (("model loaded", {}), ("no model", {"DULI_INFERENCE__MODEL": "/nonexistent/model.toml"})):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "work-rss-%d" % len(extra))
    shutil.rmtree(root, ignore_errors=True)
    env = {"DULI_DICOM__QUIET_PERIOD": "86400"}
    env.update(extra)
    proc, port, cport, log = start_duli(root, binary, env)
    time.sleep(4)
    show("%s, idle after start" % label, proc.pid)
    secs, fails = send(files, "DULI", port, 1)
    time.sleep(2)
    show("%s, after storing %d instances (%.0f MB)" % (label, len(files), sum(os.path.getsize(f) for f in files) / 1e6), proc.pid)
    stop(proc)
