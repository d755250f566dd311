"""Lightning training checkpoints that are never truncated and never resumed from changed bytes.

Every checkpoint is written to a temporary file and renamed into place, with its sha256 recorded
beside it (`last.ckpt.sha256`, `sha256sum -c` format); `resume_checkpoint` verifies it before a
run continues from it. Why: a flipped byte in last.ckpt used to resume silently (one run exported
a weight of 166712), and `--resume` without a last.ckpt silently started over from step 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from vla.digest import sha256_file

log = logging.getLogger(__name__)


class ResumeError(RuntimeError):
    """`resume` found no checkpoint to continue from, or one that changed since it was written."""


DIGEST_SUFFIX = ".sha256"


def digest_path(checkpoint: Path) -> Path:
    """Where the sha256 of a Lightning checkpoint is recorded: `last.ckpt.sha256`."""
    return checkpoint.with_name(checkpoint.name + DIGEST_SUFFIX)


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def _write_durably(path: Path, data: bytes | memoryview) -> Path:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each Lightning checkpoint to a temporary file and renames it into place, so a run
    killed mid-write never leaves a truncated `last.ckpt`; and records its sha256 beside it
    (`last.ckpt.sha256`, `sha256sum -c` format), which `resume` checks before loading it.

    The checkpoint is serialized in memory first, as Lightning's own writer does, so the digest
    costs no second read of the file. Both temporary files are written before either is renamed;
    a kill between the two renames leaves the new digest pending in `.last.ckpt.sha256.partial`,
    which `verify_training_checkpoint` accepts (and renames into place) when it matches.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        data = buffer.getbuffer()
        digest = hashlib.sha256(data).hexdigest()
        checkpoint_file = _write_durably(_partial(path), data)
        digest_file = _write_durably(
            _partial(digest_path(path)), f"{digest}  {path.name}\n".encode()
        )
        os.replace(checkpoint_file, path)
        os.replace(digest_file, digest_path(path))

    def remove_checkpoint(self, path: str | Path) -> None:
        super().remove_checkpoint(path)
        digest_path(Path(path)).unlink(missing_ok=True)


def verify_training_checkpoint(path: Path) -> None:
    """The checkpoint must hold the bytes recorded when it was written; a ResumeError naming
    it, both digests and the newest intact periodic checkpoint otherwise. One written before
    digests were recorded is resumed with a warning."""
    recorded = digest_path(path)
    if not recorded.is_file():
        log.warning(
            "%s: no %s beside it (written before checkpoint digests were recorded); resuming "
            "without verifying it",
            path, recorded.name,
        )  # fmt: skip
        return
    expected = _recorded_digest(recorded)
    actual = sha256_file(path)
    if actual == expected:
        return
    pending = _partial(recorded)
    if pending.is_file() and _recorded_digest(pending) == actual:  # killed between the renames
        with contextlib.suppress(FileNotFoundError):  # another rank may have renamed it first
            os.replace(pending, recorded)
        return
    periodic = {
        int(match[1]): candidate
        for candidate in path.parent.glob("step=*.ckpt")
        if (match := re.fullmatch(r"step=(\d+)", candidate.stem))
    }
    intact = next(
        (
            periodic[step]
            for step in sorted(periodic, reverse=True)
            if digest_path(periodic[step]).is_file()
            and _recorded_digest(digest_path(periodic[step])) == sha256_file(periodic[step])
        ),
        None,
    )
    fix = (
        f"To resume from {intact.name}, the newest intact checkpoint, copy it and "
        f"{digest_path(intact).name} over {path.name} and {recorded.name}"
        if intact is not None
        else "No intact periodic checkpoint is left: start the run anew without --resume"
    )
    raise ResumeError(
        f"{path}: sha256 {actual} does not match {expected or 'nothing'}, recorded in "
        f"{recorded} when it was written: the file changed since (disk corruption, an "
        f"interrupted copy) and resuming would continue from damaged weights. {fix}."
    )


def _recorded_digest(path: Path) -> str:
    """The hex digest a `.sha256` file records (its first word)."""
    return next(iter(path.read_text().split()), "")


def resume_checkpoint(run_dir: Path) -> Path:
    """The verified checkpoint `resume` continues from: the run's last.ckpt."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise ResumeError(
            f"{last}: no checkpoint to resume from (resuming continues the run's last.ckpt; "
            f"output_dir and name choose the run). Run without --resume to start it anew, or "
            f"set output_dir/name to the run to continue."
        )
    verify_training_checkpoint(last)
    return last
