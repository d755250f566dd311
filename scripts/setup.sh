#!/usr/bin/env bash
# Sets up everything the project needs in ./.venv on a fresh Debian machine with Python 3.11.
#
#   bash scripts/setup.sh            # core install (quickstart)
#   bash scripts/setup.sh dev,libero # what the test suite needs
#
# Re-running is cheap: the install is skipped when pyproject.toml and the extras are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
venv=".venv"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python="python3"

if ! "$python" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))'; then
    echo "error: Python >= 3.11 is needed, but '$python' is $("$python" --version 2>&1)." >&2
    echo "       Install python3.11 (apt-get install python3.11 python3.11-venv) or set PYTHON=/path/to/python3.11." >&2
    exit 1
fi

# MuJoCo renders offscreen through EGL: Mesa's llvmpipe on a CPU machine, NVIDIA's EGL on a GPU one.
egl_packages=(libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0)
missing=()
for package in "${egl_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "==> installing EGL rendering packages: ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "error: MuJoCo's offscreen rendering needs these Debian packages: ${missing[*]}" >&2
        echo "       Run: sudo apt-get install -y ${missing[*]}" >&2
        echo "       then run this script again." >&2
        exit 1
    fi
fi

if [[ ! -x "$venv/bin/python" ]]; then
    # A fresh install unpacks torch's CUDA libraries (~8.5 GB with everything else): running out
    # of disk half way leaves a broken venv and pip's bare "No space left on device".
    need_gb=10
    free_gb=$(( $(df -Pk . | awk 'NR == 2 {print $4}') / 1024 / 1024 ))
    if (( free_gb < need_gb )); then
        echo "error: installing into $PWD/$venv needs about $need_gb GB of free disk, but only" >&2
        echo "       $free_gb GB is free there (df -h $PWD). Free some space and run this again." >&2
        exit 1
    fi
    echo "==> creating virtual environment $venv"
    "$python" -m venv "$venv"
fi

target="."
[[ -n "$extras" ]] && target=".[$extras]"
stamp="$venv/.installed"
want="$(cat pyproject.toml | sha256sum | cut -d' ' -f1) $target"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "==> $venv is up to date ($target)"
    exit 0
fi

echo "==> installing $target into $venv (first time: torch with its CUDA libraries, a few GB)"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# torch and torchvision are resolved together from the registry: a CPU-only torch wheel next to a
# registry torchvision breaks torchvision's compiled ops at import time (DESIGN.md).
"$venv/bin/python" -m pip install --quiet --progress-bar off -e "$target"
"$venv/bin/python" - <<'PY'
import torch, torchvision, mujoco, robosuite  # noqa: F401  (fail here, not in the middle of a job)
print(f"==> torch {torch.__version__}, torchvision {torchvision.__version__}, mujoco {mujoco.__version__}")
PY
# The packaged ImageNet weights, converted once to safetensors and checked (vla/pretrained.py).
"$venv/bin/python" -m vla.pretrained
echo "$want" > "$stamp"
