"""End-to-end latency: release of the association that sent a one-image study -> the MQTT
report received by a subscriber. Sends N synthetic DX studies (inside the model's intended
use: chest AP, patients aged 3) one at a time with DCMTK storescu (TCP_NODELAY=1) to
`duli run` (release build, quiet_period = 0, MQTT to a local Mosquitto), waits for each
report before sending the next, and prints p50/p99 beside the inference time the daemon
measured for the same studies. Then, with --burst B, B more studies in one association
(a modality or PACS catching up), timed from the first byte to the last report:
studies per hour.

usage: bench/e2e.py [N] [--rows R --cols C] [--heatmap cam|occlusion] [--burst B] [--keep]
  --heatmap cam runs the default model with class-activation heatmaps made with the
  result (a manifest copy with [heatmap] method = "cam"); occlusion (the shipped
  manifest's) makes them after the result.
(run from the repository root; needs mosquitto, dcmtk, .venv)
"""
import argparse
import json
import os
import socket
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = argparse.ArgumentParser()
ARGS.add_argument("n", nargs="?", type=int, default=200)
ARGS.add_argument("--rows", type=int, default=1024)
ARGS.add_argument("--cols", type=int, default=1024)
ARGS.add_argument("--heatmap", choices=["cam", "occlusion"], default="occlusion")
ARGS.add_argument("--burst", type=int, default=0)
ARGS.add_argument("--keep", action="store_true", help="keep the generated studies and the store")
OPTS = ARGS.parse_args()
N = OPTS.n
MODEL = os.path.join(ROOT, "models/pneumonia-xception/model.toml")


def cam_manifest(work):
    """A copy of the default manifest with class-activation heatmaps, its files absolute."""
    text = open(MODEL).read()
    here = os.path.dirname(MODEL)
    for key in ("path", "weights"):
        text = text.replace(f'{key} = "', f'{key} = "{here}/', 1)
    text = text.replace('method = "occlusion"', 'method = "cam"', 1)
    out = os.path.join(work, "model-cam.toml")
    open(out, "w").write(text)
    return out


def make_studies(out, n, seed):
    subprocess.run([os.path.join(ROOT, ".venv/bin/python"), os.path.join(ROOT, "tests/tools/make_dx.py"),
                    out, "--count", str(n), "--studies", str(n), "--seed", str(seed),
                    "--rows", str(OPTS.rows), "--cols", str(OPTS.cols)], check=True, stdout=subprocess.DEVNULL)
    return sorted(os.path.join(out, f) for f in os.listdir(out))


def report_id(path, secret):
    """The report id the cloud sees for the first result of the study in `path`: the
    device's report id (SHA-256 of study UID, 0, version) keyed by the site secret."""
    import hashlib
    import hmac
    out = subprocess.run(["dcmdump", "+P", "0020,000d", path], capture_output=True, text=True).stdout
    study = out.split("[", 1)[1].split("]", 1)[0]
    local = hashlib.sha256(study.encode() + b"\0" + b"1").hexdigest()[:32]
    return hmac.new(secret, b"report\0" + local.encode(), hashlib.sha256).hexdigest()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


def main():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    duli = os.environ.get("DULI_BIN", os.path.join(target, "release", "duli"))
    if not os.path.exists(duli):
        raise SystemExit(f"{duli} not built: cargo build --release -p duli")
    work = tempfile.mkdtemp(prefix="duli-e2e-")
    files = make_studies(os.path.join(work, "dx"), N, 1)
    burst = make_studies(os.path.join(work, "burst"), OPTS.burst, 2) if OPTS.burst else []
    mq_port, dicom_port, console_port = free_port(), free_port(), free_port()
    with open(os.path.join(work, "mosquitto.conf"), "w") as f:
        f.write(f"listener {mq_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    procs = [subprocess.Popen(["mosquitto", "-c", os.path.join(work, "mosquitto.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    wait_port(mq_port)
    arrivals = {}
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(mq_port), "-t",
                            "duli/+/+/reports"], stdout=subprocess.PIPE, text=True)
    procs.append(sub)

    def read():
        for line in sub.stdout:
            t = time.time()
            try:
                arrivals[json.loads(line)["report_id"]] = t
            except (ValueError, KeyError):
                pass

    threading.Thread(target=read, daemon=True).start()
    env = dict(os.environ, DULI_DEVICE__DATA_DIR=os.path.join(work, "data"),
               DULI_DICOM__PORT=str(dicom_port), DULI_CONSOLE__PORT=str(console_port),
               DULI_DICOM__QUIET_PERIOD="0", DULI_MQTT__ENABLED="true",
               DULI_MQTT__PORT=str(mq_port), DULI_MQTT__TLS="false", DULI_LOG="warn",
               DULI_DEVICE__ALLOW_ROOT="true")
    if OPTS.heatmap == "cam":
        env["DULI_INFERENCE__MODEL"] = cam_manifest(work)
    log = open(os.path.join(work, "duli.log"), "w")
    procs.append(subprocess.Popen([duli, "run"], cwd=ROOT, env=env, stderr=log))
    wait_port(dicom_port)
    time.sleep(1.0)
    secret = open(os.path.join(work, "data", "site_secret"), "rb").read()
    latencies = []
    burst_s = None
    denv = dict(os.environ, TCP_NODELAY="1")
    try:
        for i, f in enumerate(files):
            rid = report_id(f, secret)
            subprocess.run(["storescu", "-aec", "DULI", "127.0.0.1", str(dicom_port), f], env=denv,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            released = time.time()
            end = released + 60
            while rid not in arrivals and time.time() < end:
                time.sleep(0.002)
            if rid not in arrivals:
                raise SystemExit(f"no report for study {i} ({rid}); see {work}/duli.log")
            latencies.append(arrivals[rid] - released)
        if burst:
            want = {report_id(f, secret) for f in burst}
            start = time.time()
            subprocess.run(["storescu", "-aec", "DULI", "127.0.0.1", str(dicom_port), *burst], env=denv,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            end = time.time() + 600
            while not want <= arrivals.keys() and time.time() < end:
                time.sleep(0.01)
            if not want <= arrivals.keys():
                raise SystemExit(f"burst: {len(want - arrivals.keys())} reports missing; see {work}/duli.log")
            burst_s = max(arrivals[r] for r in want) - start
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()
    latencies.sort()
    def pct(v, q):
        return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]
    # The inference step alone on the same images (offline tool, same engine and model).
    sample = files[: min(20, len(files))]
    out = subprocess.run([duli, "infer", *sample], cwd=ROOT, capture_output=True, text=True).stdout
    infer_ms, pipe_ms = [], []
    for line in out.splitlines():
        t = json.loads(line).get("timings_ms", {})
        if "infer" in t:
            infer_ms.append(t["infer"])
            pipe_ms.append(t.get("decode", 0) + t.get("preprocess", 0) + t["infer"])
    infer_ms.sort()
    pipe_ms.sort()
    print(f"{len(latencies)} one-image studies ({OPTS.cols}x{OPTS.rows} DX, 16 bits allocated), association "
          f"release -> MQTT report received; DCMTK storescu with TCP_NODELAY=1; duli release build, "
          f"quiet_period 0; heatmaps: {OPTS.heatmap}")
    print(f"{'':34} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{'end to end (release -> report)':34} {pct(latencies, .5)*1e3:8.1f} {pct(latencies, .99)*1e3:8.1f} {latencies[-1]*1e3:8.1f}")
    if infer_ms:
        print(f"{'inference alone (duli infer)':34} {pct(infer_ms, .5):8.1f} {pct(infer_ms, .99):8.1f} {infer_ms[-1]:8.1f}")
        print(f"{'decode+preprocess+infer':34} {pct(pipe_ms, .5):8.1f} {pct(pipe_ms, .99):8.1f} {pipe_ms[-1]:8.1f}")
    print(f"target: p50 <= 150 ms, p99 <= 300 ms -> "
          f"{'met' if pct(latencies, .5) <= 0.15 and pct(latencies, .99) <= 0.3 else 'NOT met'}")
    if burst_s:
        print(f"burst of {len(burst)} studies in one association: last report after {burst_s:.1f} s "
              f"-> {len(burst) / burst_s * 3600:,.0f} studies/hour")
    # The studies and the daemon's store are GBs at 2800x2800: removed unless --keep; the
    # daemon's log stays.
    if not OPTS.keep:
        for bulky in ("dx", "burst", "data"):
            shutil.rmtree(os.path.join(work, bulky), ignore_errors=True)
    print(f"(work folder {work}{'' if OPTS.keep else ', studies and store removed; --keep keeps them'})")


if __name__ == "__main__":
    main()
