#!/usr/bin/env bash
# Stage 2 on Swin: self-distillation into the exit heads with the backbone and final classifier frozen
# (distillation_LGViT, defined for Swin in docs/swin_distillation.md). Starts from the stage-1 output dir
# (STAGE1_DIR or MODEL_NAME_OR_PATH) and keeps its exit layout. Run or source from any directory; environment
# variables override every setting.
_lgvit_train_stage2_swin() {
    set -euo pipefail
    local SCRIPT_DIR
    SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    BACKBONE=Swin
    source "$SCRIPT_DIR/common.sh"
    local highway_type="${HIGHWAY_TYPE:-LGViT}" train_strategy="${TRAIN_STRATEGY:-distillation_LGViT}"
    local stage1_dir="${STAGE1_DIR:-$SAVE_ROOT/$highway_type/${STAGE1_STRATEGY:-alternating_weighted}}"
    local model="${MODEL_NAME_OR_PATH:-$stage1_dir}"
    local output_dir="${OUTPUT_DIR:-$SAVE_ROOT/$highway_type/stage2_$train_strategy}"
    export WANDB_PROJECT="${WANDB_PROJECT:-LGViT_${BACKBONE}_${DATA_NAME}}"
    "${LAUNCH[@]}" "$RUN" "$ROOT/configs/paper/stage2.yaml" \
        --model_name_or_path "$model" \
        --dataset_name "$DATASET" \
        --output_dir "$output_dir" \
        --run_name "${RUN_NAME:-${BACKBONE}_${highway_type}_${train_strategy}_${DATA_NAME}}" \
        --train_strategy "$train_strategy" \
        --loss_coefficient "${LOSS_COEFFICIENT:-0.3}" \
        --homo_coefficient "${HOMO_COEFFICIENT:-0.01}" \
        --hete_coefficient "${HETE_COEFFICIENT:-0.01}" \
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
( _lgvit_train_stage2_swin "$@" ); _lgvit_status=$?
unset -f _lgvit_train_stage2_swin
(return 0 2>/dev/null) && return "$_lgvit_status" || exit "$_lgvit_status"
