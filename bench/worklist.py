#!/usr/bin/env python3
"""Latency of the console's worklist (`GET /api/v1/studies`) with many studies.

A data directory is seeded with COUNT synthetic studies (the `seed_worklist` example:
study and instance records, nine in ten with a recorded result, one in ten of those
urgent), a radiologist account is added with `duli user add`, `duli run` is started on it and
the worklist is requested REQUESTS times over one keep-alive HTTPS connection: the
default page (200 rows), then a search and the urgent filter. Prints p50/p95/max per
query.

  .venv/bin/python bench/worklist.py --duli target/release/duli \
      --seed target/release/examples/seed_worklist [--studies 10000] [--requests 200]
"""

import argparse
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import duli_environment, free_port, stop, wait_port  # noqa: E402

PASSWORD = "bench-worklist-password"


def connection(port):
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=insecure)


def login(conn):
    body = json.dumps({"username": "bench", "password": PASSWORD})
    conn.request("POST", "/api/v1/login", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        raise SystemExit("login failed: HTTP %d" % r.status)
    for header, value in r.getheaders():
        if header.lower() == "set-cookie" and value.startswith("__Host-duli_session="):
            return value.split(";")[0]
    raise SystemExit("login: no session cookie")


def measure(conn, cookie, path, requests):
    times = []
    total = None
    for _ in range(requests):
        t0 = time.perf_counter()
        conn.request("GET", path, headers={"Cookie": cookie})
        r = conn.getresponse()
        body = r.read()
        times.append(time.perf_counter() - t0)
        if r.status != 200:
            raise SystemExit("%s: HTTP %d" % (path, r.status))
        total = json.loads(body)["total"]
    times.sort()

    def pct(p):
        return times[min(len(times) - 1, int(round(p / 100.0 * (len(times) - 1))))] * 1000

    return {"query": path, "total": total, "requests": requests,
            "p50_ms": round(pct(50), 1), "p95_ms": round(pct(95), 1),
            "max_ms": round(times[-1] * 1000, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duli", default=os.environ.get("DULI_BIN", ""))
    ap.add_argument("--seed", required=True, help="the seed_worklist example binary")
    ap.add_argument("--studies", type=int, default=10000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--work", default="")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="duli-worklist-")
    if os.path.exists(work):
        shutil.rmtree(work)
    os.makedirs(work)
    data_dir = os.path.join(work, "data")
    t0 = time.time()
    subprocess.run([args.seed, data_dir, str(args.studies)], check=True)
    print("seeded %d studies in %.1f s" % (args.studies, time.time() - t0))
    dicom_port, console_port = free_port(), free_port()
    env = duli_environment(data_dir, dicom_port, console_port)
    subprocess.run([args.duli, "user", "add", "bench", "--role", "radiologist"], env=env,
                   input=PASSWORD + "\n", text=True, check=True, stdout=subprocess.DEVNULL)
    log = open(os.path.join(work, "duli.log"), "w")
    t0 = time.time()
    proc = subprocess.Popen([args.duli, "run"], env=env, cwd=work, stdout=log, stderr=log)
    try:
        if not wait_port(console_port, proc, timeout=120):
            raise SystemExit("duli run did not start; see %s" % log.name)
        print("console up in %.1f s" % (time.time() - t0))
        conn = connection(console_port)
        cookie = login(conn)
        rows = [
            measure(conn, cookie, "/api/v1/studies", args.requests),
            measure(conn, cookie, "/api/v1/studies?q=patient12", args.requests),
            measure(conn, cookie, "/api/v1/studies?urgent=1", args.requests),
        ]
    finally:
        stop(proc)
        log.close()
    cols = ["query", "total", "requests", "p50_ms", "p95_ms", "max_ms"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
