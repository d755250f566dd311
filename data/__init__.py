"""Datasets for vla: LeRobotDataset-v3 files, their reader and writer, stats, and a torch Dataset.

This package imports nothing else from the project, so tools that only move data around (the
LIBERO importer, `vla-data info`) stay usable without the model or the simulator. The frame
schema (keys, reasoning fields, `ObservationSpec`) is `data.schema`.

The names below load on first use (PEP 562), so `import data.schema` stays plain Python: the
numpy-only robot side reads the schema without importing pyarrow.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DatasetError": "data.reader",
    "Feature": "data.features",
    "LeRobotDatasetReader": "data.reader",
    "LeRobotDatasetWriter": "data.writer",
    "default_features": "data.features",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
