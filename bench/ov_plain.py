"""Plain OpenVINO (Python wheel) on the same IR and input tensor as infer_bench: median
latency of a synchronous infer request, CPU, LATENCY hint.

usage: python ov_plain.py MODEL.xml TENSOR.f32 [RUNS]
"""
import statistics
import sys
import time

import numpy as np
import openvino as ov

xml, tensor = sys.argv[1], sys.argv[2]
runs = int(sys.argv[3]) if len(sys.argv) > 3 else 20
core = ov.Core()
model = core.read_model(xml)
compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
shape = list(compiled.inputs[0].shape)
x = np.fromfile(tensor, dtype="<f4").reshape(shape)
req = compiled.create_infer_request()
req.infer({0: x})
times = []
for _ in range(runs):
    t = time.perf_counter()
    req.infer({0: x})
    times.append((time.perf_counter() - t) * 1000)
print(f"plain_openvino_infer_ms {statistics.median(times):.2f}")
