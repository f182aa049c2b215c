#!/usr/bin/env python3
"""Peak memory of `duli run` (release build, model loaded) for large images.

Two runs, each against a fresh daemon with its data under the work folder:

  large   one 8192 x 8192 DX (16 bits allocated, 12 stored, about 128 MiB) sent with DCMTK
          storescu; the daemon receives it, analyses it, makes its heatmap and pushes the
          SR and the Secondary Capture of the heatmap to a PACS (DCMTK storescp).
  burst   32 ordinary one-image studies (2800 x 2800 DX, about 15 MiB each) sent over 32
          concurrent associations (32 storescu processes at once), each analysed, with its
          heatmap, SR and Secondary Capture pushed likewise.

Every study is inside the shipped model's intended use (3-year-old patients, PA chest).
Each run ends when the PACS holds every study's SR and the daemon has then used no CPU for
5 s (heatmaps, Secondary Captures and pushes finished; heatmaps the backlog skipped make no
Secondary Capture, the SCs column counts those made). The figure is the daemon's peak RSS,
VmHWM from /proc/PID/status (the kernel's own high-water mark, so no sample can miss a
peak), beside its VmHWM once the model was loaded and before anything was sent; seconds
run from the first association to the last work done.

    memory.py DULI_BINARY [--work DIR] [--label TEXT] [--large-side N] [--burst N]
              [--burst-side N] [--runs large,burst] [--set DULI_SECTION__KEY=VALUE]...

DCMTK runs with TCP_NODELAY=1 (Debian's 3.6.7 stalls about 44 ms per exchange otherwise).
"""

import argparse
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import PEER_ENV, free_port, start_duli, status_kib, stop, wait_port  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.path.join(REPO, ".venv", "bin", "python")


IDLE_SECONDS = 5


def cpu_ticks(pid):
    """User + system clock ticks the process has used."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def count(folder, prefix):
    return sum(1 for f in os.listdir(folder) if f.startswith(prefix))


def https_json(port, path):
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    url = "https://127.0.0.1:%d%s" % (port, path)
    with urllib.request.urlopen(url, timeout=10, context=insecure) as r:
        return json.load(r)


def generate(out_dir, count, side, seed):
    """`count` one-image PA studies of `side` x `side` (bench/gen_dx.py, cached)."""
    subprocess.run([PYTHON, os.path.join(REPO, "bench", "gen_dx.py"), out_dir, str(count),
                    "--rows", str(side), "--cols", str(side), "--per-study", "1",
                    "--seed", str(seed)], check=True)
    return sorted(os.path.join(out_dir, f) for f in os.listdir(out_dir) if f.endswith(".dcm"))


def run(binary, work, files, parallel, timeout, settings):
    """Starts a PACS and the daemon, sends `files` over `parallel` associations, waits for
    every study's Secondary Capture; returns (idle VmHWM MiB, peak VmHWM MiB, seconds)."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    pacs_dir = os.path.join(work, "pacs")
    os.makedirs(pacs_dir)
    pacs_port = free_port()
    pacs_log = open(os.path.join(work, "pacs.log"), "w")
    pacs = subprocess.Popen(["storescp", "-aet", "PACS", "-od", pacs_dir, str(pacs_port)],
                            env=PEER_ENV, stdout=pacs_log, stderr=pacs_log)
    started = start_duli(os.path.join(work, "duli"), binary, dict(settings, **{
        "DULI_LOG": "warn",
        # The burst stands for 32 modalities; from loopback they share one address, which
        # the per-address share (16 by default) would otherwise hold to half of them.
        "DULI_DICOM__MAX_ASSOCIATIONS_PER_ADDRESS": str(max(parallel, 16)),
        "DULI_PACS__DESTINATIONS": '[{name = "pacs", ae_title = "PACS", host = "127.0.0.1", '
                                   'port = %d, push = true, result_objects = ["sr", "sc"]}]'
                                   % pacs_port,
    }))
    if started is None:
        stop(pacs)
        raise SystemExit("the daemon did not start")
    duli, dicom_port, console_port, log = started
    try:
        if not wait_port(pacs_port, pacs):
            raise SystemExit("the PACS did not start; see %s" % work)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if https_json(console_port, "/healthz").get("inference") == "ready":
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("the model did not load; see %s/duli/duli.log" % work)
        time.sleep(1.0)
        idle = status_kib(duli.pid, "VmHWM")
        start = time.time()
        groups = [files[i::parallel] for i in range(parallel)]
        senders = [subprocess.Popen(["storescu", "-aec", "DULI", "127.0.0.1", str(dicom_port),
                                     *group], env=PEER_ENV, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL) for group in groups if group]
        for s in senders:
            if s.wait() != 0:
                raise SystemExit("storescu failed; see %s" % work)
        # Done when the PACS holds every study's SR and the daemon has been idle for
        # IDLE_SECONDS (heatmaps, Secondary Captures and their pushes finished; a heatmap
        # the backlog skipped makes no Secondary Capture).
        deadline = time.time() + timeout
        idle_since, ticks = None, cpu_ticks(duli.pid)
        while True:
            if time.time() > deadline:
                raise SystemExit("not done after %d s; see %s" % (timeout, work))
            if duli.poll() is not None:
                raise SystemExit("the daemon exited; see %s/duli/duli.log" % work)
            time.sleep(1.0)
            now = cpu_ticks(duli.pid)
            busy = now - ticks > 0.05 * os.sysconf("SC_CLK_TCK")
            ticks = now
            reports = count(pacs_dir, "SR")
            if busy or reports < len(files):
                idle_since = None
            elif idle_since is None:
                idle_since = time.time()
            elif time.time() - idle_since >= IDLE_SECONDS:
                break
        seconds = time.time() - start - IDLE_SECONDS
        captures = count(pacs_dir, "SC")
        peak = status_kib(duli.pid, "VmHWM")
        return idle / 1024, peak / 1024, seconds, captures
    finally:
        stop(duli)
        stop(pacs)
        log.close()
        pacs_log.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("binary")
    parser.add_argument("--work", default=os.path.join(REPO, "bench", "out", "memory"))
    parser.add_argument("--label", default="")
    parser.add_argument("--large-side", type=int, default=8192)
    parser.add_argument("--burst", type=int, default=32)
    parser.add_argument("--burst-side", type=int, default=2800)
    parser.add_argument("--runs", default="large,burst", help="which runs, comma-separated")
    parser.add_argument("--set", action="append", default=[], metavar="DULI_SECTION__KEY=VALUE",
                        help="a configuration override for the daemon (repeatable)")
    args = parser.parse_args()
    # The daemon runs in its own work folder: a relative path would not reach it there.
    args.binary = os.path.abspath(args.binary)
    if not os.access(args.binary, os.X_OK):
        raise SystemExit("%s not built: cargo build --release -p duli" % args.binary)
    sets = os.path.join(REPO, "bench", "out")
    large = generate(os.path.join(sets, "dx-large-%d" % args.large_side), 1, args.large_side, 8192)
    burst = generate(os.path.join(sets, "dx-burst-%d-%d" % (args.burst, args.burst_side)),
                     args.burst, args.burst_side, 2800)
    work = tempfile.mkdtemp(prefix="run-", dir=args.work) if os.path.isdir(args.work) else None
    if work is None:
        os.makedirs(args.work, exist_ok=True)
        work = tempfile.mkdtemp(prefix="run-", dir=args.work)
    print("duli peak RSS (VmHWM), release build %s%s, model loaded, heatmaps on, SR + SC pushed "
          "to DCMTK storescp; DCMTK with TCP_NODELAY=1; %d cores"
          % (args.binary, " (%s)" % args.label if args.label else "", os.cpu_count()))
    print("%-40s %9s %9s %8s %5s" % ("run", "idle MiB", "peak MiB", "seconds", "SCs"))
    runs = [("1 x %d^2 16-bit DX, 1 association" % args.large_side, large, 1, 600),
            ("%d x %d^2 16-bit DX, %d associations" % (args.burst, args.burst_side, args.burst),
             burst, args.burst, 1800)]
    chosen = [r for r, kind in zip(runs, ("large", "burst")) if kind in args.runs.split(",")]
    for i, (name, files, parallel, timeout) in enumerate(chosen):
        settings = dict(kv.split("=", 1) for kv in args.set)
        idle, peak, seconds, captures = run(args.binary, os.path.join(work, "run%d" % i), files,
                                            parallel, timeout, settings)
        print("%-40s %9.0f %9.0f %8.1f %5d" % (name, idle, peak, seconds, captures), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
