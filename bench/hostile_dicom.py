"""C-ECHO latency while connections that never send an A-ASSOCIATE-RQ are held open, for
`duli run` (release build) and Orthanc side by side on loopback.

    .venv/bin/python bench/hostile_dicom.py [DULI_BINARY] [--silent 500] [--echoes 200]

Each peer is started fresh on its own loopback ports. For each scenario the script opens
the silent connections (TCP only: no byte is ever sent on them), waits a moment, then
times `--echoes` C-ECHOs, each on a new association (connect, A-ASSOCIATE, C-ECHO,
A-RELEASE: what a modality's "verify" button does), one after the other, and prints
p50 / p99 / max over the echoes answered, how many failed or took longer than `--timeout`
seconds (a scenario ends early after `--give-up` failures in a row), and how many of the
silent connections had completed the TCP handshake one second after they were started
(`open@1s`: a peer whose accept queue is full leaves the rest in progress) and how many the
peer still held open at the end (`open@end`).

Scenarios: no silent connection (baseline); `--silent` from 127.0.0.1 (the address the
echoes come from too); `--silent` spread over `--addresses` loopback addresses
(127.0.1.x), each holding fewer than duli's per-address bound.

The echo client is bench/scu.py (raw socket, TCP_NODELAY set); Orthanc runs with
TCP_NODELAY=1 in its environment (its DICOM layer is DCMTK, which leaves Nagle's
algorithm on otherwise); duli sets TCP_NODELAY on every accepted socket itself.
"""

import argparse
import os
import resource
import select
import shutil
import socket
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import start_duli, start_orthanc, stop  # noqa: E402
from scu import VERIFICATION, Association  # noqa: E402


def timed_echo(port, called, timeout):
    """Seconds for one association + C-ECHO + release, or None when it failed."""
    started = time.perf_counter()
    try:
        assoc = Association(port, called, [VERIFICATION], calling="ECHOSCU",
                            timeout=timeout)
        status = assoc.echo()
        assoc.release()
    except (OSError, RuntimeError, ConnectionError):
        return None
    took = time.perf_counter() - started
    return took if status == 0 and took <= timeout else None


def open_silent(port, count, addresses):
    """Starts `count` TCP connections to `port` (spread over `addresses` source addresses)
    without waiting for each: a peer whose accept queue is full leaves some in progress."""
    held = []
    for i in range(count):
        s = socket.socket()
        s.setblocking(False)
        if addresses:
            s.bind((addresses[i % len(addresses)], 0))
        s.connect_ex(("127.0.0.1", port))
        held.append(s)
    return held


def connected(sockets):
    """How many of `sockets` completed their TCP handshake."""
    poller = select.poll()
    for s in sockets:
        poller.register(s, select.POLLOUT)
    ready = {fd for fd, ev in poller.poll(0) if ev & select.POLLOUT}
    return sum(1 for s in sockets if s.fileno() in ready
               and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)


def still_open(sockets):
    """How many of `sockets` the peer has not closed."""
    n = 0
    for s in sockets:
        s.setblocking(False)
        try:
            n += s.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def measure(port, called, silent, addresses, echoes, timeout, give_up):
    """Opens the silent connections, then times up to `echoes` echoes (stopping after
    `give_up` failures in a row); returns (connected, still held at the end, times,
    attempts, failed)."""
    held = open_silent(port, silent, addresses)
    time.sleep(1.0)
    opened = connected(held)
    times, failed, in_a_row, attempts = [], 0, 0, 0
    for _ in range(echoes):
        attempts += 1
        t = timed_echo(port, called, timeout)
        if t is None:
            failed += 1
            in_a_row += 1
            if in_a_row >= give_up:
                break
        else:
            times.append(t)
            in_a_row = 0
    kept = still_open(held)
    for s in held:
        s.close()
    return opened, kept, times, attempts, failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("duli", nargs="?", default=os.environ.get("DULI_BIN", ""),
                        help="the duli release binary (default: $DULI_BIN)")
    parser.add_argument("--peers", default="duli,orthanc")
    parser.add_argument("--silent", type=int, default=500)
    parser.add_argument("--addresses", type=int, default=50)
    parser.add_argument("--echoes", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="an echo slower than this counts as failed (seconds)")
    parser.add_argument("--give-up", type=int, default=10,
                        help="end a scenario after this many failed echoes in a row")
    parser.add_argument("--work", default="")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.silent + 64
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    work = args.work or tempfile.mkdtemp(prefix="hostile-dicom-")
    spread = ["127.0.1.%d" % (i + 1) for i in range(args.addresses)]
    scenarios = [
        ("no silent connection", 0, []),
        ("%d silent, one address" % args.silent, args.silent, []),
        ("%d silent, %d addresses" % (args.silent, args.addresses), args.silent, spread),
    ]
    print("host: %d cores; echo client: raw socket, TCP_NODELAY=1; Orthanc: TCP_NODELAY=1; "
          "duli: sets TCP_NODELAY itself" % os.cpu_count())
    print("each echo: connect + A-ASSOCIATE + C-ECHO + A-RELEASE; %d per scenario, "
          "failed = error or over %.1f s" % (args.echoes, args.timeout))
    rows = []
    for peer in args.peers.split(","):
        root = os.path.join(work, peer)
        if peer == "duli":
            started = start_duli(root, os.path.abspath(args.duli) if args.duli else "")
            called = "DULI"
        elif peer == "orthanc":
            started = start_orthanc(root)
            called = "ORTHANC"
        else:
            print("unknown peer %s" % peer)
            continue
        if started is None:
            continue
        proc, dicom_port, _, log = started
        try:
            timed_echo(dicom_port, called, args.timeout)  # warm-up
            for name, silent, addresses in scenarios:
                result = measure(dicom_port, called, silent, addresses, args.echoes,
                                 args.timeout, args.give_up)
                rows.append((peer, name) + result)
                time.sleep(1.0)
        finally:
            stop(proc)
            log.close()
    print()
    fmt = "%-8s %-26s %7s %7s %9s %9s %9s %7s %7s"
    print(fmt % ("peer", "scenario", "open@1s", "open@end", "p50 ms", "p99 ms", "max ms",
                 "echoes", "failed"))
    for peer, name, opened, kept, times, attempts, failed in rows:
        if times:
            p50, p99, worst = (1000 * percentile(times, 50), 1000 * percentile(times, 99),
                               1000 * max(times))
            figures = ("%.2f" % p50, "%.2f" % p99, "%.2f" % worst)
        else:
            figures = ("-", "-", "-")
        print(fmt % ((peer, name, opened, kept) + figures + (attempts, failed)))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
