"""Exports torchxrayvision's densenet121-res224-all to ONNX and records it in model.toml.

Run on a machine with torch and torchxrayvision (NOT on the build machines: torch from
PyPI pulls gigabytes of CUDA wheels). Pin what you used in model.toml's `version`.

    pip install torch torchxrayvision==1.2.* onnx
    python convert.py            # writes densenet121-res224-all.onnx beside this file

The network is exported WITHOUT its sigmoid and operating-point normalisation
(`op_norm`): the output `logits` are raw; the manifest applies a sigmoid and uses the
model's calibrated operating points (`model.op_threshs`) as per-label thresholds, which
gives the same positive/negative decisions as xrv's `op_norm(...) > 0.5`.
"""
import hashlib
import pathlib
import re

import torch
import torchxrayvision as xrv

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    model = xrv.models.DenseNet(weights="densenet121-res224-all")
    threshs = [float(t) for t in model.op_threshs]
    labels = list(model.pathologies)
    model.op_threshs = None
    model.apply_sigmoid = False
    model.eval()
    out = HERE / "densenet121-res224-all.onnx"
    torch.onnx.export(
        model,
        torch.zeros(1, 1, 224, 224),
        out,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
    )
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    text = (HERE / "model.toml").read_text()
    text = re.sub(r'(?m)^sha256 = "".*$', f'sha256 = "{sha}"', text, count=1)
    # Thresholds: one `threshold = t` after each label's `name = ...` line, in model order.
    blocks = text.split("[[labels]]")
    assert len(blocks) - 1 == len(labels) == len(threshs), "label count changed"
    for i, t in enumerate(threshs, start=1):
        blocks[i] = re.sub(r"(?m)^threshold = .*\n", "", blocks[i])
        blocks[i] = re.sub(r'(?m)^(name = ".*")$', rf"\1\nthreshold = {t:.6f}", blocks[i], count=1)
    (HERE / "model.toml").write_text("[[labels]]".join(blocks))
    print(out, sha)
    print("labels:", labels)


if __name__ == "__main__":
    main()
