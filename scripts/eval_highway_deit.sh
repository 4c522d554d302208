#!/usr/bin/env bash
# Evaluation with per-sample early exit: accuracy, exits per layer, average exit layer, speed-ups, sweep
# and figures (eval_results.json, analysis_results.json, *.png in the output dir). Evaluates METHOD's stage-2
# output dir (LGViT), else its stage-1 dir.
# Backbone: ViT-B/16, or DeiT-B with BACKBONE=DeiT. Run or source from any directory. Settings come from the presets (configs/paper/,
# configs/methods/); environment variables override them (README, "The paper's recipe"); extra arguments go to
# run_classification.py, e.g.  DATASET=Food101 EPOCHS=3 bash scripts/eval_highway_deit.sh --max_train_samples 1000
source "$(dirname "${BASH_SOURCE[0]}")/launch.sh" eval deit "$@"
