"""Datasets for vla: LeRobotDataset-v3 files, their reader and writer, stats, and a torch Dataset.

This package imports nothing else from the project, so tools that only move data around (the
LIBERO importer, `vla-data info`) stay usable without the model or the simulator.
"""

from data.features import Feature, default_features
from data.reader import DatasetError, LeRobotDatasetReader
from data.writer import LeRobotDatasetWriter

__all__ = [
    "DatasetError",
    "Feature",
    "LeRobotDatasetReader",
    "LeRobotDatasetWriter",
    "default_features",
]
