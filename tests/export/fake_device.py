#!/usr/bin/env python
"""Plays a remote device for CommandRunner tests, the way adb or ssh would be used.

  fake_device.py push MODEL DEVICE_DIR       copy the model "onto the device"
  fake_device.py run NAME DEVICE_DIR RUNS    run it there with onnxruntime and print
                                             "latency_ms: X" once per timed run
Fails (exit 1) if the model was not pushed first, as a real device would.
"""
import os
import shutil
import sys
import time


def main(argv):
    command, *args = argv
    if command == "push":
        model, device_dir = args
        os.makedirs(device_dir, exist_ok=True)
        shutil.copy(model, os.path.join(device_dir, os.path.basename(model)))
        print(f"pushed {os.path.basename(model)}")
        return 0
    if command == "run":
        name, device_dir, runs = args[0], args[1], int(args[2])
        path = os.path.join(device_dir, name)
        if not os.path.exists(path):
            print(f"no such file on device: {name}", file=sys.stderr)
            return 1
        import numpy as np
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        sess = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feeds = {}
        for value in sess.get_inputs():
            shape = [d if isinstance(d, int) else 1 for d in value.shape]
            feeds[value.name] = np.zeros(shape, np.float32 if "float" in value.type else np.int32)
        sess.run(None, feeds)
        for _ in range(runs):
            start = time.perf_counter()
            sess.run(None, feeds)
            print(f"latency_ms: {(time.perf_counter() - start) * 1e3:.4f}")
        return 0
    print(f"unknown command {command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
