#!/usr/bin/env bash
# GPU check (issue 19): the tiny teacher (run.py --exp=train_teacher_tiny) and the tiny
# blockwise distillation (tests/core/distill_child.py) on the accelerator and on the CPU,
# printing the median step time of each, compilation excluded (from the times in their
# metrics.jsonl), and whether the accelerator's students match the CPU's.
# usage: scripts/gpu_check.sh [STEPS]   (default 60; needs a jax with CUDA in $PYTHON)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
STEPS="${1:-60}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT

echo "jax: $("$PY" -c 'import jax; print(jax.__version__, jax.devices())')"
"$PY" -c 'import jax, sys; sys.exit(jax.default_backend() == "cpu")' \
  || { echo "no accelerator visible to JAX: install jax[cuda12] into $PY's environment"; exit 1; }

run_on() {   # run_on PLATFORM: both programs with JAX_PLATFORMS=PLATFORM ('' = default)
  local dir="$OUT/${1:-accelerator}"
  mkdir -p "$dir"
  JAX_PLATFORMS="$1" TEACHER_CACHE="$dir/teachers" "$PY" run.py --exp=train_teacher_tiny \
    --workdir="$dir/teacher" --exp.train.steps="$STEPS" --exp.train.log_every=1 \
    > "$dir/teacher.log" 2>&1 || { tail -20 "$dir/teacher.log"; exit 1; }
  JAX_PLATFORMS="$1" "$PY" tests/core/distill_child.py "$dir/distill" "$dir/students.npz" \
    "$STEPS" > "$dir/distill.log" 2>&1 || { tail -20 "$dir/distill.log"; exit 1; }
}
run_on ""
run_on cpu

"$PY" - "$OUT" <<'PYTHON'
import glob, json, sys
import numpy as np

out = sys.argv[1]


def step_seconds(pattern):
    """Median time between consecutive logged steps, the first five (compilation) left out."""
    (path,) = glob.glob(pattern, recursive=True)
    with open(path) as f:
        times = [json.loads(line)["time"] for line in f if '"time"' in line]
    return float(np.median(np.diff(times[5:])))


print(f"{'program':28s} {'accelerator ms':>15s} {'cpu ms':>10s} {'speed-up':>9s}")
for name, pattern in (("tiny teacher (batch 32)", "{}/teacher/train/metrics.jsonl"),
                      ("tiny distillation (2 x 16)", "{}/distill/**/metrics.jsonl")):
    fast = step_seconds(pattern.format(f"{out}/accelerator"))
    slow = step_seconds(pattern.format(f"{out}/cpu"))
    print(f"{name:28s} {fast * 1e3:15.2f} {slow * 1e3:10.2f} {slow / fast:8.1f}x")
a, b = np.load(f"{out}/accelerator/students.npz"), np.load(f"{out}/cpu/students.npz")
diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a.files)
print(f"students, accelerator vs cpu: max difference {diff:.2e}")
PYTHON
