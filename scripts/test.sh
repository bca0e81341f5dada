#!/usr/bin/env bash
# Fresh clone -> environment, data, then the whole test suite (slow tests included).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow" for the quick subset.
# --dist worksteal: an idle worker takes queued tests from the busy one, so the few
# minutes-long end-to-end tests do not leave one core idle at the end.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec .venv/bin/python -m pytest -n 2 --dist worksteal --durations=25 "$@"
