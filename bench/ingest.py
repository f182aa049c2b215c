#!/usr/bin/env python3
"""Ingest benchmark driver (run through bench/ingest.sh).

Sends the same set of DX files with DCMTK storescu to each receiver on
loopback, with 1 and with N parallel associations (the set split across N
storescu processes), and prints wall time, files/s, MB/s and the receiver's
peak resident memory, with ratios against Orthanc and storescp + sync.

Receivers (each starts fresh, with its storage on the same disk, for every run):
  storescp       DCMTK storescp (--fork), files land in the page cache
  storescp+sync  the same run, timed until a final `sync` returns
  orthanc        Orthanc 1.10 from a JSON config, SyncStorageArea (fsync per file),
                 TCP_NODELAY=1 (its DICOM layer is DCMTK)
  duli           `duli run` (release build), fsync per instance
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

PEER_ENV = dict(os.environ, TCP_NODELAY="1")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def http_json(port, path):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
        return json.load(r)


def tree_pids(pid):
    pids = [pid]
    i = 0
    while i < len(pids):
        p = pids[i]
        i += 1
        try:
            for task in os.listdir("/proc/%d/task" % p):
                with open("/proc/%d/task/%s/children" % (p, task)) as f:
                    pids.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def status_kib(pid, field):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Polls the summed VmRSS of a process tree; also keeps the root's VmHWM."""

    def __init__(self, pid, interval=0.02):
        self.pid, self.interval = pid, interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            total = sum(status_kib(p, "VmRSS") for p in tree_pids(self.pid))
            self.peak_kib = max(self.peak_kib, total)
            self._stop.wait(self.interval)

    def stop(self):
        self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmHWM"))
        self._stop.set()
        self._thread.join()
        return self.peak_kib


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def split(files, n):
    return [files[i::n] for i in range(n)]


def send(files, aec, port, assocs):
    """Runs `assocs` storescu processes in parallel; returns (seconds, failures)."""
    procs = []
    start = time.perf_counter()
    for part in split(files, assocs):
        if not part:
            continue
        cmd = ["storescu", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port)] + part
        procs.append(
            subprocess.Popen(cmd, env=PEER_ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        )
    failures = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            failures.append(err.decode(errors="replace")[-500:])
    return time.perf_counter() - start, failures


def settle():
    subprocess.run(["sync"], check=True)
    time.sleep(0.5)


# ---------------------------------------------------------------- receivers


def run_storescp(files, assocs, work):
    """Yields two results: page cache, and with the final sync timed in."""
    out = os.path.join(work, "storescp")
    os.makedirs(out)
    port = free_port()
    proc = subprocess.Popen(
        ["storescp", "--fork", "-aet", "STORESCP", "-od", out, str(port)],
        env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_port(port, proc):
            raise RuntimeError("storescp did not start")
        sampler = RssSampler(proc.pid)
        seconds, failures = send(files, "STORESCP", port, assocs)
        start_sync = time.perf_counter()
        subprocess.run(["sync"], check=True)
        sync_seconds = time.perf_counter() - start_sync
        peak = sampler.stop()
        received = sum(len(fs) for _, _, fs in os.walk(out))
        return [
            ("storescp", seconds, peak, received, failures),
            ("storescp+sync", seconds + sync_seconds, peak, received, failures),
        ]
    finally:
        stop(proc)


def start_orthanc(root, overrides=None):
    """Starts Orthanc with its storage under `root` and `overrides` merged into its
    configuration; returns (proc, dicom port, http port, log file), or None (with the
    reason printed) when it is missing or does not start."""
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    if not os.access(binary, os.X_OK):
        print("orthanc: not available (apt orthanc)")
        return None
    os.makedirs(root)
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": os.path.join(root, "storage"),
        "IndexDirectory": os.path.join(root, "index"),
        "StorageCompression": False,
        "SyncStorageArea": True,
        "Plugins": [],
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "SaveJobs": False,
    }
    config.update(overrides or {})
    config_path = os.path.join(root, "orthanc.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    log = open(os.path.join(root, "orthanc.log"), "w")
    # Orthanc's DICOM layer is DCMTK: it needs TCP_NODELAY=1 as well.
    proc = subprocess.Popen([binary, "--no-jobs", config_path], cwd=root, env=PEER_ENV,
                            stdout=log, stderr=log)
    if not (wait_port(http_port, proc) and wait_port(dicom_port, proc)):
        log.flush()
        with open(log.name, errors="replace") as f:
            print("orthanc: did not start; its log ends:\n" + f.read()[-800:])
        stop(proc)
        log.close()
        return None
    return proc, dicom_port, http_port, log


def run_orthanc(files, assocs, work):
    started = start_orthanc(os.path.join(work, "orthanc"))
    if started is None:
        return []
    proc, dicom_port, http_port, log = started
    try:
        sampler = RssSampler(proc.pid)
        seconds, failures = send(files, "ORTHANC", dicom_port, assocs)
        peak = sampler.stop()
        received = http_json(http_port, "/statistics")["CountInstances"]
        return [("orthanc", seconds, peak, received, failures)]
    finally:
        stop(proc)
        log.close()


def duli_environment(data_dir, dicom_port, console_port):
    """The environment of a `duli` command on loopback ports with its data in `data_dir`
    (other DULI_SECTION__KEY overrides of the caller's environment left out)."""
    env = {k: v for k, v in os.environ.items() if not (k.startswith("DULI_") and "__" in k)}
    env.update({
        "DULI_DICOM__BIND": "127.0.0.1",
        "DULI_DICOM__PORT": str(dicom_port),
        "DULI_CONSOLE__BIND": "127.0.0.1",
        "DULI_CONSOLE__PORT": str(console_port),
        "DULI_DEVICE__DATA_DIR": data_dir,
        "DULI_DEVICE__ALLOW_ROOT": "true",
    })
    return env


def start_duli(root, binary, settings=None):
    """Starts `duli run` with its data under `root` and `settings` (DULI_SECTION__KEY
    overrides); returns (proc, dicom port, console port, log file), or None (with the
    reason printed) when it is not built or does not start."""
    if not binary or not os.access(binary, os.X_OK):
        print("duli: not available (no release binary; `cargo build --release`)")
        return None
    os.makedirs(root)
    dicom_port, console_port = free_port(), free_port()
    env = duli_environment(os.path.join(root, "data"), dicom_port, console_port)
    env["DULI_DICOM__QUIET_PERIOD"] = "0"
    env.update(settings or {})
    log = open(os.path.join(root, "duli.log"), "w")
    proc = subprocess.Popen([binary, "run"], env=env, cwd=root, stdout=log, stderr=log)
    if not wait_port(dicom_port, proc):
        log.flush()
        with open(log.name, errors="replace") as f:
            tail = f.read()[-800:].strip()
        print("duli: not available (`duli run` did not start)%s"
              % ("; its log ends:\n" + tail if tail else ""))
        stop(proc)
        log.close()
        return None
    return proc, dicom_port, console_port, log


def duli_stored(console_port):
    """duli's count of stored instances (its /metrics, over the console's self-signed
    HTTPS), or None."""
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    url = "https://127.0.0.1:%d/metrics" % console_port
    try:
        with urllib.request.urlopen(url, timeout=10, context=insecure) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("duli_instances_stored_total "):
                    return int(float(line.split()[1]))
    except (OSError, http.client.HTTPException):
        pass
    return None


def run_duli(files, assocs, work, binary):
    started = start_duli(os.path.join(work, "duli"), binary)
    if started is None:
        return []
    proc, dicom_port, console_port, log = started
    try:
        sampler = RssSampler(proc.pid)
        seconds, failures = send(files, "DULI", dicom_port, assocs)
        peak = sampler.stop()
        return [("duli", seconds, peak, duli_stored(console_port), failures)]
    finally:
        stop(proc)
        log.close()


def disk_ceiling(work, count, size=10 * 1024 * 1024):
    """Writes `count` files of `size` bytes with an fsync each; returns seconds."""
    d = os.path.join(work, "disk")
    os.makedirs(d)
    data = os.urandom(size)
    start = time.perf_counter()
    for i in range(count):
        fd = os.open(os.path.join(d, "f%05d" % i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    seconds = time.perf_counter() - start
    shutil.rmtree(d)
    return seconds


# ---------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("--work", required=True)
    parser.add_argument("--duli", default="")
    parser.add_argument("--assocs", default="1,4")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--receivers", default="storescp,orthanc,duli")
    args = parser.parse_args()

    files = sorted(os.path.join(args.data_dir, f) for f in os.listdir(args.data_dir)
                   if f.endswith(".dcm"))
    total_bytes = sum(os.path.getsize(f) for f in files)
    mb = total_bytes / 1e6
    receivers = args.receivers.split(",")
    assoc_list = [int(a) for a in args.assocs.split(",")]
    print("set: %d files, %.1f MB (%.2f MB each); DCMTK peers (storescu, storescp, Orthanc) run with TCP_NODELAY=1; "
          "median of %d run(s)" % (len(files), mb, mb / len(files), args.repeats))
    # kind -> assocs -> list of (seconds, peak_kib, received)
    results = {}
    for assocs in assoc_list:
        for receiver in receivers:
            for _ in range(args.repeats):
                work = os.path.join(args.work, "run")
                shutil.rmtree(work, ignore_errors=True)
                os.makedirs(work)
                settle()
                if receiver == "storescp":
                    rows = run_storescp(files, assocs, work)
                elif receiver == "orthanc":
                    rows = run_orthanc(files, assocs, work)
                elif receiver == "duli":
                    rows = run_duli(files, assocs, work, args.duli)
                else:
                    sys.exit("unknown receiver %s" % receiver)
                shutil.rmtree(work, ignore_errors=True)
                for kind, seconds, peak, received, failures in rows:
                    for failure in failures:
                        print("%s: storescu failed: %s" % (kind, failure.strip()))
                    if received is not None and received != len(files):
                        print("%s: WARNING received %s of %d files"
                              % (kind, received, len(files)))
                    results.setdefault(kind, {}).setdefault(assocs, []).append(
                        (seconds, peak, received))
                    print("  %-14s %d assoc: %.2f s" % (kind, assocs, seconds), flush=True)
                if not rows:
                    break

    settle()
    disk_s = statistics.median(disk_ceiling(args.work, len(files))
                               for _ in range(args.repeats))
    disk_mbs = len(files) * 10 * 1024 * 1024 / 1e6 / disk_s

    def med(kind, assocs):
        runs = results.get(kind, {}).get(assocs)
        if not runs:
            return None
        seconds = statistics.median(r[0] for r in runs)
        peak = max(r[1] for r in runs)
        return seconds, peak

    print()
    header = ("receiver", "assoc", "seconds", "files/s", "MB/s", "peak RSS MB",
              "vs orthanc", "vs storescp+sync")
    fmt = "%-14s %5s %8s %8s %8s %11s %10s %16s"
    print(fmt % header)
    for assocs in assoc_list:
        base_o = med("orthanc", assocs)
        base_s = med("storescp+sync", assocs)
        for kind in ("storescp", "storescp+sync", "orthanc", "duli"):
            m = med(kind, assocs)
            if m is None:
                continue
            seconds, peak = m
            ratio = lambda b: "%.2fx" % (b[0] / seconds) if b else "-"
            print(fmt % (kind, assocs, "%.2f" % seconds, "%.1f" % (len(files) / seconds),
                         "%.0f" % (mb / seconds), "%.0f" % (peak / 1024),
                         ratio(base_o), ratio(base_s)))
    print("%-14s %5s %8s %8s %8s" % ("disk ceiling", "-", "%.2f" % disk_s,
                                     "%.1f" % (len(files) / disk_s), "%.0f" % disk_mbs))
    print("(disk ceiling: %d files of 10 MiB written with an fsync each; ratios are "
          "speed-ups: >1 means faster than the reference)" % len(files))


if __name__ == "__main__":
    main()
