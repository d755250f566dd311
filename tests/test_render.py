"""Episode rendering: labels land on the pixels they name, and the video holds every frame.

Pixel checks run on `draw_labels` output and on PNGs (lossless); the mp4 is lossy, so it is checked
for frame count, size, and that each decoded frame is nearest to the frame it should be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import make_episode
from PIL import Image

from data.features import default_features
from data.reader import DatasetError, LeRobotDatasetReader
from data.reasoning import ObjectBox, Reasoning
from data.render import (
    GRIPPER_COLOR,
    OBJECT_PALETTE,
    draw_labels,
    object_colors,
    outline_width,
    panel_height,
    render_episode,
    save_frame_png,
    upscale,
)
from data.video import decode_video
from data.writer import LeRobotDatasetWriter

AGENTVIEW = "observation.images.agentview"
WRIST = "observation.images.wrist"


def random_image(height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def expected_frame(
    reader: LeRobotDatasetReader,
    episode: int,
    frame: int,
    scale: int,
    frame_index: int | None = None,
) -> np.ndarray:
    """What frame `frame` should look like, built from the reader's own columns."""
    record = reader.episodes[episode]
    row = record.from_index + frame
    labels = [
        Reasoning.from_frame(reader.table.slice(r, 1).to_pylist()[0])
        for r in range(record.from_index, record.to_index)
    ]
    task = reader.tasks[int(reader.table["task_index"][row].as_py())]
    return draw_labels(
        reader.image(AGENTVIEW, row),
        labels[frame],
        task=task,
        scale=scale,
        frame_index=frame if frame_index is None else frame_index,
        colors=object_colors(obj.name for label in labels for obj in label.objects),
    )


def write_without_reasoning(root: Path, lengths: tuple[int, ...]) -> None:
    """A dataset shaped like a LIBERO import: cameras, state and action, no reasoning columns."""
    writer = LeRobotDatasetWriter(
        root, features=default_features(image_size=(32, 32), reasoning=False), fps=20
    )
    for number, length in enumerate(lengths):
        writer.add_episode(
            make_episode(length, seed=number, reasoning=False), task=f"libero {number}"
        )
    writer.finalize()


# --------------------------------------------------------------------------- the video


@pytest.mark.parametrize("video", [False, True], ids=["png-frames", "mp4-frames"])
def test_video_holds_every_frame_in_order_at_the_expected_size(write_dataset, tmp_path, video):
    root, episodes = write_dataset(lengths=(4, 6), video=video)
    scale = 4
    summary = render_episode(root, 1, tmp_path / "out" / "episode.mp4", scale=scale)

    height, width = 32 * scale, 32 * scale
    expected_size = (height + panel_height(width, height), width)
    assert expected_size[0] % 2 == 0
    frames = decode_video(summary.path)
    assert frames.shape == (len(episodes[1]["action"]), *expected_size, 3)
    assert summary.frames == 6 and summary.size == expected_size

    if not video:  # with PNG frames the exact expected rendering is known: check order and content
        reader = LeRobotDatasetReader(root)
        expected = np.stack([expected_frame(reader, 1, t, scale) for t in range(6)]).astype(float)
        errors = np.abs(frames.astype(float)[:, None] - expected[None]).mean(axis=(2, 3, 4))
        assert (errors.argmin(axis=1) == np.arange(6)).all(), errors
        assert errors.diagonal().max() < 10
        # Each panel shows its own frame index: closer to it than to the same frame labelled 0.
        for t in range(1, 6):
            labelled_zero = expected_frame(reader, 1, t, scale, frame_index=0).astype(float)
            assert np.abs(frames[t] - expected[t]).sum() < np.abs(frames[t] - labelled_zero).sum()


def test_odd_sizes_are_padded_to_even_for_yuv420p(tmp_path):
    root = tmp_path / "odd"
    writer = LeRobotDatasetWriter(root, features=default_features(image_size=(15, 15)), fps=10)
    writer.add_episode(make_episode(3, seed=0, image_size=(15, 15)), task="odd")
    summary = render_episode(root, 0, tmp_path / "odd.mp4", scale=3, fps=5)

    height = 45 + panel_height(45, 45)
    assert height % 2 == 0
    assert summary.size == (height, 46)
    assert decode_video(summary.path).shape == (3, height, 46, 3)


# --------------------------------------------------------------------------- labels on pixels


def test_box_outline_is_the_objects_colour_exactly_around_the_box():
    scale = 4
    image = random_image()
    box = (10, 12, 20, 22)  # inclusive source pixels; leaves room above for the name tag
    reasoning = Reasoning(objects=(ObjectBox("bowl", box),))
    color = object_colors(["bowl"])["bowl"]

    annotated = draw_labels(image, reasoning, task="t", scale=scale, frame_index=0)
    plain = upscale(image, scale)
    assert (plain[::scale, ::scale] == image).all() and (plain[3::scale, 3::scale] == image).all()
    area = annotated[: 32 * scale]
    changed = (area != plain).any(axis=-1)

    # The box's source pixels cover output pixels 40..83 x 48..91; the outline surrounds them.
    w = outline_width(scale)
    left, top, right, bottom = 40 - w, 48 - w, 84 - 1 + w, 92 - 1 + w
    ring = np.zeros_like(changed)
    ring[top : bottom + 1, left : right + 1] = True
    ring[48:92, 40:84] = False
    rows = slice(top, bottom + 1)  # the name tag sits above these rows
    assert np.array_equal(changed[rows], ring[rows])
    assert (area[ring] == color).all()
    assert tuple(area[top, left]) == color and tuple(area[bottom, right]) == color
    assert (area[48:92, 40:84] == plain[48:92, 40:84]).all()  # every labelled pixel still visible

    tag = (area[:top, left : left + 20] == color).all(axis=-1)
    assert tag[top - 3].sum() > 10  # the name tag touches the outline from above
    assert (area[top + 1 :, right + 1 :] == plain[top + 1 :, right + 1 :]).all()  # far away: as is


def test_each_object_name_keeps_one_distinct_colour():
    names = ["red cube", "bowl", "plate", "mug", "drawer", "basket", "ketchup", "milk"]
    colors = object_colors(names)
    assert len(set(colors.values())) == len(names)
    assert colors == object_colors(reversed(names)) == object_colors(names + names)
    assert set(colors.values()) <= set(OBJECT_PALETTE)

    # In a rendered frame, each outline has its own object's colour.
    image = np.full((32, 32, 3), 128, np.uint8)
    reasoning = Reasoning(
        objects=(ObjectBox("red cube", (2, 20, 6, 24)), ObjectBox("bowl", (20, 20, 28, 28)))
    )
    annotated = draw_labels(image, reasoning, task="t", scale=2, frame_index=0, colors=colors)
    corner = outline_width(2)
    assert tuple(annotated[2 * 25 - 1 + corner, 2 * 7 - 1 + corner]) == colors["red cube"]
    assert tuple(annotated[2 * 29 - 1 + corner, 2 * 29 - 1 + corner]) == colors["bowl"]


@pytest.mark.parametrize("scale", [3, 4])
def test_gripper_dot_is_centred_on_the_source_pixel_centre(scale):
    image = np.full((32, 32, 3), 128, np.uint8)
    point = (7, 9)
    annotated = draw_labels(
        image, Reasoning(gripper_px=(point,)), task="t", scale=scale, frame_index=0
    )
    dot = (annotated[: 32 * scale] == GRIPPER_COLOR).all(axis=-1)
    ys, xs = np.nonzero(dot)
    assert len(xs) > scale * scale
    # Pixel i spans [i, i + 1) in continuous coordinates, so its centre is i + 0.5.
    assert xs.mean() + 0.5 == pytest.approx((point[0] + 0.5) * scale)
    assert ys.mean() + 0.5 == pytest.approx((point[1] + 0.5) * scale)
    center_pixel = (int((point[1] + 0.5) * scale), int((point[0] + 0.5) * scale))
    assert dot[center_pixel]


def test_future_gripper_points_are_joined_by_a_line():
    scale = 4
    image = np.full((32, 32, 3), 128, np.uint8)
    points = ((4, 4), (4, 14), (4, 24))
    annotated = draw_labels(
        image, Reasoning(gripper_px=points), task="t", scale=scale, frame_index=0
    )
    trace = (annotated[: 32 * scale] == GRIPPER_COLOR).all(axis=-1)
    x = int(4.5 * scale)
    assert trace[int(14.5 * scale), x] and trace[int(24.5 * scale), x]  # later dots
    assert trace[int(9.5 * scale), x] and trace[int(19.5 * scale), x]  # the line between them
    assert not trace[:, int(20.5 * scale) :].any()  # nothing drawn far from the trace


def test_panel_shows_task_subtask_move_and_frame_index():
    image = random_image()

    def draw(
        task: str = "pick up the cube",
        subtask: str = "pick up",
        move: str = "move down",
        frame_index: int = 3,
    ) -> np.ndarray:
        reasoning = Reasoning(subtask=subtask, move=move)
        return draw_labels(image, reasoning, task=task, scale=4, frame_index=frame_index)

    base = draw()
    assert base.shape == (128 + panel_height(128, 128), 128, 3)
    variants = {
        "task": draw(task="open the drawer"),
        "subtask": draw(subtask="place it"),
        "move": draw(move="move up"),
        "frame": draw(frame_index=4),
    }
    for name, variant in variants.items():
        changed = (variant != base).any(axis=-1)
        assert changed[128:].any(), f"{name} is not shown in the panel"
        assert not changed[:128].any(), f"changing the {name} altered the image"
    frame_changed = (variants["frame"] != base).any(axis=-1)
    assert not frame_changed[:, :64].any()  # the frame index is at the right of the panel


# --------------------------------------------------------------------------- datasets


def test_png_frame_is_the_annotated_dataset_frame(write_dataset, tmp_path):
    root, _ = write_dataset(lengths=(4, 6))
    path = save_frame_png(root, 1, 3, tmp_path / "docs" / "frame.png", scale=4)
    reader = LeRobotDatasetReader(root)
    png = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(png, expected_frame(reader, 1, 3, 4))
    assert not np.array_equal(png, expected_frame(reader, 1, 2, 4))


def test_wrist_camera_gets_the_panel_but_no_agentview_geometry(write_dataset, tmp_path):
    root, _ = write_dataset(lengths=(3,))
    reader = LeRobotDatasetReader(root)
    path = save_frame_png(reader, 0, 1, tmp_path / "wrist.png", camera="wrist", scale=2)
    png = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(png[:64], upscale(reader.image(WRIST, 1), 2))
    label = Reasoning.from_frame(reader.table.slice(1, 1).to_pylist()[0])
    assert label.objects and label.gripper_px  # there was geometry to leave out
    panel_only = Reasoning(subtask=label.subtask, move=label.move)
    assert np.array_equal(
        png, draw_labels(reader.image(WRIST, 1), panel_only, task="task 0", scale=2, frame_index=1)
    )


def test_dataset_without_reasoning_renders_task_and_frame_index(tmp_path):
    root = tmp_path / "libero"
    write_without_reasoning(root, lengths=(3, 5))
    reader = LeRobotDatasetReader(root)
    assert not any(key.startswith("reasoning.") for key in reader.features)

    summary = render_episode(reader, 1, tmp_path / "libero.mp4", scale=2)
    assert decode_video(summary.path).shape == (5, 64 + panel_height(64, 64), 64, 3)

    path = save_frame_png(reader, 1, 2, tmp_path / "libero.png", scale=2)
    png = np.asarray(Image.open(path).convert("RGB"))
    image = reader.image(AGENTVIEW, reader.episodes[1].from_index + 2)
    assert np.array_equal(png[:64], upscale(image, 2))
    assert np.array_equal(
        png, draw_labels(image, Reasoning(), task="libero 1", scale=2, frame_index=2)
    )


# --------------------------------------------------------------------------- errors


def test_episode_out_of_range_names_the_episodes_that_exist(write_dataset, tmp_path):
    root, _ = write_dataset(lengths=(3, 3, 3))
    with pytest.raises(DatasetError, match=r"episode 3 is out of range.*3 episodes, 0\.\.2"):
        render_episode(root, 3, tmp_path / "x.mp4")
    with pytest.raises(DatasetError, match=r"episode -1 is out of range"):
        save_frame_png(root, -1, 0, tmp_path / "x.png")
    with pytest.raises(ValueError, match=r"frame 3 is out of range.*3 frames \(0\.\.2\)"):
        save_frame_png(root, 0, 3, tmp_path / "x.png")
    assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x.png").exists()


def test_unknown_camera_names_the_cameras_that_exist(write_dataset, tmp_path):
    root, _ = write_dataset(lengths=(2,))
    with pytest.raises(DatasetError, match=r"unknown camera 'front'.*agentview, wrist"):
        render_episode(root, 0, tmp_path / "x.mp4", camera="front")
    assert render_episode(root, 0, tmp_path / "full.mp4", camera=WRIST, scale=1).frames == 2
