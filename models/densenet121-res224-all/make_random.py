#!/usr/bin/env python3
"""Builds a RANDOMLY INITIALISED network with the input/output layout of torchxrayvision's
densenet121-res224-all (input "input" [batch,1,224,224] float32, output "logits" [batch,18])
and a manifest for it, using only the `onnx` package and numpy (torch from PyPI drags in
gigabytes of CUDA wheels).

It is NOT DenseNet-121 and NOT the trained model: its outputs mean nothing. It exists so the
test suite proves that the daemon loads any model from its manifest (NCHW, one channel,
centre crop, linear resize, [-1024, 1024] normalisation, sigmoid over 18 logits).

usage: make_random.py OUT_DIR      (writes OUT_DIR/random.onnx and OUT_DIR/model.toml)
"""
import hashlib
import pathlib
import re
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = pathlib.Path(__file__).resolve().parent


def build(seed: int = 1234) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def init(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        init("w1", (8, 1, 7, 7), 1e-4), init("b1", (8,), 0.1),
        init("w2", (16, 8, 3, 3), 0.1), init("b2", (16,), 0.1),
        init("w3", (16, 18), 0.5), init("b3", (18,), 0.1),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], strides=[4, 4], pads=[3, 3, 3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "densenet121_res224_all_layout_random",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 18])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="duli-make-random")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / "random.onnx"
    onnx.save(build(), onnx_path)
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    text = (HERE / "model.toml").read_text()
    text = re.sub(r'(?m)^path = ".*"$', 'path = "random.onnx"', text, count=1)
    text = re.sub(r'(?m)^sha256 = "".*$', f'sha256 = "{sha}"', text, count=1)
    text = re.sub(r'(?m)^version = "(.*)"$', r'version = "\1-RANDOM-WEIGHTS"', text, count=1)
    (out / "model.toml").write_text(text)
    print(onnx_path, sha)


if __name__ == "__main__":
    main()
