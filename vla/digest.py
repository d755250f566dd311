"""Content digests of files: one sha256 helper for every place that records or checks one
(checkpoint manifests, training-checkpoint digests, the pretrained weights' sources)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: Path | str) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks (checkpoints can be many GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
