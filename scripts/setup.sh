#!/usr/bin/env bash
# Prepares a fresh clone: a virtual environment with the pinned requirements, and the real
# Fashion-MNIST data (Debian package dataset-fashion-mnist) when it is missing.
# Sourced by scripts/run_default.sh and scripts/test.sh; safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
STAMP=.venv/.requirements.sha256
WANT="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing requirements.txt into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r requirements.txt
  echo "$WANT" > "$STAMP"
fi
# Extra: TensorFlow for .tflite export (export/tflite_export.py); +1.4 GB in .venv, 21 s to install
# (measured); NO_TFLITE=1 skips it and the tests that convert then skip.
if [ -z "${NO_TFLITE:-}" ]; then .venv/bin/python -m pip install --quiet -r requirements-tflite.txt; fi

# Debian packages: the real Fashion-MNIST data, and qemu-user on x86, with which the int8
# tests run onnxruntime on an emulated AVX2 CPU without VNNI (tests/quant/test_target_cpu.py).
DATA_DIR="${FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
PACKAGES=()
if [ ! -f "$DATA_DIR/t10k-labels-idx1-ubyte.gz" ]; then
  echo "[setup] Fashion-MNIST not in $DATA_DIR: installing Debian package dataset-fashion-mnist"
  PACKAGES+=(dataset-fashion-mnist)
fi
if [ "$(uname -m)" = x86_64 ] && ! command -v qemu-x86_64 >/dev/null; then
  echo "[setup] installing qemu-user (emulates a CPU without VNNI for the int8 tests)"
  PACKAGES+=(qemu-user)
fi
if [ ! -f /usr/share/doc/opencv-doc/examples/data/vtest.avi ]; then
  echo "[setup] installing opencv-doc (real stills and videos: data/real_images.py)"
  PACKAGES+=(opencv-doc)
fi
if [ "${#PACKAGES[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${PACKAGES[@]}"
fi

# Real pretrained TFLite models (issue 17) into a cache outside git; sha256-checked.
bash "$ROOT/scripts/fetch_tflite_models.sh"
bash "$ROOT/scripts/fetch_models.sh"   # real pretrained ONNX models (issue 17), sha256-checked
