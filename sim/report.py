"""Evaluation outputs: report.json, a markdown summary, a success bar chart and rollout videos.

Everything here reads an `EvalMetrics` (sim/runner.py) or raw frames; nothing runs a simulator,
so reports can be rebuilt from report.json alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data.layout import atomic_move, atomic_write_text
from data.reasoning import Reasoning, parse_reasoning
from data.render import draw_labels, object_colors, pad_to, video_frame_shape
from data.video import encode_video

VIDEO_SCALE = 3  # 128 px renders become 384 px videos: labels stay legible
FPS = 20


def write_rollout_video(
    path: Path, frames: Sequence[np.ndarray], thoughts: Sequence[str | None], *, task: str
) -> Path:
    """An mp4 of agentview frames (T, H, W, 3) with the policy's reasoning at each frame drawn on
    it (subtask, motion, predicted gripper trace, object boxes); act-only frames get the panel
    with the task alone."""
    if len(frames) != len(thoughts):
        raise ValueError(f"{len(frames)} frames but {len(thoughts)} reasoning entries")
    labels = [parse_reasoning(text, strict=False) if text else Reasoning() for text in thoughts]
    colors = object_colors(obj.name for label in labels for obj in label.objects)
    shape = video_frame_shape(np.asarray(frames[0]).shape, VIDEO_SCALE)
    video = np.empty((len(frames), *shape), np.uint8)
    for index, (frame, label) in enumerate(zip(frames, labels, strict=True)):
        drawn = draw_labels(
            np.asarray(frame), label, task=task, scale=VIDEO_SCALE, frame_index=index, colors=colors
        )
        video[index] = pad_to(drawn, shape)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.mp4")
    encode_video(video, partial, FPS)
    atomic_move(partial, path)  # a crash never leaves a truncated video under the final name
    return path


def write_report(
    report: Mapping[str, Any], out_dir: Path, *, expert: Mapping[str, Any] | None = None
) -> dict[str, Path]:
    """Write report.json, summary.md and success.png under `out_dir`; returns their paths.

    `report` is `EvalMetrics.to_dict()` (plus anything the caller adds); `expert`, when given,
    is the scripted expert's report on the same episodes, shown as the ceiling.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = dict(report)
    if expert is not None:
        payload["expert"] = {"overall": expert["overall"], "tasks": expert["tasks"]}
    paths = {
        "report": out_dir / "report.json",
        "summary": out_dir / "summary.md",
        "plot": out_dir / "success.png",
    }
    atomic_write_text(paths["report"], json.dumps(payload, indent=2, default=_json_default))
    atomic_write_text(paths["summary"], markdown_summary(payload))
    plot_success(payload, paths["plot"])
    return paths


def expert_rates(expert: Mapping[str, Any] | None) -> dict[str, float]:
    """Task (and "overall") -> the expert's success rate, from its report; {} without one."""
    if not expert:
        return {}
    rates = {row["task"]: row["success_rate"] for row in expert["tasks"]}
    rates["overall"] = expert["overall"]["success_rate"]
    return rates


def markdown_summary(report: Mapping[str, Any]) -> str:
    expert_by_task = expert_rates(report.get("expert"))
    header = "| task | success | 95% CI | episodes | mean length | expert |"
    lines = [
        f"# Evaluation: {report['suite']}",
        "",
        f"checkpoint: `{report.get('checkpoint', '-')}`  ",
        f"settings: {_settings_text(report.get('settings', {}))}",
        "",
        header,
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in [*report["tasks"], report["overall"]]:
        expert = expert_by_task.get(row["task"])
        name = "**overall**" if row["task"] == "overall" else row["task"]
        lines.append(
            f"| {name} | {_success_cells(row)} | {row['episodes']} "
            f"| {row['mean_length']:.0f} | {'-' if expert is None else f'{expert:.0%}'} |"
        )
    if report.get("families"):
        lines += [
            "",
            "| family | tasks | success | 95% CI | mean length |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in report["families"]:
            lines.append(
                f"| {row['family']} | {row['tasks']} | {_success_cells(row)} "
                f"| {row['mean_length']:.0f} |"
            )
    lines += [
        "",
        "| policy call | calls | mean batch | prefix ms | reasoning ms | denoise ms | total ms | ms per chunk |",
    ]
    lines.append("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, row in report.get("latency", {}).items():
        cells = [
            f"{row[k]:.1f}" if k in row else "-"
            for k in ("prefix_ms", "reasoning_ms", "denoise_ms", "total_ms", "total_ms_per_chunk")
        ]
        lines.append(
            f"| {kind} | {row['calls']:.0f} | {row['mean_batch']:.1f} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        f"env steps: {report['env_steps']} at {report['env_steps_per_second']:.1f} steps/s "
        f"({report['num_envs']} envs); wall time {report['wall_seconds']:.0f} s; "
        f"env crashes (retried): {report['crashes']}; episodes lost to errors: {report['errors']}",
        "",
    ]
    videos = [e["video"] for e in report.get("episodes", []) if e.get("video")]
    if videos:
        lines += ["videos:", *[f"- `{v}`" for v in videos], ""]
    return "\n".join(lines)


def plot_success(report: Mapping[str, Any], path: Path) -> Path:
    """Bar chart of per-task and overall success with Wilson intervals (and the expert's rate
    as a marker when known)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [*report["tasks"], report["overall"]]
    rates = np.array([row["success_rate"] for row in rows])
    lows = np.array([row["wilson_low"] for row in rows])
    highs = np.array([row["wilson_high"] for row in rows])
    errors = np.clip(np.stack([rates - lows, highs - rates]), 0, None)  # (2, bars)
    labels = [_short(row["task"]) for row in rows]
    figure, axes = plt.subplots(figsize=(max(4.0, 1.2 * len(rows) + 1), 3.6))
    colors = ["#4C72B0"] * (len(rows) - 1) + ["#DD8452"]
    axes.bar(range(len(rows)), rates, yerr=errors, color=colors, capsize=4)
    expert_by_task = expert_rates(report.get("expert"))
    if expert_by_task:
        xs = [i for i, row in enumerate(rows) if row["task"] in expert_by_task]
        axes.scatter(
            xs,
            [expert_by_task[rows[i]["task"]] for i in xs],
            marker="_",
            s=400,
            color="black",
            label="scripted expert",
            zorder=3,
        )
        axes.legend(loc="lower right", fontsize=8)
    axes.set_xticks(range(len(rows)), labels, rotation=20, ha="right", fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("success rate (95% Wilson CI)")
    axes.set_title(
        f"{report['suite']}: {report['overall']['success_rate']:.0%} overall", fontsize=10
    )
    figure.tight_layout()
    path = Path(path)
    partial = path.with_name(path.name + ".partial.png")
    figure.savefig(partial, dpi=120, format="png")
    plt.close(figure)
    atomic_move(partial, path)
    return path


def _success_cells(row: Mapping[str, Any]) -> str:
    """A success row's "rate (successes/episodes) | low–high" table cells."""
    return (
        f"{row['success_rate']:.0%} ({row['successes']}/{row['episodes']}) "
        f"| {row['wilson_low']:.0%}–{row['wilson_high']:.0%}"
    )


def _short(task: str, width: int = 28) -> str:
    return task if len(task) <= width else task[: width - 1] + "…"


def _settings_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in settings.items())


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to report.json")
