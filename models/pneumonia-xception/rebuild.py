"""Rebuilds pneumonia_xception_fp16.{xml,bin} from the pneumonia-model-package 0.3.0 wheel,
following SOURCE.md's conversion route exactly, and checks every hash on the way.

Route: Keras 3.15.1 (TensorFlow-CPU 2.21.0) loads the .keras file → wrapped as
input → model → Softmax → Model.export(format="onnx", opset_version=17) (tf2onnx 1.17.0,
onnx 1.23.2) → output renamed `probs`, batch dimension `batch` → OpenVINO 2026.4.1
convert_model → input reshaped to [1,150,150,3] → save_model(compress_to_fp16=True).

The last bits of the weights depend on the CPU: the export folds each batch normalisation
into its convolution with TensorFlow's reciprocal square root, which starts from the CPU's
approximate `rsqrt` instruction, and that approximation differs between CPU makers. The
rebuilt `.bin` then differs from the pinned one in a few hundred half-precision values, each
by one unit in the last place. `rounding/<SHA-256 of the rebuilt .bin>.txt` lists, for
each rounding seen, which values to move up or down by that one unit (positions and
directions only, no weight values); the result must still hash to the pinned SHA-256.
`--record-rounding PINNED.bin` writes such a list for this CPU from a pinned copy.
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


HERE = pathlib.Path(__file__).resolve().parent


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
    ap.add_argument(
        "--record-rounding",
        type=pathlib.Path,
        help="a pinned .bin: after the rebuild, record this CPU's rounding against it",
    )
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
    weights = a.out / manifest["weights"]
    if a.record_rounding:
        record_rounding(weights, a.record_rounding, HERE / "rounding")
    correct_rounding(weights, manifest["weights_sha256"], HERE / "rounding")
    check(weights, manifest["weights_sha256"])


def correct_rounding(weights: pathlib.Path, pinned: str, folder: pathlib.Path) -> None:
    """Moves the values this CPU rounded otherwise by one unit, when its rounding is known."""
    got = sha256(weights)
    if got == pinned:
        return
    known = folder / f"{got}.txt"
    if not known.is_file():
        sys.exit(
            f"the rebuilt weights {weights.name} (SHA-256 {got}) are not the pinned ones "
            f"({pinned}) and this CPU's rounding is not among {folder}/*.txt: "
            "TensorFlow's reciprocal square root differs between CPU makers. Copy the IR "
            "from a shared folder instead (DULI_SHARED_DIR=..., then make models), or, "
            "holding a pinned copy, run rebuild.py with --record-rounding PINNED.bin"
        )
    values = bytearray(weights.read_bytes())
    target = None
    for n, line in enumerate(known.read_text().splitlines(), 1):
        if line.startswith("# to "):
            target = line.split()[-1]
        if not line or line.startswith("#"):
            continue
        index, step = line.split()
        i, d = int(index), int(step)
        if d not in (1, -1) or not 0 <= i < len(values) // 2:
            sys.exit(f"{known}:{n}: not an index and a step of +1 or -1: {line!r}")
        v = int.from_bytes(values[2 * i : 2 * i + 2], "little") + d
        if not 0 <= v <= 0xFFFF:
            sys.exit(f"{known}:{n}: the step leaves the half-precision range")
        values[2 * i : 2 * i + 2] = v.to_bytes(2, "little")
    if target != pinned:
        sys.exit(f"{known} leads to {target}, not to the pinned {pinned}")
    tmp = weights.with_suffix(".rounded")
    tmp.write_bytes(values)
    tmp.replace(weights)
    print(f"ok  {weights.name}: this CPU's rounding corrected ({known.name})")


def record_rounding(weights: pathlib.Path, pinned: pathlib.Path, folder: pathlib.Path) -> None:
    """Writes the list that turns this CPU's rebuilt weights into the pinned ones."""
    mine, theirs = weights.read_bytes(), pinned.read_bytes()
    if len(mine) != len(theirs):
        sys.exit(f"{pinned} is not the same network: {len(theirs)} bytes, rebuilt {len(mine)}")
    lines = [f"# from {sha256(weights)}", f"# to   {sha256(pinned)}",
             "# <index of the half-precision value> <+1 or -1 to its bit pattern>"]
    for i in range(0, len(mine), 2):
        a = int.from_bytes(mine[i : i + 2], "little")
        b = int.from_bytes(theirs[i : i + 2], "little")
        if a != b:
            if abs(a - b) != 1:
                sys.exit(f"value {i // 2} differs by more than rounding: {a:#06x} against {b:#06x}")
            lines.append(f"{i // 2} {b - a:+d}")
    folder.mkdir(exist_ok=True)
    out = folder / f"{sha256(weights)}.txt"
    out.write_text("\n".join(lines) + "\n")
    print(f"recorded {len(lines) - 3} rounding differences in {out}")


if __name__ == "__main__":
    main()
