#!/usr/bin/env bash
# Builds the pinned test venv if needed (Python 3.10/3.11; torch from PyTorch's CPU-only index when it is reachable),
# then runs the whole suite.
# Usage: bash tests/run_tests.sh [pytest args]
# Environment: PYTHON (the interpreter to build the venv with), FREEDIFF_VENV (the venv's folder, default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FREEDIFF_VENV:-.venv}
STAMP="$VENV/.freediff-requirements"
TORCH=torch==2.13.0
CPU_INDEX=https://download.pytorch.org/whl/cpu
START=$SECONDS

say() { echo "[run_tests $((SECONDS - START))s] $*"; }

# pip's own lines, one per package, instead of minutes of silence; the whole log stays in $VENV/pip.log
pip_install() {
  local rc=0
  "$VENV/bin/pip" install --disable-pip-version-check "$@" 2>&1 | tee -a "$VENV/pip.log" \
    | awk '/^(Collecting|Downloading|Processing|Installing collected|Successfully installed)/ { print "    " substr($0, 1, 110); fflush() }' \
    || rc=$?
  if [ "$rc" -ne 0 ]; then
    tail -n 25 "$VENV/pip.log"
    return 1
  fi
}

if [ ! -x "$VENV/bin/python" ] || ! cmp -s tests/requirements.txt "$STAMP"; then
  if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
  else
    PY=$(command -v python3.11 || command -v python3.10 || command -v python3 || true)
  fi
  # the pins (torch 2.13, numpy 1.26, scikit-image 0.21, …) have wheels for CPython 3.10 and 3.11 only
  if [ -z "$PY" ] || ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] not in ((3, 10), (3, 11)))' 2>/dev/null; then
    echo "tests/run_tests.sh: needs Python 3.10 or 3.11 (found: $( [ -n "$PY" ] && "$PY" --version 2>&1 || echo none)); install python3.11 with venv (apt install python3.11-venv, brew install python@3.11, pyenv install 3.11) or set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  say "building the test venv in $VENV with $("$PY" --version 2>&1) (a few minutes, once)"
  "$PY" -m venv "$VENV"
  : >"$VENV/pip.log"
  if "$VENV/bin/python" -c "import urllib.request; urllib.request.urlopen('$CPU_INDEX/torch/', timeout=5)" 2>/dev/null; then
    say "$TORCH from PyTorch's CPU-only index ($CPU_INDEX, about 200 MB)"
    pip_install --index-url "$CPU_INDEX" "$TORCH" || {
      say "the CPU-only index failed; $TORCH from the default index"
      pip_install "$TORCH"
    }
  else
    say "PyTorch's CPU-only index is not reachable: $TORCH from the default index (pip's configuration; on Linux x86-64 PyPI's wheel pulls the CUDA runtime, gigabytes)"
    pip_install "$TORCH"
  fi
  say "the pinned test requirements (tests/requirements.txt, no dependency resolution)"
  pip_install --no-deps -r tests/requirements.txt
  cp tests/requirements.txt "$STAMP"
  say "venv ready: $("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "CUDA" if torch.version.cuda else "CPU-only")')"
fi
# anyio 3 beside the venv's anyio 4: the API tests run under both (tests/test_api_stack.py)
ANYIO3="$VENV/anyio3"
if [ ! -f "$ANYIO3/anyio/__init__.py" ]; then
  say "anyio 3.7.1 beside the venv (the API tests run under anyio 3 and 4)"
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
  say "installing Debian's chromium for the browser test"
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
