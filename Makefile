# Every target sets up what it needs first (scripts/setup.sh is idempotent and quick when nothing changed).
PYTHON := .venv/bin/python
export MUJOCO_GL ?= egl
QUICKSTART_DIR ?= outputs/quickstart

.PHONY: setup setup-dev quickstart test lint bench

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh dev,libero

# The main job. Until evaluation lands: the scripted experts generate the quickstart dataset (with
# reasoning labels) in MuJoCo, `vla-data info` validates and summarizes it, one episode is rendered
# with its labels drawn on the frames, and the tiny model trains and exports a checkpoint.
quickstart: setup
	.venv/bin/vla-data generate --suite quickstart --episodes-per-task 10 --out $(QUICKSTART_DIR)/dataset
	.venv/bin/vla-data info $(QUICKSTART_DIR)/dataset
	.venv/bin/vla-data render-episode $(QUICKSTART_DIR)/dataset --episode 0 --out $(QUICKSTART_DIR)/episode0.mp4
	$(PYTHON) train.py data.path=$(QUICKSTART_DIR)/dataset trainer.max_steps=300

test: setup-dev
	$(PYTHON) -m pytest -q

lint: setup-dev
	$(PYTHON) -m ruff check .

bench: setup-dev
	$(PYTHON) benchmarks/loader_throughput.py
	$(PYTHON) benchmarks/env_throughput.py
