#!/usr/bin/env bash
# Train and evaluate every early-exit method on one dataset, then write one markdown table and one figure:
# OUTPUT_DIR/comparison.md and OUTPUT_DIR/comparison.png (utils/compare_methods.py).
#   bash scripts/compare_methods.sh                      # the paper's setting: ViT-B/16 on CIFAR-100 (GPUs)
#   DATASET=digits bash scripts/compare_methods.sh       # offline: a tiny 12-layer DeiT on the digits, CPU, ~10 min
# Recipe: a base model (no exits) is trained once; each method's exits (configs/methods/<method>.yaml) are then
# trained with that backbone (stage 1; LGViT also gets stage 2, self-distillation); each method's thresholds
# are calibrated on held-out training samples (CALIBRATION_SPLIT of train, never trained on) to lose at most
# MAX_ACCURACY_DROP accuracy points against its own final classifier, then the evaluation split is run with
# per-sample early exit, a one-pass sweep of the method's criterion and a wall-clock timing against the full model.
# METHODS picks the methods ("sdn pabee pcee berxit vit_ee lgvit"); REPORT_TO=wandb logs every run; arguments
# are passed on to every run_classification.py call (e.g. --max_train_samples 500 for a quick look).
_lgvit_compare() {
    set -euo pipefail
    local SCRIPT_DIR
    SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    source "$SCRIPT_DIR/common.sh"
    local methods=(${METHODS:-sdn pabee pcee berxit vit_ee lgvit}) extra=("$@")
    local presets base_source
    if [[ "$DATASET" == digits ]]; then
        presets="$ROOT/configs/digits"
        base_source=(--config_name "$presets/tiny_deit.json")   # trained from scratch, no hub needed
        export HF_HUB_OFFLINE=1 OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"   # see scripts/quickstart.sh
    else
        presets="$ROOT/configs/paper"
        base_source=(--model_name_or_path "${MODEL_NAME_OR_PATH:-$DEFAULT_MODEL}" --backbone "$BACKBONE")
    fi
    local out="${OUTPUT_DIR:-$ROOT/outputs/compare/$BACKBONE-$DATA_NAME}"
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
    export WANDB_PROJECT="${WANDB_PROJECT:-LGViT_${BACKBONE}_${DATA_NAME}_methods}"
    local common=(--dataset_name "$DATASET" --calibration_split "${CALIBRATION_SPLIT:-0.1}"
                  --seed "${SEED:-777}" --report_to "$REPORT_TO")

    run() {  # run <run name> <output dir> <run_classification arguments...>
        local name="$1" dir="$2"
        shift 2
        echo
        echo "=== $name -> $dir ==="
        "${LAUNCH[@]}" "$RUN" "$@" --output_dir "$dir" --run_name "${name}_$DATA_NAME" "${common[@]}" "${extra[@]}"
    }
    preset_value() {  # preset_value <preset file> <key>
        "$PYTHON" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
    }
    local method model preset
    for method in "${methods[@]}"; do  # every preset must exist before hours of training start
        preset="$ROOT/configs/methods/$method.yaml"
        [[ -f "$preset" ]] || { echo "No preset $preset; METHODS must name files in configs/methods/." >&2; return 2; }
    done
    run base "$out/base" "$presets/base.yaml" "${base_source[@]}"
    for method in "${methods[@]}"; do
        preset="$ROOT/configs/methods/$method.yaml"
        run "${method}_stage1" "$out/$method/stage1" "$presets/stage1.yaml" "$preset" --model_name_or_path "$out/base"
        model="$out/$method/stage1"
        if [[ "$method" == lgvit ]]; then
            run "${method}_stage2" "$out/$method/stage2" "$presets/stage2.yaml" --model_name_or_path "$model"
            model="$out/$method/stage2"
        fi
        run "${method}_eval" "$out/$method/eval" "$presets/eval.yaml" --model_name_or_path "$model" \
            --exit_strategy "$(preset_value "$preset" exit_strategy)" \
            --max_accuracy_drop "${MAX_ACCURACY_DROP:-1.0}" --sweep True --measure_speedup True
    done
    (cd "$ROOT" && "$PYTHON" -m utils.compare_methods "$out" "${methods[@]}")
}
( _lgvit_compare "$@" ); _lgvit_status=$?
unset -f _lgvit_compare
(return 0 2>/dev/null) && return "$_lgvit_status" || exit "$_lgvit_status"
