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
# Forge's gradio 4 / fastapi 0.104 / pydantic 2 beside the venv's A1111 stack: the Forge leg runs with it first on the path
FORGE_OVERLAY="$VENV/forge-overlay"
FORGE_STAMP="$FORGE_OVERLAY/.freediff-requirements"
if ! cmp -s tests/requirements-forge.txt "$FORGE_STAMP"; then
  rm -rf "$FORGE_OVERLAY"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --target "$FORGE_OVERLAY" -r tests/requirements-forge.txt
  cp tests/requirements-forge.txt "$FORGE_STAMP"
fi
# the browser test needs Debian's chromium (no browser download is possible); install when missing
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser test will be skipped"
fi
export GRADIO_ANALYTICS_ENABLED=False
if [ "$#" -gt 0 ]; then  # chosen tests: the A1111 leg, or the Forge leg with FREEDIFF_HOST=forge
  if [ "${FREEDIFF_HOST:-}" = forge ]; then export PYTHONPATH="$FORGE_OVERLAY${PYTHONPATH:+:$PYTHONPATH}"; fi
  exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
fi
# the A1111 leg (stand-in of v1.10.1, gradio 3.41), then the Forge leg (Forge's stand-in, gradio 4.40); both always run
status=0
"$VENV/bin/python" -m pytest tests -q -p no:cacheprovider --ignore=tests/forge || status=1
FREEDIFF_HOST=forge PYTHONPATH="$FORGE_OVERLAY${PYTHONPATH:+:$PYTHONPATH}" "$VENV/bin/python" -m pytest tests/forge -q -p no:cacheprovider || status=1
exit $status
