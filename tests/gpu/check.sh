#!/usr/bin/env bash
# GPU check: half precision against float32, then speed and memory at real sizes; one table, printed and written
# to a file (default tests/artifacts/gpu_check.md). Within 8 minutes on a CUDA machine.
#
#   bash tests/gpu/check.sh [--dry-run] [--out FILE] [--budget SECONDS] [--sections LIST] [--corrupt CHECK=nan|scale]
#   bash tests/gpu/check.sh --fetch-wheels     # on a machine with network: the packages a GPU machine lacks, as
#                                              # wheels in .gpu-wheels (or $FREEDIFF_GPU_WHEELS), to carry there
#
# Python: $FREEDIFF_GPU_PYTHON, else the first of the test venv (${FREEDIFF_VENV:-.venv}), python3, python whose
# torch sees a CUDA device (--dry-run: any torch). What it lacks of tests/gpu/packages.txt is added into a folder of
# its own under ${TMPDIR:-/tmp} (or $FREEDIFF_GPU_SITE) from .gpu-wheels when that exists, else from the index;
# a section whose imports still fail is skipped with the reason. tests/gpu/check.py --help lists the options.
set -uo pipefail
cd "$(dirname "$0")/../.."

dry=0
budget=""
fetch=0
prev=""
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry=1 ;;
    --fetch-wheels) fetch=1 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  esac
  [ "$prev" = "--budget" ] && budget=${arg%.*}
  prev=$arg
done
[ -n "$budget" ] || budget=$([ "$dry" = 1 ] && echo 900 || echo 420)  # check.py's defaults
WHEELS=${FREEDIFF_GPU_WHEELS:-.gpu-wheels}

if [ "$fetch" = 1 ]; then
  exec "${FREEDIFF_GPU_PYTHON:-python3}" tests/gpu/provision.py fetch "$WHEELS"
fi

torch_status() {  # one line: what this Python's torch is and whether it sees CUDA
  "$1" -c "import torch as t; print(f'torch {t.__version__} (CUDA build {t.version.cuda}), sees a GPU: {t.cuda.is_available()}')" \
    2>/dev/null || echo "no torch"
}

candidates=("${FREEDIFF_GPU_PYTHON:-}")
[ -z "${FREEDIFF_GPU_PYTHON:-}" ] && candidates=("${FREEDIFF_VENV:-.venv}/bin/python" python3 python)
PY=""
for py in "${candidates[@]}"; do
  command -v "$py" >/dev/null 2>&1 || continue
  if [ "$dry" = 1 ]; then
    "$py" -c "import torch" 2>/dev/null && { PY=$py; break; }
  else
    "$py" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null && { PY=$py; break; }
  fi
done
if [ -z "$PY" ]; then
  need=$([ "$dry" = 1 ] && echo "torch" || echo "torch that sees a CUDA device")
  echo "No Python here has what the check needs ($need):" >&2
  for py in "${candidates[@]}"; do
    command -v "$py" >/dev/null 2>&1 && echo "  $py: $(torch_status "$py")" >&2 || echo "  $py: not found" >&2
  done
  echo "Set FREEDIFF_GPU_PYTHON to a Python with torch$([ "$dry" = 1 ] || echo " for CUDA"), or build the test venv with" \
       "bash tests/run_tests.sh (CPU torch: enough for --dry-run only)." >&2
  exit 2
fi
echo "Python: $PY, $(torch_status "$PY")"

key=$("$PY" -c "import hashlib, sys; print(hashlib.md5(sys.executable.encode()).hexdigest()[:8])")
SITE=${FREEDIFF_GPU_SITE:-${TMPDIR:-/tmp}/freediff-gpu-site-$key}
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
if [ -d "$WHEELS" ]; then
  "$PY" tests/gpu/provision.py install "$SITE" --wheels "$WHEELS"
else
  "$PY" tests/gpu/provision.py install "$SITE"
fi
if ! "$PY" -c "import omegaconf, ldm.modules.diffusionmodules.openaimodel" 2>/dev/null; then
  echo "ldm (stable-diffusion-sdkit) and omegaconf do not import with $PY; every section needs them." >&2
  echo "Without network here: run bash tests/gpu/check.sh --fetch-wheels where there is network and bring $WHEELS along." >&2
  exit 2
fi

# the check holds itself to the budget; this only stops a run that hangs (the table keeps what ran before)
export PYTHONUNBUFFERED=1 GRADIO_ANALYTICS_ENABLED=False
timeout --kill-after=10 $((budget + 50)) "$PY" tests/gpu/check.py "$@"
rc=$?
[ "$rc" = 124 ] && echo "stopped after $((budget + 50)) s; the table holds what ran" >&2
exit $rc
