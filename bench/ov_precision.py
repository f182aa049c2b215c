"""Plain OpenVINO (Python wheel) at one precision over image files, prepared as the daemon
prepares them for the model (8-bit grey, PIL NEAREST resize, the manifest's
normalisation): the peer `make bench-infer` sets beside `duli infer`.

usage: python ov_precision.py MODEL_TOML PRECISION FILE...
PRECISION: f32 | bf16 (INFERENCE_PRECISION_HINT) | int8 (the INT8 build of
scripts/setup-int8.sh, run with an f32 hint). Prints one JSON object: images, wall
seconds from the first file to the last result (model compile excluded), mean and median
infer milliseconds, and the positive-class probability per file.
"""
import json
import statistics
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import openvino as ov
from PIL import Image

manifest_path, precision = Path(sys.argv[1]), sys.argv[2]
files = sys.argv[3:]
m = tomllib.loads(manifest_path.read_text())
spec = m["input"]
xml = manifest_path.parent / m["file"]["path"]
if precision == "int8":
    root = Path(__file__).resolve().parent.parent
    d = root / ".cache/models" / m["name"] / "int8"
    xml = d / json.loads((d / "int8.json").read_text())["xml"]


def tensor(path):
    img = Image.open(path).convert("L")
    img = img.resize((spec["width"], spec["height"]), Image.NEAREST if spec["resize"] == "nearest_pil" else Image.BILINEAR)
    v = np.asarray(img, dtype=np.float32)
    n = spec["normalise"]
    x = v / (255.0 / (n["max"] - n["min"])) + n["min"]
    x = np.repeat(x[..., None], spec["channels"], axis=2)[None]
    if spec["layout"] == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


core = ov.Core()
model = core.read_model(xml)
compiled = core.compile_model(model, "CPU", {
    "PERFORMANCE_HINT": "LATENCY",
    "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
})
hint = compiled.get_property("INFERENCE_PRECISION_HINT")
actual = hint.to_string() if hasattr(hint, "to_string") else str(hint)
req = compiled.create_infer_request()
req.infer({0: tensor(files[0])})
times, probs = [], []
start = time.perf_counter()
for f in files:
    x = tensor(f)
    t = time.perf_counter()
    out = req.infer({0: x})
    times.append((time.perf_counter() - t) * 1000)
    probs.append(float(np.asarray(list(out.values())[0]).reshape(-1)[-1]))
wall = time.perf_counter() - start
print(json.dumps({
    "precision": precision, "runtime_precision": actual, "images": len(files), "wall_s": wall,
    "infer_ms_mean": statistics.fmean(times), "infer_ms_median": statistics.median(times),
    "p_positive": probs,
}))
