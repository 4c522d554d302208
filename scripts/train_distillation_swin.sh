#!/usr/bin/env bash
# Stage 2: self-distillation into the exit heads (distillation_LGViT), backbone and final classifier
# frozen; starts from the stage-1 output dir and keeps its exit layout.
# Backbone: Swin-B. Run or source from any directory. Settings come from the presets (configs/paper/,
# configs/methods/); environment variables override them (README, "The paper's recipe"); extra arguments go to
# run_classification.py, e.g.  DATASET=Food101 EPOCHS=3 bash scripts/train_distillation_swin.sh --max_train_samples 1000
source "$(dirname "${BASH_SOURCE[0]}")/launch.sh" stage2 swin "$@"
