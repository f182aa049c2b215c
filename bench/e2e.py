"""End-to-end latency: release of the association that sent a one-image study -> the MQTT
report received by a subscriber. Sends N synthetic DX studies one at a time with DCMTK
storescu (TCP_NODELAY=1) to `duli run` (release build, quiet_period = 0, MQTT to a local
Mosquitto), waits for each report before sending the next, and prints p50/p99 beside the
inference time the daemon measured for the same studies.

usage: bench/e2e.py [N]   (run from the repository root; needs mosquitto, dcmtk, .venv)
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = int(sys.argv[1]) if len(sys.argv) > 1 else 200


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
    subprocess.run([os.path.join(ROOT, ".venv/bin/python"), os.path.join(ROOT, "tests/tools/make_dx.py"),
                    os.path.join(work, "dx"), "--count", str(N), "--studies", str(N),
                    "--rows", "1024", "--cols", "1024"], check=True, stdout=subprocess.DEVNULL)
    files = sorted(os.path.join(work, "dx", f) for f in os.listdir(os.path.join(work, "dx")))
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
    log = open(os.path.join(work, "duli.log"), "w")
    procs.append(subprocess.Popen([duli, "run"], cwd=ROOT, env=env, stderr=log))
    wait_port(dicom_port)
    time.sleep(1.0)
    import hashlib
    latencies = []
    denv = dict(os.environ, TCP_NODELAY="1")
    try:
        for i, f in enumerate(files):
            out = subprocess.run(["dcmdump", "+P", "0020,000d", f], capture_output=True, text=True).stdout
            study = out.split("[", 1)[1].split("]", 1)[0]
            rid = hashlib.sha256(study.encode() + b"\0" + b"1").hexdigest()[:32]
            subprocess.run(["storescu", "-aec", "DULI", "127.0.0.1", str(dicom_port), f], env=denv,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            released = time.time()
            end = released + 60
            while rid not in arrivals and time.time() < end:
                time.sleep(0.002)
            if rid not in arrivals:
                raise SystemExit(f"no report for study {i} ({rid}); see {work}/duli.log")
            latencies.append(arrivals[rid] - released)
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
    print(f"{len(latencies)} one-image studies (1024x1024 DX), association release -> MQTT report "
          f"received; DCMTK storescu with TCP_NODELAY=1; duli release build, quiet_period 0")
    print(f"{'':34} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{'end to end (release -> report)':34} {pct(latencies, .5)*1e3:8.1f} {pct(latencies, .99)*1e3:8.1f} {latencies[-1]*1e3:8.1f}")
    if infer_ms:
        print(f"{'inference alone (duli infer)':34} {pct(infer_ms, .5):8.1f} {pct(infer_ms, .99):8.1f} {infer_ms[-1]:8.1f}")
        print(f"{'decode+preprocess+infer':34} {pct(pipe_ms, .5):8.1f} {pct(pipe_ms, .99):8.1f} {pipe_ms[-1]:8.1f}")
    print(f"target: p50 <= 1000 ms -> {'met' if pct(latencies, .5) <= 1.0 else 'NOT met'}")
    print(f"(work folder {work})")


if __name__ == "__main__":
    main()
