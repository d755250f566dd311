#!/usr/bin/env bash
# The one-shot GPU check (scripts/gpu_check.py): run from a fresh checkout on the GPU machine,
# which has torch, transformers, lightning, timm, pytest ... preinstalled, no network, and lacks
# a few packages this repo imports (PyAV for the test fixtures). Those travel as wheels in
# gpu_wheels/ (made here by scripts/gpu_wheels.sh) and are installed first, without an index.
#
#   bash scripts/gpu_check.sh                 # on the GPU machine; results in $OUT or outputs/gpu_check
#   bash scripts/gpu_check.sh --cpu-smoke     # tiny config on a CPU (what CI runs)
#
# PYTHON picks the interpreter (default python3). The whole check is bounded to 8 minutes; every
# stage it finished is in the results file even when it is cut short.
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if compgen -G "gpu_wheels/*.whl" > /dev/null; then
    # a system Python (PEP 668) refuses plain installs: fall back to the user site
    "$python" -m pip install --no-index --no-deps --quiet gpu_wheels/*.whl \
        || "$python" -m pip install --no-index --no-deps --quiet --user \
            --break-system-packages gpu_wheels/*.whl \
        || echo "warning: installing gpu_wheels/ failed; stages that need them will say so" >&2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "$python" scripts/gpu_check.py "$@"
