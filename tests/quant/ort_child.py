"""Runs ONNX models in onnxruntime on inputs from an .npz and saves their outputs: started
under ``qemu-x86_64 -cpu Haswell-v4`` by test_target_cpu.py to emulate an AVX2-only CPU
(one process for all models: Python starts slowly under emulation).

Usage: python ort_child.py INPUTS.npz OUTPUTS.npz MODEL.onnx [MODEL.onnx ...]
"""
import sys

import numpy as np
import onnxruntime as ort

inputs_path, outputs_path, *model_paths = sys.argv[1:]
x = np.load(inputs_path)["x"]
outputs = {}
for i, path in enumerate(model_paths):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outputs[f"y{i}"] = session.run(None, {session.get_inputs()[0].name: x})[0]
np.savez(outputs_path, **outputs)
