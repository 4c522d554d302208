#!/usr/bin/env bash
# Evaluation with per-sample early exit: accuracy, exits per layer, average exit layer, speed-ups, sweep and
# figures (eval_results.json, analysis_results.json, *.png in the output dir). Evaluates METHOD's stage-2 output dir
# (LGViT), else its stage-1 dir.
# Backbone: Swin-B. Run or source from any directory. Settings come from the presets (configs/paper/,
# configs/methods/); environment variables override them (README, "The paper's recipe"); extra arguments go to
# run_classification.py, e.g.  DATASET=Food101 EPOCHS=3 bash scripts/eval_highway_swin.sh --max_train_samples 1000
_lgvit_launch() {
    set -euo pipefail
    local SCRIPT_DIR
    SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    BACKBONE=Swin
    source "$SCRIPT_DIR/common.sh"
    lgvit_stage eval "$@"
}
( _lgvit_launch "$@" ); _lgvit_status=$?
unset -f _lgvit_launch
(return 0 2>/dev/null) && return "$_lgvit_status" || exit "$_lgvit_status"
