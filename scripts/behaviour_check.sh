#!/usr/bin/env bash
# Does a refactor leave closed-loop behaviour unchanged? Trains two small checkpoints with the
# code at BASE (an act-only one and a thinking one), evaluates them deterministically
# (--noise-scale 0) with BASE's eval.py and with this checkout's, and compares the reports
# episode by episode (scripts/compare_eval_reports.py: success, steps, policy calls per kind).
#
#   bash scripts/behaviour_check.sh 79ffb85 [/tmp/behaviour]    # after scripts/setup.sh
#
# Both sides run in this checkout's .venv (the dependencies must not differ between them);
# BASE runs from a git worktree, whose own packages shadow the editable install. ~8 min on 2
# cores. Exits non-zero when any evaluation differs.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: behaviour_check.sh BASE_REV [WORKDIR]}
work=${2:-/tmp/behaviour}
here=$PWD
py="$here/.venv/bin/python"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
mkdir -p "$work"
old="$work/base-checkout"
[[ -d "$old" ]] || git worktree add --detach "$old" "$base" >/dev/null

(   # data and checkpoints made by the base code, as users' existing checkpoints were
    cd "$old"
    [[ -f "$work/dataset/meta/info.json" ]] ||
        "$py" -m sim.cli generate --suite quickstart --episodes-per-task 4 --out "$work/dataset" --workers 1
    train=(data.path="$work/dataset" output_dir="$work/runs" data.num_workers=0
        trainer.checkpoint_every=1000 logging.wandb=disabled)
    [[ -f "$work/runs/act/export/config.json" ]] || "$py" train.py name=act trainer.max_steps=600 "${train[@]}"
    [[ -f "$work/runs/think/export/config.json" ]] ||
        "$py" train.py name=think trainer.max_steps=300 processor.reasoning_dropout=0.5 "${train[@]}"
)

common=(--suite quickstart --envs 2 --noise-scale 0 --videos-per-task 0 --no-progress)
variants=(
    "act|$work/runs/act/export|--episodes-per-task 4 --train-scenes"
    "act_temporal_ensemble|$work/runs/act/export|--episodes-per-task 4 --train-scenes --temporal-ensemble 0.5 --tasks 0"
    "think_reuse|$work/runs/think/export|--episodes-per-task 4 --train-scenes --think --reasoning-every 2 --tasks 0 1"
    "act_held_out|$work/runs/act/export|--episodes-per-task 6"
)
status=0
for variant in "${variants[@]}"; do
    IFS='|' read -r name checkpoint options <<<"$variant"
    # shellcheck disable=SC2086  # options are words
    (cd "$old" && "$py" eval.py --checkpoint "$checkpoint" "${common[@]}" $options --out "$work/before/$name" >/dev/null 2>&1)
    # shellcheck disable=SC2086
    "$py" eval.py --checkpoint "$checkpoint" "${common[@]}" $options --out "$work/after/$name" >/dev/null 2>&1
    echo "== $name"
    "$py" scripts/compare_eval_reports.py "$work/before/$name/report.json" "$work/after/$name/report.json" || status=1
done
exit $status
