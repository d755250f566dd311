"""Render an episode as an annotated mp4 (or one PNG): the first look at freshly generated data.

Labels computed from simulator state are easy to get subtly wrong (a flipped axis, an off-by-one
pixel, boxes from the wrong camera), and such errors are invisible in parquet columns but obvious
on top of the frame they describe. So the renderer draws every label where it claims to be:

* frames are upscaled by an integer ``scale`` with nearest-neighbour sampling, so each source pixel
  becomes an exact ``scale``×``scale`` block and nothing is smoothed away or invented;
* ``reasoning.objects`` boxes are inclusive pixel bounds, so source pixels ``x1..x2`` become output
  pixels ``x1*scale .. (x2+1)*scale - 1``; the outline is drawn just *outside* that block, leaving
  every pixel the label claims untouched and visible;
* ``reasoning.gripper_px`` points are drawn centred on the source pixel's centre,
  ``((x + 0.5) * scale, (y + 0.5) * scale)`` in continuous output coordinates;
* a text panel below the image shows the task, the current subtask, the motion primitive and the
  frame index.

Object colours come from a fixed palette keyed by a hash of the object name, so the same object
keeps its colour in every frame (and, barring collisions, across episodes and datasets).

Boxes and gripper points are agentview pixels (DESIGN.md), so they are drawn only on the agentview
camera; other cameras get the text panel alone. Frames without reasoning columns (LIBERO imports)
render with the task and frame index only.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data.reader import DatasetError, Episode, LeRobotDatasetReader
from data.reasoning import Reasoning
from data.schema import IMAGE_KEY_PREFIX, REASONING_FIELDS, image_key
from data.video import encode_video

__all__ = [
    "GRIPPER_COLOR",
    "LABELLED_CAMERA",
    "OBJECT_PALETTE",
    "PANEL_BACKGROUND",
    "RenderSummary",
    "draw_labels",
    "gripper_dot_radius",
    "object_colors",
    "outline_width",
    "panel_height",
    "render_episode",
    "save_frame_png",
    "upscale",
]

RGB = tuple[int, int, int]
Box = tuple[int, int, int, int]  # inclusive output pixel bounds (left, top, right, bottom)

LABELLED_CAMERA = "agentview"
"""The camera whose pixels ``reasoning.gripper_px`` and ``reasoning.objects`` are measured in."""

# Distinct, saturated colours that stay visible on table-top scenes (Trubetskoy's list without
# yellow, which is kept for the gripper so the trace never looks like an object).
OBJECT_PALETTE: tuple[RGB, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
)
GRIPPER_COLOR: RGB = (255, 225, 25)
GRIPPER_OUTLINE: RGB = (0, 0, 0)
PANEL_BACKGROUND: RGB = (24, 24, 24)
PANEL_TEXT: RGB = (235, 235, 235)
PANEL_DIM_TEXT: RGB = (150, 150, 150)
PANEL_LINES = 4  # task (2 lines), subtask, move + frame index: fixed, so every frame is one size
PANEL_PADDING = 6
LINE_SPACING = 4


@dataclass(frozen=True)
class RenderSummary:
    """What was written, so a caller (or the CLI) can report it without reopening the file."""

    path: Path
    frames: int
    size: tuple[int, int]  # (height, width) of each written frame, like the project's image_size


# --------------------------------------------------------------------------- public API


def render_episode(
    dataset: str | Path | LeRobotDatasetReader,
    episode: int,
    out: Path,
    *,
    camera: str = LABELLED_CAMERA,
    scale: int = 4,
    fps: int | None = None,
) -> RenderSummary:
    """Write episode ``episode`` of ``dataset`` as an annotated mp4 at ``out``.

    Each video frame is ``H*scale + panel`` tall and ``W*scale`` wide. H.264 in yuv420p needs even
    sizes: the panel height makes the height even, and an odd width (odd W with an odd scale) gets
    one extra column of panel colour on the right. The whole episode is held in memory as rendered
    frames (``encode_video`` takes an array); a 300-frame 128×128 episode at scale 4 is ~270 MB.
    """
    reader = _open(dataset)
    record = _find_episode(reader, episode)
    key = _camera_key(reader, camera)
    _check_scale(scale)
    fps = reader.fps if fps is None else _check_fps(fps)
    if record.length == 0:
        raise DatasetError(f"{reader.root}: episode {record.index} has no frames to render")
    images = _episode_images(reader, record, key)
    labels = _episode_labels(reader, record, key)
    tasks = _episode_tasks(reader, record)
    colors = object_colors(obj.name for label in labels for obj in label.objects)
    frames = np.empty((record.length, *video_frame_shape(images[0].shape, scale)), np.uint8)
    for index in range(record.length):
        frame = draw_labels(
            images[index],
            labels[index],
            task=tasks[index],
            scale=scale,
            frame_index=index,
            colors=colors,
        )
        frames[index] = pad_to(frame, frames.shape[1:])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    encode_video(frames, out, fps)
    return RenderSummary(path=out, frames=record.length, size=(frames.shape[1], frames.shape[2]))


def save_frame_png(
    dataset: str | Path | LeRobotDatasetReader,
    episode: int,
    frame: int,
    out: Path,
    *,
    camera: str = LABELLED_CAMERA,
    scale: int = 4,
) -> Path:
    """Write one annotated frame as a lossless PNG (for docs, bug reports, and exact checks).

    Colours are those of the whole episode, so the PNG matches the same frame of the mp4.
    """
    reader = _open(dataset)
    record = _find_episode(reader, episode)
    key = _camera_key(reader, camera)
    _check_scale(scale)
    if not 0 <= frame < record.length:
        raise ValueError(
            f"frame {frame} is out of range: episode {record.index} has {record.length} frames "
            f"(0..{record.length - 1})"
        )
    labels = _episode_labels(reader, record, key)
    colors = object_colors(obj.name for label in labels for obj in label.objects)
    image = _episode_image(reader, record, key, frame)
    annotated = draw_labels(
        image,
        labels[frame],
        task=_episode_tasks(reader, record)[frame],
        scale=scale,
        frame_index=frame,
        colors=colors,
    )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(annotated).save(out, format="PNG")
    return out


def draw_labels(
    image: np.ndarray,
    reasoning: Reasoning,
    *,
    task: str,
    scale: int,
    frame_index: int,
    colors: Mapping[str, RGB] | None = None,
) -> np.ndarray:
    """Upscale one source frame and draw its labels; returns uint8 (H*scale + panel, W*scale, 3).

    ``colors`` maps object names to colours; pass one mapping for a whole episode so colours stay
    put when objects enter or leave the label set (the default derives it from this frame alone).
    """
    _check_scale(scale)
    scaled = upscale(image, scale)
    height, width = scaled.shape[:2]
    canvas = Image.new("RGB", (width, height + panel_height(width, height)), PANEL_BACKGROUND)
    canvas.paste(Image.fromarray(scaled), (0, 0))
    draw = ImageDraw.Draw(canvas)
    if colors is None:
        colors = object_colors(obj.name for obj in reasoning.objects)
    _draw_boxes(draw, reasoning, scale, colors, image_size=(height, width))
    _draw_gripper_trace(draw, reasoning.gripper_px, scale)
    _draw_panel(draw, reasoning, task=task, frame_index=frame_index, top=height, width=width)
    return np.asarray(canvas)


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling: every source pixel becomes an exact scale×scale block."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def object_colors(names: Iterable[str]) -> dict[str, RGB]:
    """A palette colour per object name, the same for a name wherever it appears.

    Each name starts at a slot chosen by a hash of the name (crc32: unlike ``hash`` it does not
    change between processes), and takes the next free slot on a collision, so names in one
    episode get distinct colours while the palette lasts.
    """
    colors: dict[str, RGB] = {}
    used: set[int] = set()
    for name in sorted(set(names)):
        slot = zlib.crc32(name.encode("utf-8")) % len(OBJECT_PALETTE)
        for step in range(len(OBJECT_PALETTE)):
            if (slot + step) % len(OBJECT_PALETTE) not in used:
                slot = (slot + step) % len(OBJECT_PALETTE)
                break
        used.add(slot)
        colors[name] = OBJECT_PALETTE[slot]
    return colors


def outline_width(scale: int) -> int:
    """Box outline thickness in output pixels.

    Drawn outside the box, it covers at most half of each neighbouring source pixel from scale 2
    up, so the scene just outside a box stays visible too.
    """
    return max(1, scale // 2)


def gripper_dot_radius(scale: int) -> int:
    """Radius of the current gripper point's dot; future points get half of it."""
    return max(3, 3 * scale // 2)


def panel_height(width: int, image_height: int) -> int:
    """Height of the text panel under an upscaled image of this size.

    It depends on the width only (through the font size), never on the text, so every frame of an
    episode has one size; one extra row is added when needed to make the whole frame's height even.
    """
    layout = _load_font(_font_size(width))
    height = 2 * PANEL_PADDING + PANEL_LINES * layout.line_height
    return height + (image_height + height) % 2


# --------------------------------------------------------------------------- dataset access


def _open(dataset: str | Path | LeRobotDatasetReader) -> LeRobotDatasetReader:
    if isinstance(dataset, LeRobotDatasetReader):
        return dataset
    return LeRobotDatasetReader(dataset)


def _find_episode(reader: LeRobotDatasetReader, episode: int) -> Episode:
    for record in reader.episodes:
        if record.index == episode:
            return record
    if not reader.episodes:
        raise DatasetError(f"{reader.root}: episode {episode} requested but the dataset is empty")
    indices = [record.index for record in reader.episodes]
    raise DatasetError(
        f"{reader.root}: episode {episode} is out of range; the dataset has "
        f"{len(indices)} episodes, {min(indices)}..{max(indices)}"
    )


def _camera_key(reader: LeRobotDatasetReader, camera: str) -> str:
    """Accept a short camera name ("agentview") or the full feature key."""
    visual = reader.visual_keys
    for key in (camera, image_key(camera)):
        if key in visual:
            return key
    names = [key.removeprefix(IMAGE_KEY_PREFIX) for key in visual]
    available = ", ".join(names) if names else "none (the dataset has no image or video features)"
    raise DatasetError(f"{reader.root}: unknown camera {camera!r}; available cameras: {available}")


def _episode_images(
    reader: LeRobotDatasetReader, record: Episode, key: str
) -> Sequence[np.ndarray]:
    if reader.features[key].dtype == "video":
        return reader.episode_video(key, record)
    return [reader.image(key, row) for row in range(record.from_index, record.to_index)]


def _episode_image(
    reader: LeRobotDatasetReader, record: Episode, key: str, frame: int
) -> np.ndarray:
    if reader.features[key].dtype == "video":
        return reader.episode_video(key, record)[frame]
    return reader.image(key, record.from_index + frame)


def _episode_labels(reader: LeRobotDatasetReader, record: Episode, key: str) -> list[Reasoning]:
    """Per-frame reasoning; geometry is dropped for cameras it was not measured in."""
    rows = reader.table.slice(record.from_index, record.length)
    present = [name for name in REASONING_FIELDS if name in rows.column_names]
    columns = {name: rows[name].to_pylist() for name in present}
    labels = []
    for frame in range(record.length):
        try:
            label = Reasoning.from_frame({name: columns[name][frame] for name in present})
        except (ValueError, TypeError) as error:
            raise DatasetError(
                f"{record.data_path}: episode {record.index} frame {frame} has malformed "
                f"reasoning labels: {error}"
            ) from error
        if key != image_key(LABELLED_CAMERA):
            label = dataclasses.replace(label, gripper_px=(), objects=())
        labels.append(label)
    return labels


def _episode_tasks(reader: LeRobotDatasetReader, record: Episode) -> list[str]:
    indices = reader.table["task_index"].slice(record.from_index, record.length).to_numpy()
    return [reader.tasks[int(index)] for index in indices]


def _check_scale(scale: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 1:
        raise ValueError(f"scale must be a positive integer (nearest upscaling), got {scale!r}")


def _check_fps(fps: int) -> int:
    if isinstance(fps, bool) or not isinstance(fps, int | np.integer) or fps < 1:
        raise ValueError(f"fps must be a positive integer, got {fps!r}")
    return int(fps)


def video_frame_shape(image_shape: tuple[int, ...], scale: int) -> tuple[int, int, int]:
    """(height, width, 3) of an annotated frame, rounded up to the even sizes yuv420p needs."""
    height, width = image_shape[0] * scale, image_shape[1] * scale
    height += panel_height(width, height)
    return height + height % 2, width + width % 2, 3


def pad_to(frame: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Pad with panel colour (right/bottom) up to the even size yuv420p needs."""
    if frame.shape == tuple(shape):
        return frame
    padded = np.empty(shape, dtype=np.uint8)
    padded[...] = PANEL_BACKGROUND
    padded[: frame.shape[0], : frame.shape[1]] = frame
    return padded


# --------------------------------------------------------------------------- drawing


@dataclass(frozen=True)
class _Font:
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont
    line_height: int


def _font_size(width: int) -> int:
    """16 px text at 512 px wide (a 128 px camera at scale 4); never below 10 px."""
    return max(10, round(width / 32))


@lru_cache(maxsize=16)
def _load_font(size: int) -> _Font:
    """Pillow's bundled font at ``size`` (needs FreeType); the fixed bitmap font otherwise."""
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow < 10.1 or built without FreeType
        font = ImageFont.load_default()
    return _Font(font=font, line_height=int(font.getbbox("Ag|")[3]) + LINE_SPACING)


def _scaled_box(box: tuple[int, int, int, int], scale: int) -> tuple[int, int, int, int]:
    """Inclusive source bounds → inclusive output bounds of the block they cover."""
    x1, y1, x2, y2 = box
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    return x1 * scale, y1 * scale, (x2 + 1) * scale - 1, (y2 + 1) * scale - 1


def _draw_boxes(
    draw: ImageDraw.ImageDraw,
    reasoning: Reasoning,
    scale: int,
    colors: Mapping[str, RGB],
    image_size: tuple[int, int],
) -> None:
    """Outlines first, then names, so no outline is drawn across another object's name."""
    width = outline_width(scale)
    outer_boxes = []
    for obj in reasoning.objects:
        left, top, right, bottom = _scaled_box(obj.box, scale)
        outer = (left - width, top - width, right + width, bottom + width)
        draw.rectangle(outer, outline=colors.get(obj.name, OBJECT_PALETTE[0]), width=width)
        outer_boxes.append(outer)
    font = _load_font(max(9, round(_font_size(image_size[1]) * 0.75)))
    placed: list[Box] = []
    for obj, outer in zip(reasoning.objects, outer_boxes, strict=True):
        tag = _place_name(obj.name, outer, font, image_size, placed)
        placed.append(tag)
        color = colors.get(obj.name, OBJECT_PALETTE[0])
        draw.rectangle(tag, fill=color)
        draw.text(
            (tag[0] + 2, tag[1] + LINE_SPACING // 2),
            obj.name,
            fill=_text_color(color),
            font=font.font,
        )


def _place_name(
    name: str, outer: Box, font: _Font, image_size: tuple[int, int], placed: Sequence[Box]
) -> Box:
    """Where an object's name tag goes: touching its outline, above, else below, else inside.

    The first spot that fits in the image and covers no earlier tag wins, so nearby objects do not
    hide each other's names; if every spot collides, the first one that fits is used anyway.
    """
    height, width = image_size
    tag_width = int(np.ceil(font.font.getlength(name))) + 4
    tag_height = font.line_height
    left, top, _, bottom = outer
    tag_left = max(0, min(left, width - tag_width))
    candidates = [top - tag_height, bottom + 1, top]
    boxes = [
        (tag_left, y, tag_left + tag_width - 1, y + tag_height - 1)
        for y in candidates
        if 0 <= y and y + tag_height <= height
    ] or [(tag_left, max(0, top), tag_left + tag_width - 1, max(0, top) + tag_height - 1)]
    for box in boxes:
        if not any(_overlaps(box, other) for other in placed):
            return box
    return boxes[0]


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _text_color(background: RGB) -> RGB:
    """Black on light tags, white on dark ones (Rec. 601 luma)."""
    red, green, blue = background
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 140 else (255, 255, 255)


def _point_center(point: tuple[int, int], scale: int) -> tuple[float, float]:
    """The source pixel's centre, in continuous output coordinates (pixel edges at integers)."""
    return (point[0] + 0.5) * scale, (point[1] + 0.5) * scale


def _dot_bounds(center: tuple[float, float], radius: float) -> tuple[int, int, int, int]:
    """Inclusive pixel bounds of the pixels a disc of ``radius`` around ``center`` covers.

    PIL addresses pixels by index, so the continuous span [c - r, c + r) becomes pixels
    floor(c - r) .. ceil(c + r) - 1, which is symmetric about c.
    """
    x, y = center
    return (
        int(np.floor(x - radius)),
        int(np.floor(y - radius)),
        int(np.ceil(x + radius)) - 1,
        int(np.ceil(y + radius)) - 1,
    )


def _pixel_point(center: tuple[float, float]) -> tuple[float, float]:
    """Continuous coordinates → PIL's pixel-index coordinates (pixel centres at integers)."""
    return center[0] - 0.5, center[1] - 0.5


def _draw_gripper_trace(
    draw: ImageDraw.ImageDraw, points: Sequence[tuple[int, int]], scale: int
) -> None:
    """Current point as a large dot, the next ones as a line through smaller dots.

    The current dot is drawn last so it stays on top when the gripper barely moves.
    """
    if not points:
        return
    centers = [_point_center(point, scale) for point in points]
    radius = gripper_dot_radius(scale)
    if len(centers) > 1:
        draw.line(
            [_pixel_point(c) for c in centers], fill=GRIPPER_COLOR, width=outline_width(scale)
        )
        for center in centers[1:]:
            draw.ellipse(_dot_bounds(center, radius / 2), fill=GRIPPER_COLOR)
    draw.ellipse(_dot_bounds(centers[0], radius), fill=GRIPPER_COLOR, outline=GRIPPER_OUTLINE)


def _draw_panel(
    draw: ImageDraw.ImageDraw,
    reasoning: Reasoning,
    *,
    task: str,
    frame_index: int,
    top: int,
    width: int,
) -> None:
    """Task (up to two lines), subtask, then motion primitive with the frame index at the right."""
    font = _load_font(_font_size(width))
    text_width = width - 2 * PANEL_PADDING
    rows = _wrap(f"task: {task}", font, text_width, max_lines=2)
    rows += [""] * (2 - len(rows))
    rows.append(
        _ellipsize(f"subtask: {reasoning.subtask}", font, text_width) if reasoning.subtask else ""
    )
    frame_text = f"frame {frame_index}"
    frame_width = int(np.ceil(font.font.getlength(frame_text)))
    move_width = text_width - frame_width - 2 * PANEL_PADDING
    rows.append(_ellipsize(f"move: {reasoning.move}", font, move_width) if reasoning.move else "")
    for number, row in enumerate(rows):
        if row:
            y = top + PANEL_PADDING + number * font.line_height
            draw.text((PANEL_PADDING, y), row, fill=PANEL_TEXT, font=font.font)
    y = top + PANEL_PADDING + (PANEL_LINES - 1) * font.line_height
    draw.text(
        (width - PANEL_PADDING - frame_width, y), frame_text, fill=PANEL_DIM_TEXT, font=font.font
    )


def _wrap(text: str, font: _Font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap; the last allowed line is ellipsized if text remains."""
    lines: list[str] = []
    words = text.split()
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while words and font.font.getlength(f"{line} {words[0]}") <= width:
            line = f"{line} {words.pop(0)}"
        lines.append(line)
    if words:
        lines[-1] = _ellipsize(f"{lines[-1]} {' '.join(words)}", font, width, force=True)
    return [_ellipsize(line, font, width) for line in lines]


def _ellipsize(text: str, font: _Font, width: int, force: bool = False) -> str:
    """Cut text to fit ``width`` pixels, marking the cut with '…' (``force``: text was cut earlier)."""
    if not force and font.font.getlength(text) <= width:
        return text
    while text and font.font.getlength(text + "…") > width:
        text = text[:-1]
    return text.rstrip() + "…"
