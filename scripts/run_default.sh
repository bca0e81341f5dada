#!/usr/bin/env bash
# Fresh clone -> environment, data, then the default experiment (python run.py).
# Extra arguments go to run.py, e.g. scripts/run_default.sh --exp=train_teacher_tiny
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/python run.py "$@"
