#!/usr/bin/env bash
# Wheels the GPU machine lacks, for its Python 3.12 on manylinux x86_64, into gpu_wheels/
# (git-ignored; it travels with a device run as a carried path). Needs the package registry,
# so run it here, before the GPU window:
#
#   bash scripts/gpu_wheels.sh && du -sh gpu_wheels     # ~40 MB: PyAV, websockets
#
# Only what scripts/gpu_check.sh imports is fetched: PyAV, which the tests' dataset helpers
# import, and websockets, which the fast-path tests' server check imports. The simulator
# (mujoco, robosuite) is not needed: the check runs no rollouts.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-.venv/bin/python}"
rm -rf gpu_wheels && mkdir -p gpu_wheels
"$python" -m pip download --quiet --only-binary=:all: --no-deps \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d gpu_wheels av websockets
ls -la gpu_wheels
