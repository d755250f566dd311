#!/usr/bin/env bash
# LeRobot interop, checked with LeRobot itself (docs/datasets.md, "LeRobot interop"):
#
#   bash scripts/lerobot_interop/check.sh            # train + edit checks (~3 min with the venv)
#   bash scripts/lerobot_interop/check.sh fixture    # rewrite tests/fixtures/lerobot/{png,video}
#
# LeRobot cannot live in our venv (lerobot 0.4.4 needs torch < 2.11), so it gets a side venv,
# $LEROBOT_VENV (default /tmp/lerobot-venv, ~6 GB: PyPI's torch 2.9.1 is a CUDA build), made once.
# The checks, on a dataset that `vla-data generate` writes (quickstart suite, 2 demos per task):
#   1. `lerobot-train --policy.type=act` with default dataset settings runs 20 steps and its loss
#      falls (the ACT backbone's ImageNet weights would be downloaded, so they are off: a policy
#      setting, not a dataset one);
#   2. LeRobot's delete_episodes, split_dataset and merge_datasets keep stats.json non-empty and
#      equal to a recount of the frames each result holds (check_edits.py).
# `fixture` writes the other direction's test data: the same kind of dataset (1 demo per task,
# 64x64 cameras) rewritten by LeRobot's own writer, as PNG and as video.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=scripts/lerobot_interop
venv=${LEROBOT_VENV:-/tmp/lerobot-venv}
work=${LEROBOT_WORK:-/tmp/lerobot-interop}
export MUJOCO_GL=${MUJOCO_GL:-egl} HF_HUB_OFFLINE=1

if [[ ! -x $venv/bin/lerobot-train ]]; then
    echo "==> making the LeRobot side venv $venv"
    python3.11 -m venv "$venv"
    # 0.4.4: the newest lerobot for Python 3.11; torchvision 0.24 is the release paired with torch 2.9
    "$venv/bin/pip" install -q "lerobot==0.4.4" "torch==2.9.1" "torchvision==0.24.1"
fi
rm -rf "$work"
mkdir -p "$work"

if [[ ${1:-} == fixture ]]; then
    .venv/bin/vla-data generate --suite quickstart --episodes-per-task 1 --image-size 64 64 \
        --workers 1 --out "$work/source"
    for variant in png video; do
        rm -rf "tests/fixtures/lerobot/$variant"
        flag=()
        [[ $variant == video ]] && flag=(--video)
        "$venv/bin/python" "$here/make_fixture.py" "$work/source" \
            "tests/fixtures/lerobot/$variant" "${flag[@]}"
        find "tests/fixtures/lerobot/$variant" -type d -empty -delete  # LeRobot's image scratch dirs
    done
    du -sh tests/fixtures/lerobot/*
    exit 0
fi

.venv/bin/vla-data generate --suite quickstart --episodes-per-task 2 --out "$work/dataset"
echo "==> lerobot-train --policy.type=act on it"
"$venv/bin/lerobot-train" --dataset.repo_id=vla/quickstart --dataset.root="$work/dataset" \
    --policy.type=act --policy.device=cpu --policy.push_to_hub=false \
    --policy.pretrained_backbone_weights=null --steps=20 --batch_size=4 --log_freq=5 \
    --save_freq=20 --num_workers=0 --output_dir="$work/act" --wandb.enable=false \
    2>&1 | tr '\r' '\n' | tee "$work/train.log" | grep -oE "step:[0-9]+ .*loss:[0-9.]+" || true
losses=$(grep -oE "loss:[0-9.]+" "$work/train.log" | cut -d: -f2)
[[ -n $losses && -f $work/act/checkpoints/last/pretrained_model/model.safetensors ]] || {
    echo "lerobot-train did not finish; see $work/train.log" >&2
    exit 1
}
first=$(head -1 <<<"$losses") last=$(tail -1 <<<"$losses")
awk -v a="$first" -v b="$last" 'BEGIN { if (b >= a) { print "loss did not fall: " a " -> " b; exit 1 }
    print "ok   lerobot-train: 20 steps, loss " a " -> " b }'
echo "==> LeRobot's edit tools on it"
"$venv/bin/python" "$here/check_edits.py" "$work/dataset" "$work/edits" 2>&1 | grep -E "^(ok|FAIL)"
rm -rf "$work"
