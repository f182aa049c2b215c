"""Rebuilds pneumonia_xception_fp16.{xml,bin} from the pneumonia-model-package 0.3.0 wheel,
following SOURCE.md's conversion route exactly, and checks every hash on the way.

Route: Keras 3.15.1 (TensorFlow-CPU 2.21.0) loads the .keras file → wrapped as
input → model → Softmax → Model.export(format="onnx", opset_version=17) (tf2onnx 1.17.0,
onnx 1.23.2) → output renamed `probs`, batch dimension `batch` → OpenVINO 2026.4.1
convert_model → input reshaped to [1,150,150,3] → save_model(compress_to_fp16=True).
"""
import argparse
import hashlib
import pathlib
import sys
import tomllib
import zipfile

WHEEL_SHA256 = "4bb1ee80366db5de818c7255e62878871b8ec545681193f429e2575b791d3536"
KERAS_MEMBER = "pneumonia_model_package/trained_models/pneumonia_xception_model_val-acc_0.861.keras"
KERAS_SHA256 = "d7997cd1923f4d13538f02d64b6d5925e2f87a2a2db8036c074f795c41439e26"


def sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check(path: pathlib.Path, expected: str) -> None:
    got = sha256(path)
    if got != expected:
        sys.exit(f"HASH MISMATCH: {path}\n  expected {expected}\n  got      {got}")
    print(f"ok  {path.name} {got}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheel", type=pathlib.Path, required=True)
    ap.add_argument("--out", type=pathlib.Path, required=True)
    ap.add_argument("--work", type=pathlib.Path, required=True)
    a = ap.parse_args()
    check(a.wheel, WHEEL_SHA256)
    keras_path = a.work / "pneumonia_xception.keras"
    with zipfile.ZipFile(a.wheel) as z:
        keras_path.write_bytes(z.read(KERAS_MEMBER))
    check(keras_path, KERAS_SHA256)

    import keras
    import onnx
    import openvino as ov

    base = keras.models.load_model(keras_path)
    inp = keras.Input(shape=(150, 150, 3), name="input")
    logits = base(inp)
    if isinstance(logits, (list, tuple)):  # the saved functional model returns [logits]
        logits = logits[0]
    model = keras.Model(inp, keras.layers.Softmax()(logits), name="pneumonia_xception_softmax")
    import numpy as np

    model(np.zeros((1, 150, 150, 3), dtype="float32"))  # export needs a built, called model
    # The IR records the ONNX file name (rt_info input_model): keep the original one.
    onnx_path = a.work / "pneumonia_xception_fp32.onnx"
    model.export(str(onnx_path), format="onnx", opset_version=17)

    m = onnx.load(onnx_path)
    old = m.graph.output[0].name
    for node in m.graph.node:
        node.output[:] = ["probs" if o == old else o for o in node.output]
    m.graph.output[0].name = "probs"
    for t in list(m.graph.input) + list(m.graph.output):
        t.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(m, onnx_path)

    ir = ov.convert_model(str(onnx_path))
    ir.reshape({ir.inputs[0]: [1, 150, 150, 3]})
    xml = a.out / "pneumonia_xception_fp16.xml"
    ov.save_model(ir, str(xml), compress_to_fp16=True)

    manifest = tomllib.loads((a.out / "model.toml").read_text())["file"]
    check(a.out / manifest["path"], manifest["sha256"])
    check(a.out / manifest["weights"], manifest["weights_sha256"])


if __name__ == "__main__":
    main()
