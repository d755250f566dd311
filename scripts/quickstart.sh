#!/usr/bin/env bash
# The main job on a CPU: generate the quickstart dataset (if absent) -> train the tiny model with
# pretrained vision and reasoning dropout (configs/quickstart.yaml) -> evaluate it acting without
# thinking on every quickstart task's 50 fixed init states, and thinking on the first 10 -> print
# both side by side. The stages are scripts/recipe.sh's quickstart preset.
#
#   bash scripts/quickstart.sh          # after scripts/setup.sh (make quickstart does both)
#
# QUICKSTART_DIR, QUICKSTART_EPISODES, QUICKSTART_EVAL_EPISODES, QUICKSTART_THINK_EPISODES,
# QUICKSTART_TRAIN_SCENES and RESUME=1 change its defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

resume=()
[[ "${RESUME:-0}" == 1 ]] && resume=(--resume)
exec bash scripts/recipe.sh quickstart \
    --out "${QUICKSTART_DIR:-outputs/quickstart}" \
    --episodes "${QUICKSTART_EPISODES:-30}" \
    --eval-episodes "${QUICKSTART_EVAL_EPISODES:-50}" \
    --think-episodes "${QUICKSTART_THINK_EPISODES:-10}" \
    --train-scenes "${QUICKSTART_TRAIN_SCENES:-0}" "${resume[@]}"
