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


def mode_table(kind: str, names: list[str], rows: dict[str, dict[str, dict]]) -> list[str]:
    """Markdown lines: one row per name (a task or a family), one column per mode; `rows` is
    mode label -> name -> success row. A name a mode lacks gets a dash."""
    lines = [f"| {kind} | " + " | ".join(rows) + " |", "| --- |" + " --- |" * len(rows)]
    for name in names:
        cells = [cell(by_name[name]) if name in by_name else "–" for by_name in rows.values()]
        shown = f"**{name}**" if name == "overall" else name
        lines.append(f"| {shown} | " + " | ".join(cells) + " |")
    return lines


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
        families = spec.family_by_task(e.task for e in episodes)
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
    first = next(iter(reports.values()))
    # tasks, then "overall" (a report keeps it apart from its task rows)
    by_task = {
        label: {**{row["task"]: row for row in r["tasks"]}, "overall": r["overall"]}
        for label, r in reports.items()
    }
    tasks = [row["task"] for row in first["tasks"]]
    lines = mode_table("task", [*tasks, "overall"], by_task)
    by_family = {
        label: {row["family"]: row for row in r.get("families", [])} for label, r in reports.items()
    }
    families = [row["family"] for row in first.get("families", [])]
    if families:
        lines += ["", *mode_table("family", families, by_family)]
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
