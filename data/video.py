"""mp4 encoding and decoding of camera streams through PyAV (FFmpeg).

Video is the compact option for large datasets (~10x smaller than PNG frames); it is lossy, so
round trips are close, not exact. Images in parquet stay the default for small, exact datasets.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

# First codec that this FFmpeg build has wins: H.264 is fast to encode on a CPU and decodes
# anywhere; AV1 (what LeRobot uses) is the fallback.
PREFERRED_CODECS = ("libx264", "libsvtav1", "h264", "mpeg4")


def pick_codec() -> str:
    for codec in PREFERRED_CODECS:
        if codec in av.codecs_available:
            try:
                av.codec.Codec(codec, "w")
            except Exception:  # noqa: BLE001 - present but not an encoder in this build
                continue
            return codec
    raise RuntimeError(f"none of the video encoders {PREFERRED_CODECS} is in this PyAV build")


def encode_video(frames: np.ndarray, path: Path, fps: int, codec: str | None = None) -> None:
    """Encode uint8 frames (T, H, W, 3) to an mp4 at `path`, one frame per 1/fps seconds."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {frames.shape}"
        )
    codec = codec or pick_codec()
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        if codec in ("libx264", "h264"):
            stream.options = {"crf": "18", "g": "2"}  # short GOP: cheap random access for training
        elif codec == "libsvtav1":
            stream.options = {"crf": "30", "g": "2", "preset": "8"}
        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = index
            container.mux(stream.encode(video_frame))
        container.mux(stream.encode())


def decode_video(
    path: Path, from_timestamp: float = 0.0, to_timestamp: float | None = None
) -> np.ndarray:
    """Decode frames whose timestamps lie in [from_timestamp, to_timestamp) as uint8 (T, H, W, 3)."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            timestamp = float(frame.pts * stream.time_base)
            if timestamp < from_timestamp - 1e-4:
                continue
            if to_timestamp is not None and timestamp >= to_timestamp - 1e-4:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError(f"{path}: no frames between t={from_timestamp} and t={to_timestamp}")
    return np.stack(frames)
