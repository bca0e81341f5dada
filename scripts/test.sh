#!/usr/bin/env bash
# Fresh clone -> environment, data, then the whole test suite (slow tests included).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" for the quick subset.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/python -m pytest -n 2 --durations=25 "$@"
