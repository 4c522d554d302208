#!/usr/bin/env bash
# Train and evaluate every early-exit method on one dataset, then write one markdown table and one figure:
# OUTPUT_DIR/comparison.md and OUTPUT_DIR/comparison.png (python -m utils.analysis.compare_methods).
#   bash scripts/compare_methods.sh                      # the paper's setting: ViT-B/16 on CIFAR-100 (GPUs)
#   DATASET=digits bash scripts/compare_methods.sh       # offline: a tiny 12-layer ViT on the digits, CPU, ~10 min
#   DATASET=digits RISK_LEVEL=0.1 bash scripts/compare_methods.sh   # certified thresholds against empirical ones
# Recipe: a base model (no exits) is trained once; each method's exits (configs/methods/<method>.yaml) are then
# trained with that backbone (stage 1; LGViT also gets stage 2, self-distillation); each method's thresholds
# are calibrated on held-out training samples (CALIBRATION_SPLIT of train, never trained on) to lose at most
# MAX_ACCURACY_DROP accuracy points against its own final classifier, then the evaluation split is run with
# per-sample early exit, a one-pass sweep of the method's criterion and a wall-clock timing against the full model.
# RISK_LEVEL (e.g. 0.1) certifies the budget instead (docs/certified-thresholds.md): with probability >= 1 - RISK_LEVEL
# over the calibration draw, new images lose at most MAX_ACCURACY_DROP points. Each method's evaluation then uses
# the certified thresholds (<method>/eval) and is run once more with the empirical ones (<method>/eval_empirical),
# and the table sets the two side by side.
# On the digits the calibration split defaults to 0.2 (306 of the 1,527 training digits), not 0.1 (153): zero errors
# on n images certify a budget epsilon at risk level delta only when (1 - epsilon)^n <= delta, which for one point
# at delta = 0.1 needs n >= 230.
# METHODS picks the methods ("SDN PABEE PCEE BERxiT ViT-EE LGViT"); REPORT_TO=wandb logs every run; arguments
# are passed on to every run_classification.py call (e.g. --max_train_samples 500 for a quick look).
_lgvit_compare() {
    set -euo pipefail
    local SCRIPT_DIR
    SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    source "$SCRIPT_DIR/common.sh"
    if [[ "$DATASET" == digits ]]; then
        PRESETS="$ROOT/configs/digits"
        CONFIG_NAME="${CONFIG_NAME:-$PRESETS/tiny_deit.json}"   # trained from scratch, no hub needed
        export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # see scripts/quickstart.sh
    fi
    local methods=(${METHODS:-SDN PABEE PCEE BERxiT ViT-EE LGViT}) method preset names=()
    for method in "${methods[@]}"; do  # every preset must exist before hours of training start
        preset="$(method_preset "$method")" || return 2
        names+=("$(basename "$preset" .yaml)")
    done
    local out="${OUTPUT_DIR:-$ROOT/outputs/compare/$BACKBONE-$DATA_NAME}"
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
    export WANDB_PROJECT="${WANDB_PROJECT:-LGViT_${BACKBONE}_${DATA_NAME}_methods}"
    local calibration_split="${CALIBRATION_SPLIT:-$([[ "$DATASET" == digits ]] && echo 0.2 || echo 0.1)}"
    local extra=(--calibration_split "$calibration_split" "$@") model
    local budget=(--max_accuracy_drop "${MAX_ACCURACY_DROP:-1.0}")
    if [[ -n "${RISK_LEVEL:-}" ]]; then  # a calibration split too small to certify stops here, not after training
        for method in "${names[@]}"; do
            METHOD="$method" OUTPUT_DIR="$out/$method/stage1" RUN_NAME="${method}_check_$DATA_NAME" \
                lgvit_stage stage1 "${extra[@]}" "${budget[@]}" --risk_level "$RISK_LEVEL" --check_only True
        done
    fi
    OUTPUT_DIR="$out/base" RUN_NAME="base_$DATA_NAME" lgvit_stage base "${extra[@]}"
    for method in "${names[@]}"; do
        METHOD="$method" MODEL_NAME_OR_PATH="$out/base" CONFIG_NAME="" OUTPUT_DIR="$out/$method/stage1" \
            RUN_NAME="${method}_stage1_$DATA_NAME" lgvit_stage stage1 "${extra[@]}"
        model="$out/$method/stage1"
        if [[ "$method" == LGViT ]]; then
            METHOD="$method" MODEL_NAME_OR_PATH="$model" OUTPUT_DIR="$out/$method/stage2" \
                RUN_NAME="${method}_stage2_$DATA_NAME" lgvit_stage stage2 "${extra[@]}"
            model="$out/$method/stage2"
        fi
        METHOD="$method" MODEL_NAME_OR_PATH="$model" OUTPUT_DIR="$out/$method/eval" \
            RUN_NAME="${method}_eval_$DATA_NAME" lgvit_stage eval "${extra[@]}" "${budget[@]}" \
            --sweep True --measure_speedup True ${RISK_LEVEL:+--risk_level "$RISK_LEVEL"}
        if [[ -n "${RISK_LEVEL:-}" ]]; then  # the same budget chosen empirically, for the comparison
            METHOD="$method" MODEL_NAME_OR_PATH="$model" OUTPUT_DIR="$out/$method/eval_empirical" \
                RUN_NAME="${method}_eval_empirical_$DATA_NAME" lgvit_stage eval "${extra[@]}" "${budget[@]}"
        fi
    done
    (cd "$ROOT" && "$PYTHON" -m utils.analysis.compare_methods "$out" "${names[@]}" --report_to "$REPORT_TO")
}
( _lgvit_compare "$@" ); _lgvit_status=$?
unset -f _lgvit_compare
(return 0 2>/dev/null) && return "$_lgvit_status" || exit "$_lgvit_status"
