#!/usr/bin/env bash
# The tabletop recipe on a CPU: all 14 tasks of the tabletop suite (wide layout, 4 families),
# 30 demonstrations per task -> configs/tabletop_cpu.yaml -> act-only on every task's 50 fixed
# init states, thinking on the first 3 -> per-task and per-family tables in
# outputs/tabletop/modes.md. The stages are scripts/recipe.sh's. No expert ceiling: the expert's
# rate on these init states is in docs/expert_success.md (98-100% per task); rerunning its 700
# episodes would spend the budget on a known number.
#
#   bash scripts/tabletop.sh            # after scripts/setup.sh
#
# TABLETOP_DIR, TABLETOP_EPISODES, TABLETOP_EVAL_EPISODES, TABLETOP_THINK_EPISODES and RESUME=1
# change its defaults.
set -euo pipefail
cd "$(dirname "$0")/.."

resume=()
[[ "${RESUME:-0}" == 1 ]] && resume=(--resume)
exec bash scripts/recipe.sh --suite tabletop --config configs/tabletop_cpu.yaml \
    --out "${TABLETOP_DIR:-outputs/tabletop}" \
    --episodes "${TABLETOP_EPISODES:-30}" \
    --eval-episodes "${TABLETOP_EVAL_EPISODES:-50}" \
    --think-episodes "${TABLETOP_THINK_EPISODES:-3}" --no-expert-ceiling "${resume[@]}"
