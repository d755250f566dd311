"""Success of one checkpoint evaluated in several modes (act-only, think), side by side.

    python scripts/modes_table.py act=outputs/quickstart/eval think=outputs/quickstart/eval_think \
        [--out outputs/quickstart/modes.md] [--common-episodes]

Each argument is LABEL=DIR, DIR an eval.py report directory (its report.json). Prints a markdown
table, one row per task and one column per mode (then one row per task family, where the suite
has families), with each mode's episode count and mean milliseconds per policy call, so the
speed a mode costs stands beside what it buys.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cell(row: dict) -> str:
    return (
        f"{100 * row['success_rate']:.0f}% ({row['successes']}/{row['episodes']}, "
        f"{100 * row['wilson_low']:.0f}–{100 * row['wilson_high']:.0f}%)"
    )


def on_common_episodes(reports: dict[str, dict]) -> dict[str, dict]:
    """Each report's success rows recomputed on the episodes (task, init state) that every
    report holds: a paired comparison when modes were run on different numbers of init states
    (thinking is dearer, so it often runs on fewer)."""
    from sim.catalog import get_suite
    from sim.metrics import EvalMetrics, RolloutResult

    keys = [{(e["task"], e["init_state"]) for e in r["episodes"]} for r in reports.values()]
    common = set.intersection(*keys)
    if not common:
        raise SystemExit("--common-episodes: the reports share no (task, init state) episode")
    out = {}
    for label, report in reports.items():
        spec = get_suite(report["suite"])
        episodes = [
            RolloutResult(**e) for e in report["episodes"] if (e["task"], e["init_state"]) in common
        ]
        families = {e.task: spec.family_of(e.task) for e in episodes if spec.families}
        metrics = EvalMetrics.from_episodes(report["suite"], episodes, families, report["settings"])
        rows = metrics.to_dict()
        out[label] = {**report, **{k: rows[k] for k in ("overall", "tasks", "families")}}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("modes", nargs="+", metavar="LABEL=DIR")
    parser.add_argument("--out", type=Path)
    parser.add_argument(
        "--common-episodes",
        action="store_true",
        help="compare every mode on the episodes all reports hold (paired)",
    )
    args = parser.parse_args()
    reports = {}
    for item in args.modes:
        label, _, directory = item.partition("=")
        path = Path(directory) / "report.json"
        if not label or not path.is_file():
            parser.error(f"{item!r}: expected LABEL=DIR with DIR/report.json present")
        reports[label] = json.loads(path.read_text())
    if args.common_episodes:
        reports = on_common_episodes(reports)
    labels = list(reports)
    tasks = [row["task"] for row in next(iter(reports.values()))["tasks"]]
    lines = [
        "| task | " + " | ".join(labels) + " |",
        "| --- |" + " --- |" * len(labels),
    ]
    for task in [*tasks, "overall"]:
        cells = []
        for label in labels:
            rows = {row["task"]: row for row in reports[label]["tasks"]}
            row = reports[label]["overall"] if task == "overall" else rows.get(task)
            cells.append(cell(row) if row else "–")
        name = f"**{task}**" if task == "overall" else task
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    families = [row["family"] for row in next(iter(reports.values())).get("families", [])]
    if families:
        lines += ["", "| family | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    for family in families:
        cells = []
        for label in labels:
            rows = {row["family"]: row for row in reports[label].get("families", [])}
            cells.append(cell(rows[family]) if family in rows else "–")
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    latency = []
    for label in labels:
        calls = reports[label]["latency"]
        parts = [
            f"{kind} {stats['total_ms']:.0f} ms x {stats['calls']}"
            for kind, stats in calls.items()
            if isinstance(stats, dict) and "total_ms" in stats
        ]
        latency.append(f"{label}: " + ", ".join(parts))
    lines.append("")
    lines.append("policy calls (mean ms per batched call x calls): " + "; ".join(latency))
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
