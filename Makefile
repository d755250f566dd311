# Every target sets up what it needs first (scripts/setup.sh is idempotent and quick when nothing changed).
PYTHON := .venv/bin/python
export MUJOCO_GL ?= egl

.PHONY: setup setup-dev quickstart test lint bench

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh dev,libero

# The main job (scripts/quickstart.sh): the scripted experts generate the quickstart dataset in
# MuJoCo (skipped when complete), episode 0 is rendered with its labels, the tiny model trains and
# exports a checkpoint, and eval.py rolls it out on every task's 50 fixed init states and prints
# the success table.
quickstart: setup
	bash scripts/quickstart.sh

test: setup-dev
	$(PYTHON) -m pytest -q

lint: setup-dev
	$(PYTHON) -m ruff check .

bench: setup-dev
	$(PYTHON) benchmarks/loader_throughput.py
	$(PYTHON) benchmarks/env_throughput.py
	$(PYTHON) benchmarks/policy_latency.py
	$(PYTHON) benchmarks/server_latency.py
