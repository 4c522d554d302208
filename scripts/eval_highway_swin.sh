#!/usr/bin/env bash
# Evaluation of a Swin model with per-sample early exit: accuracy, exits per layer (1..24, 1-based, fixing the
# original's off-by-one), average exit layer and speed-up = 24 / average (eval_results.json in OUTPUT_DIR).
# Evaluates the stage-2 output dir unless MODEL_NAME_OR_PATH is given. Sweep thresholds with e.g.
#   for t in 0.6 0.7 0.8 0.9; do THRESHOLD=$t bash scripts/eval_highway_swin.sh; done
_lgvit_eval_swin() {
    set -euo pipefail
    local SCRIPT_DIR
    SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    BACKBONE=Swin
    source "$SCRIPT_DIR/common.sh"
    local highway_type="${HIGHWAY_TYPE:-LGViT}" exit_strategy="${EXIT_STRATEGY:-confidence}"
    local threshold="${THRESHOLD:-0.8}"
    local model="${MODEL_NAME_OR_PATH:-$SAVE_ROOT/$highway_type/stage2_distillation_LGViT}"
    local output_dir="${OUTPUT_DIR:-$ROOT/outputs/$BACKBONE-base/$DATA_NAME/$highway_type/${exit_strategy}_$threshold}"
    export WANDB_PROJECT="${WANDB_PROJECT:-LGViT_${BACKBONE}_${DATA_NAME}_eval}"
    "${LAUNCH[@]}" "$RUN" "$ROOT/configs/paper/eval.yaml" \
        --model_name_or_path "$model" \
        --dataset_name "$DATASET" \
        --output_dir "$output_dir" \
        --run_name "${RUN_NAME:-${BACKBONE}_${highway_type}_${exit_strategy}_${threshold}_${DATA_NAME}}" \
        --exit_strategy "$exit_strategy" \
        --threshold "$threshold" \
        --per_device_eval_batch_size "${EVAL_BATCH_SIZE:-64}" \
        --seed "${SEED:-777}" \
        --report_to "$REPORT_TO" \
        "$@"
}
( _lgvit_eval_swin "$@" ); _lgvit_status=$?
unset -f _lgvit_eval_swin
(return 0 2>/dev/null) && return "$_lgvit_status" || exit "$_lgvit_status"
