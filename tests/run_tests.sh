#!/usr/bin/env bash
# Builds the pinned test venv (CPU torch, no CUDA build) if needed, then runs the whole suite.
# Usage: bash tests/run_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=${FREEDIFF_VENV:-.venv}
STAMP="$VENV/.freediff-requirements"
if [ ! -x "$VENV/bin/python" ] || ! cmp -s tests/requirements.txt "$STAMP"; then
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.13.0
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -r tests/requirements.txt
  cp tests/requirements.txt "$STAMP"
fi
# anyio 3 beside the venv's anyio 4: the API tests run under both (tests/test_api_stack.py)
ANYIO3="$VENV/anyio3"
if [ ! -f "$ANYIO3/anyio/__init__.py" ]; then
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --target "$ANYIO3" anyio==3.7.1
fi
# the browser test needs Debian's chromium (no browser download is possible); install when missing
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser test will be skipped"
fi
export GRADIO_ANALYTICS_ENABLED=False
exec "$VENV/bin/python" -m pytest tests -q -p no:cacheprovider "$@"
