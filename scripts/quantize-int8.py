"""Post-training INT8 quantization of a model's OpenVINO IR with NNCF, calibrated on
labelled chest X-rays, into a folder with a build record (int8.json) that the daemon
checks before loading the result.

usage: quantize-int8.py MODEL_TOML OUT_DIR IMAGE...

The images are prepared as the daemon prepares them for this model (8-bit grey, resized
with PIL's NEAREST, grey copied into the channels, the manifest's normalisation).
"""
import hashlib
import json
import sys
import tomllib
from pathlib import Path

import nncf
import numpy as np
import openvino as ov
from PIL import Image

# What the build does; scripts/setup-int8.sh rebuilds when a record names another recipe.
# MIXED: symmetric weights, asymmetric activations. On the shipped model the PERFORMANCE
# preset (symmetric activations) moved one of the 16 samples by 0.32 and across the
# threshold; MIXED stays within 0.10 with no flip.
RECIPE = "nncf-ptq-mixed-1"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensor(path, spec):
    img = Image.open(path).convert("L")
    method = Image.NEAREST if spec["resize"] == "nearest_pil" else Image.BILINEAR
    if spec.get("crop", "none") == "center_square":
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    img = img.resize((spec["width"], spec["height"]), method)
    v = np.asarray(img, dtype=np.float32)
    norm = spec["normalise"]
    if norm["kind"] == "range":
        x = v / (255.0 / (norm["max"] - norm["min"])) + norm["min"]
        x = np.repeat(x[..., None], spec["channels"], axis=2)
    else:
        c = spec["channels"]
        mean = np.resize(np.asarray(norm["mean"], np.float32), c)
        std = np.resize(np.asarray(norm["std"], np.float32), c)
        x = (np.repeat((v / 255.0)[..., None], c, axis=2) - mean) / std
    x = x[None]  # NHWC
    if spec["layout"] == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32)


def main():
    manifest_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    images = [Path(p) for p in sys.argv[3:]]
    if not images:
        sys.exit("quantize-int8: no calibration images")
    m = tomllib.loads(manifest_path.read_text())
    xml = manifest_path.parent / m["file"]["path"]
    if sha256(xml) != m["file"]["sha256"]:
        sys.exit(f"quantize-int8: {xml} does not match the manifest's SHA-256")
    spec = m["input"]
    data = [tensor(p, spec) for p in sorted(images)]
    core = ov.Core()
    model = core.read_model(xml)
    model.reshape({spec["name"]: list(data[0].shape)})
    quantized = nncf.quantize(
        model,
        nncf.Dataset(data),
        subset_size=len(data),
        preset=nncf.QuantizationPreset.MIXED,
    )
    out.mkdir(parents=True, exist_ok=True)
    name = m["name"].replace("-", "_") + "_int8"
    ov.save_model(quantized, out / f"{name}.xml")
    record = {
        "recipe": RECIPE,
        "source_sha256": m["file"]["sha256"],
        "xml": f"{name}.xml",
        "xml_sha256": sha256(out / f"{name}.xml"),
        "bin": f"{name}.bin",
        "bin_sha256": sha256(out / f"{name}.bin"),
        "nncf": nncf.__version__,
        "openvino": ov.__version__,
        "calibration": {
            "images": len(data),
            "files": [p.name for p in sorted(images)],
            "preset": "mixed",
        },
    }
    (out / "int8.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"quantize-int8: {out / record['xml']} ({len(data)} calibration images)")


if __name__ == "__main__":
    main()
