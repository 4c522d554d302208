#!/usr/bin/env bash
# Stage 1: train the exit heads together with the backbone (LGViT heads, alternating weighted loss).
# Baselines by environment, e.g. BERxiT: HIGHWAY_TYPE=linear TRAIN_STRATEGY=alternating NUM_EARLY_EXITS=11
# POSITION_EXITS="[1,2,3,4,5,6,7,8,9,10,11]". Starts from the hub weights as the paper does
# (MODEL_NAME_OR_PATH=<base output dir> starts from the stage-0 model). Run or source from any directory.
_lgvit_train_stage1() {
    set -euo pipefail
    local SCRIPT_DIR
    SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
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
        --num_early_exits "${NUM_EARLY_EXITS:-8}" \
        --position_exits "${POSITION_EXITS:-[4,5,6,7,8,9,10,11]}" \
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
( _lgvit_train_stage1 "$@" ); _lgvit_status=$?
unset -f _lgvit_train_stage1
(return 0 2>/dev/null) && return "$_lgvit_status" || exit "$_lgvit_status"
