# Every target sets up what it needs first (scripts/setup.sh is idempotent and quick when nothing changed).
PYTHON := .venv/bin/python
export MUJOCO_GL ?= egl
QUICKSTART_DIR ?= outputs/quickstart

.PHONY: setup setup-dev quickstart test lint bench

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh dev,libero

# The main job. Until the simulator, training and evaluation land, it runs the data path end to end:
# a LIBERO-layout HDF5 file -> import -> LeRobotDataset v3 -> validated summary.
quickstart: setup
	$(PYTHON) -m data.cli synthetic-libero $(QUICKSTART_DIR)/KITCHEN_SCENE1_put_the_bowl_on_the_plate_demo.hdf5 --demos 10 --length 60
	$(PYTHON) -m data.cli import-libero $(QUICKSTART_DIR)/*.hdf5 --out $(QUICKSTART_DIR)/dataset
	$(PYTHON) -m data.cli info $(QUICKSTART_DIR)/dataset

test: setup-dev
	$(PYTHON) -m pytest -q

lint: setup-dev
	$(PYTHON) -m ruff check .

bench: setup-dev
	$(PYTHON) benchmarks/loader_throughput.py
