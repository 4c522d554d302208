#!/usr/bin/env bash
# Stage 0 on Swin: fine-tune Swin-B (microsoft/swin-base-patch4-window7-224) without exits; gives the full model's
# reference accuracy (the original train_base_swin.sh: 50 epochs). Run or source from any directory; every setting
# below can be overridden by an environment variable, and extra arguments are passed on to run_classification.py,
# e.g.  DATASET=Food101 bash scripts/train_base_swin.sh --max_train_samples 1000
_lgvit_train_base_swin() {
    set -euo pipefail
    local SCRIPT_DIR
    SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    BACKBONE=Swin
    source "$SCRIPT_DIR/common.sh"
    local model="${MODEL_NAME_OR_PATH:-$DEFAULT_MODEL}"
    local output_dir="${OUTPUT_DIR:-$SAVE_ROOT/base}"
    export WANDB_PROJECT="${WANDB_PROJECT:-LGViT_${BACKBONE}_${DATA_NAME}}"
    "${LAUNCH[@]}" "$RUN" "$ROOT/configs/paper/base.yaml" \
        --model_name_or_path "$model" \
        --backbone "$BACKBONE" \
        --dataset_name "$DATASET" \
        --output_dir "$output_dir" \
        --run_name "${RUN_NAME:-${BACKBONE}-base_${DATA_NAME}}" \
        --learning_rate "${LR:-5e-5}" \
        --per_device_train_batch_size "${BATCH_SIZE:-64}" \
        --per_device_eval_batch_size "${EVAL_BATCH_SIZE:-64}" \
        --num_train_epochs "${EPOCHS:-50}" \
        --seed "${SEED:-777}" \
        --report_to "$REPORT_TO" \
        "$@"
}
( _lgvit_train_base_swin "$@" ); _lgvit_status=$?
unset -f _lgvit_train_base_swin
(return 0 2>/dev/null) && return "$_lgvit_status" || exit "$_lgvit_status"
