#!/usr/bin/env bash
# Stage 1 on Swin-B: train the exit heads together with the backbone (LGViT heads, alternating weighted loss).
# Exits per stage [0,1,6,1] at within-stage blocks [[],[2],[3,6,9,12,15,18],[1]], i.e. global layers
# 4,7,10,13,16,19,22,23 of 24 (the paper's). Baselines by environment, e.g. the original BERxiT run:
#   HIGHWAY_TYPE=linear TRAIN_STRATEGY=alternating DATASET=imagenet-1k EPOCHS=100 bash scripts/train_baseline_swin.sh
# Starts from the hub weights as the paper does (MODEL_NAME_OR_PATH=<base output dir> starts from the stage-0
# model). Run or source from any directory.
_lgvit_train_stage1_swin() {
    set -euo pipefail
    local SCRIPT_DIR
    SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    BACKBONE=Swin
    source "$SCRIPT_DIR/common.sh"
    local highway_type="${HIGHWAY_TYPE:-LGViT}" train_strategy="${TRAIN_STRATEGY:-alternating_weighted}"
    local model="${MODEL_NAME_OR_PATH:-$DEFAULT_MODEL}"
    local output_dir="${OUTPUT_DIR:-$SAVE_ROOT/$highway_type/$train_strategy}"
    export WANDB_PROJECT="${WANDB_PROJECT:-LGViT_${BACKBONE}_${DATA_NAME}}"
    "${LAUNCH[@]}" "$RUN" "$ROOT/configs/paper/stage1.yaml" \
        --model_name_or_path "$model" \
        --backbone "$BACKBONE" \
        --dataset_name "$DATASET" \
        --output_dir "$output_dir" \
        --run_name "${RUN_NAME:-${BACKBONE}_${highway_type}_${train_strategy}_${DATA_NAME}}" \
        --highway_type "$highway_type" \
        --num_early_exits "${NUM_EARLY_EXITS:-[0,1,6,1]}" \
        --position_exits "${POSITION_EXITS:-[[],[2],[3,6,9,12,15,18],[1]]}" \
        --train_strategy "$train_strategy" \
        --exit_strategy "${EXIT_STRATEGY:-confidence}" \
        --threshold "${THRESHOLD:-0.8}" \
        --learning_rate "${LR:-5e-5}" \
        --per_device_train_batch_size "${BATCH_SIZE:-64}" \
        --per_device_eval_batch_size "${EVAL_BATCH_SIZE:-64}" \
        --num_train_epochs "${EPOCHS:-50}" \
        --seed "${SEED:-777}" \
        --report_to "$REPORT_TO" \
        "$@"
}
( _lgvit_train_stage1_swin "$@" ); _lgvit_status=$?
unset -f _lgvit_train_stage1_swin
(return 0 2>/dev/null) && return "$_lgvit_status" || exit "$_lgvit_status"
