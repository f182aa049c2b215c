#!/usr/bin/env python3
"""/healthz latency while idle TLS sockets are held against the console.

An attacker on the LAN opens `--idle` TLS connections (default 1,000) from `--addresses`
source addresses (127.0.0.1 … 127.0.0.250 on loopback), completes each TLS handshake and
never sends a request; whenever the server closes one (header-read timeout), it opens it
again at once, so the number held stays at the target. Meanwhile a monitoring client on
another address (127.0.0.251) asks `GET /healthz` every `--interval` seconds over a fresh
TLS connection, timed from connect to the last byte of the answer (a failure or more than
10 s counts as 10 s).

The release daemon is started twice: with its defaults (header-read timeout 10 s: idle
sockets are closed and reopened, the attacker churns) and with the header-read timeout set
to 300 s, the most the configuration allows (every idle socket stays open for the whole run: the pure "held" case). Orthanc
(Debian's 1.10.1) takes the same load on its plain HTTP port where it is installed: idle
TCP connections that never send a request, `/system` with basic authentication instead
of `/healthz` (its HTTPS, CivetWeb with a PEM certificate, reset every handshake here).

Prints p50/p99/max latency, failures, how many idle sockets were open (min/median over
the probes), reconnects and the server's peak RSS.

  .venv/bin/python bench/hostile_https.py [--binary target/release/duli] [--seconds 30]
"""

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import resource
import shutil
import socket
import ssl
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import start_duli, start_orthanc, status_kib, stop  # noqa: E402

PROBE_ADDRESS = "127.0.0.251"
PROBE_TIMEOUT = 10.0


_CONTEXT = []


def client_context():
    """One shared client context (building one loads the system's CA store: slow)."""
    if not _CONTEXT:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        _CONTEXT.append(ctx)
    return _CONTEXT[0]


def probe_once(port, path, auth, tls=True):
    """Seconds for one GET over a fresh (TLS) connection, or None when it failed."""
    t = time.perf_counter()
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT,
                                       source_address=(PROBE_ADDRESS, 0))
        s = client_context().wrap_socket(raw, server_hostname="localhost") if tls else raw
        with s:
            head = "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" % path
            if auth:
                head += "Authorization: Basic %s\r\n" % auth
            s.sendall((head + "\r\n").encode())
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except (ssl.SSLEOFError, ConnectionResetError):
                    break
                if not chunk:
                    break
                data += chunk
        if not data.startswith(b"HTTP/1.1 200"):
            return None
    except OSError:
        return None
    return time.perf_counter() - t


def prober(port, path, auth, tls, seconds, interval, out):
    """Runs in its own process, so the attacker's event loop does not skew the timing."""
    results = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        results.append(probe_once(port, path, auth, tls))
        time.sleep(interval)
    out.put(results)


class Attacker:
    """Holds `count` idle (TLS) connections from `addresses` source addresses."""

    def __init__(self, port, count, addresses, tls=True):
        self.port, self.count, self.addresses = port, count, addresses
        self.tls = tls
        self.open = 0
        self.reconnects = 0
        self.failures = 0
        self.samples = []
        self.stopping = False

    async def hold(self, i):
        src = "127.0.0.%d" % (1 + i % self.addresses)
        first = True
        while not self.stopping:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    "127.0.0.1", self.port, ssl=client_context() if self.tls else None,
                    server_hostname="localhost" if self.tls else None,
                    local_addr=(src, 0)), 15)
            except (OSError, asyncio.TimeoutError, ssl.SSLError):
                self.failures += 1
                await asyncio.sleep(0.2)
                continue
            if not first:
                self.reconnects += 1
            first = False
            self.open += 1
            try:
                # Never send a request; wait for the server to give up.
                while not self.stopping:
                    try:
                        data = await asyncio.wait_for(reader.read(1024), 0.5)
                    except asyncio.TimeoutError:
                        continue
                    if not data:
                        break
            except (OSError, ssl.SSLError):
                pass
            finally:
                self.open -= 1
                writer.close()

    async def sample(self):
        while not self.stopping:
            self.samples.append(self.open)
            await asyncio.sleep(0.25)

    async def run(self, ready_timeout, measure):
        tasks = [asyncio.create_task(self.hold(i)) for i in range(self.count)]
        sampler = asyncio.create_task(self.sample())
        t = time.monotonic()
        while self.open < self.count and time.monotonic() - t < ready_timeout:
            await asyncio.sleep(0.1)
        held_at_start = self.open
        self.samples.clear()
        result = await measure()
        self.stopping = True
        for task in tasks + [sampler]:
            task.cancel()
        await asyncio.gather(*tasks, sampler, return_exceptions=True)
        return held_at_start, result


def measure_under_load(port, path, auth, args, rss_pid, tls=True):
    """(latencies, held at start, attacker) for one server."""
    attacker = Attacker(port, args.idle, args.addresses, tls)

    async def measure():
        out = multiprocessing.Queue()
        p = multiprocessing.Process(target=prober,
                                    args=(port, path, auth, tls, args.seconds, args.interval, out))
        p.start()
        peak = 0
        while p.is_alive():
            await asyncio.sleep(0.2)
            peak = max(peak, status_kib(rss_pid, "VmRSS") or 0)
            if not out.empty():
                break
        results = await asyncio.get_running_loop().run_in_executor(None, out.get)
        p.join()
        return results, peak

    held, (results, peak) = asyncio.run(attacker.run(60, measure))
    return results, held, attacker, peak


def summary(name, results, held, attacker, peak_kib):
    times = sorted(PROBE_TIMEOUT if r is None else r for r in results)
    failed = sum(1 for r in results if r is None)
    n = len(times)

    def pct(p):
        return times[min(n - 1, int(round(p / 100.0 * (n - 1))))] * 1000

    samples = attacker.samples or [0]
    return {
        "server": name,
        "probes": n,
        "p50_ms": round(pct(50), 1),
        "p99_ms": round(pct(99), 1),
        "max_ms": round(times[-1] * 1000, 1),
        "failed": failed,
        "idle_held_at_start": held,
        "idle_open_min": min(samples),
        "idle_open_median": int(statistics.median(samples)),
        "reconnects": attacker.reconnects,
        "connect_failures": attacker.failures,
        "peak_rss_mb": round(peak_kib / 1024, 1),
    }


def run_duli(args, work, label, settings):
    started = start_duli(os.path.join(work, label), args.binary, settings)
    if started is None:
        return None
    proc, _, console_port, log = started
    try:
        # Wait for the console itself.
        t = time.monotonic()
        while probe_once(console_port, "/healthz", None) is None:
            if time.monotonic() - t > 30:
                print("%s: the console did not answer" % label)
                return None
            time.sleep(0.2)
        results, held, attacker, peak = measure_under_load(
            console_port, "/healthz", None, args, proc.pid)
        return summary(label, results, held, attacker, peak)
    finally:
        stop(proc)
        log.close()


def run_orthanc(args, work):
    """Orthanc's plain HTTP port (its default; no TLS) under the same idle load."""
    if not (shutil.which("Orthanc") or os.access("/usr/sbin/Orthanc", os.X_OK)):
        print("orthanc: not available (apt orthanc)")
        return None
    started = start_orthanc(os.path.join(work, "orthanc"), {
        # Connections come from 127.0.0.2 …: "remote" to Orthanc, and it then listens on
        # every interface, so it asks for a password.
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {"bench": "bench-password"},
    })
    if started is None:
        return None
    proc, _, http_port, log = started
    auth = base64.b64encode(b"bench:bench-password").decode()
    try:
        t = time.monotonic()
        while probe_once(http_port, "/system", auth, tls=False) is None:
            if time.monotonic() - t > 30:
                print("orthanc: /system did not answer")
                return None
            time.sleep(0.2)
        results, held, attacker, peak = measure_under_load(
            http_port, "/system", auth, args, proc.pid, tls=False)
        return summary("orthanc (plain HTTP, /system)", results, held, attacker, peak)
    finally:
        stop(proc)
        log.close()


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default=os.path.join(here, "..", "target", "release", "duli"))
    ap.add_argument("--idle", type=int, default=1000, help="idle TLS sockets held")
    ap.add_argument("--addresses", type=int, default=250, help="source addresses (≤ 250)")
    ap.add_argument("--seconds", type=float, default=30, help="probing time per server")
    ap.add_argument("--interval", type=float, default=0.1, help="pause between probes")
    ap.add_argument("--no-orthanc", action="store_true")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    args.addresses = max(1, min(250, args.addresses))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.idle + 256:
        sys.exit("RLIMIT_NOFILE %d is too low for %d sockets" % (hard, args.idle))
    rows = []
    with tempfile.TemporaryDirectory(prefix="hostile-https-") as work:
        base = {"DULI_DEVICE__ALLOW_ROOT": "true"}
        r = run_duli(args, work, "duli (defaults)", base)
        if r:
            rows.append(r)
        held = dict(base, DULI_CONSOLE__HEADER_READ_TIMEOUT_SECS="300")
        r = run_duli(args, work, "duli (header-read 300 s)", held)
        if r:
            rows.append(r)
        if not args.no_orthanc:
            r = run_orthanc(args, work)
            if r:
                rows.append(r)
    print("/healthz latency while %d idle TLS sockets from %d addresses are held "
          "(%.0f s of probes every %.2f s; %d cores)"
          % (args.idle, args.addresses, args.seconds, args.interval, os.cpu_count()))
    cols = ["server", "probes", "p50_ms", "p99_ms", "max_ms", "failed", "idle_held_at_start",
            "idle_open_min", "idle_open_median", "reconnects", "connect_failures",
            "peak_rss_mb"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
