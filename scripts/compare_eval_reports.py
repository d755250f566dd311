"""Do two evaluations agree episode for episode? Compares the (task, init state) -> (success,
steps) of two eval.py report.json files, and the number of policy calls of each kind.

    python scripts/compare_eval_reports.py BEFORE/report.json AFTER/report.json

Used to check that a refactor left behaviour unchanged: the same checkpoint evaluated
deterministically (`--noise-scale 0`) before and after must live the same episodes. Exits 1 and
lists the differences when they disagree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def episodes(report: dict) -> dict[tuple[int, int], tuple[bool, int]]:
    return {
        (e["task_index"], e["init_state"]): (bool(e["success"]), int(e["steps"]))
        for e in report["episodes"]
    }


def call_counts(report: dict) -> dict[str, int]:
    return {kind: int(row["calls"]) for kind, row in report.get("latency", {}).items()}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    before, after = (json.loads(Path(path).read_text()) for path in argv)
    old, new = episodes(before), episodes(after)
    differences = [
        f"task {task} init {init}: before {old.get((task, init))}, after {new.get((task, init))}"
        for task, init in sorted(set(old) | set(new))
        if old.get((task, init)) != new.get((task, init))
    ]
    if call_counts(before) != call_counts(after):
        differences.append(
            f"policy calls: before {call_counts(before)}, after {call_counts(after)}"
        )
    successes = sum(success for success, _ in new.values())
    print(
        f"{len(new)} episodes, {successes} successes after; policy calls {call_counts(after)}; "
        f"{'identical' if not differences else f'{len(differences)} differences'}"
    )
    for line in differences:
        print("  " + line)
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
