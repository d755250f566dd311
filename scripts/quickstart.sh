#!/usr/bin/env bash
# The main job on a CPU: generate the quickstart dataset (if absent) -> train the tiny model with
# pretrained vision and reasoning dropout -> evaluate it acting without thinking on every
# quickstart task's 50 fixed init states, and thinking on the first 10 -> print both side by side.
#
#   bash scripts/quickstart.sh          # after scripts/setup.sh (make quickstart does both)
#
# Every stage is resumable or cheap to repeat: generation resumes an interrupted dataset and
# skips a complete one, training resumes from its last checkpoint when run again with RESUME=1.
# Stage wall times go to outputs/quickstart/timings.json (docs/results.md quotes them).
set -euo pipefail
cd "$(dirname "$0")/.."

export MUJOCO_GL="${MUJOCO_GL:-egl}"
python=.venv/bin/python
out="${QUICKSTART_DIR:-outputs/quickstart}"
episodes="${QUICKSTART_EPISODES:-30}"     # demonstrations per task
eval_episodes="${QUICKSTART_EVAL_EPISODES:-50}"  # init states per task (the suite has 50)
think_episodes="${QUICKSTART_THINK_EPISODES:-10}"  # thinking is ~3.5x dearer per call
run_name=quickstart
mkdir -p "$out"
timings="$out/timings.tsv"
: >"$timings"

stage() {  # stage NAME COMMAND...: run it and record its wall time
    local name=$1
    shift
    echo "==> $name: $*"
    local started=$SECONDS
    "$@"
    printf '%s\t%s\n' "$name" "$((SECONDS - started))" >>"$timings"
}

resume=()
[[ "${RESUME:-0}" == 1 ]] && resume=(--resume)

stage generate .venv/bin/vla-data generate --suite quickstart --episodes-per-task "$episodes" --out "$out/dataset"
stage render .venv/bin/vla-data render-episode "$out/dataset" --episode 0 --out "$out/episode0.mp4"
stage train "$python" train.py "${resume[@]}" name="$run_name" data.path="$out/dataset"
checkpoint="outputs/runs/$run_name/export"
# The policy on scenes it was trained on (off by default, to keep the run short): the gap to the
# evaluation below is generalization.
if (( ${QUICKSTART_TRAIN_SCENES:-0} > 0 )); then
    stage evaluate_train_scenes "$python" eval.py --checkpoint "$checkpoint" --suite quickstart \
        --episodes-per-task "$QUICKSTART_TRAIN_SCENES" --envs 2 --noise-scale 0 --train-scenes \
        --videos-per-task 0 --no-progress --out "$out/eval_train_scenes"
fi

# Acting without thinking (the fast mode), on every init state, beside the scripted expert.
# Deterministic sampling (--noise-scale 0) is steadier in closed loop with this little data.
stage evaluate "$python" eval.py --checkpoint "$checkpoint" --suite quickstart \
    --episodes-per-task "$eval_episodes" --envs 2 --noise-scale 0 --expert-ceiling --out "$out/eval"
# The same checkpoint thinking before every chunk, on the first init states of each task; its
# videos show the generated chain (plan, subtask, motion, gripper trace, boxes) on every frame.
stage evaluate_think "$python" eval.py --checkpoint "$checkpoint" --suite quickstart \
    --episodes-per-task "$think_episodes" --envs 2 --noise-scale 0 --think --videos-per-task 1 \
    --out "$out/eval_think"
"$python" scripts/modes_table.py act="$out/eval" think="$out/eval_think" --out "$out/modes.md"

"$python" - "$timings" "$out/timings.json" <<'EOF'
import json, sys
rows = [line.split("\t") for line in open(sys.argv[1]).read().splitlines() if line]
stages = {name: int(seconds) for name, seconds in rows}
stages["total"] = sum(stages.values())
json.dump(stages, open(sys.argv[2], "w"), indent=2)
print("wall time per stage (s): " + ", ".join(f"{k} {v}" for k, v in stages.items()))
EOF
echo "reports: $out/eval/summary.md (act), $out/eval_think/summary.md (think), side by side: $out/modes.md"
echo "videos: $out/eval/videos/, $out/eval_think/videos/ (with the chain drawn)  checkpoint: $checkpoint"
