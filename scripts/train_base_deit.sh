#!/usr/bin/env bash
# Stage 0: fine-tune the backbone without exits (the full model's reference accuracy).
# Backbone: ViT-B/16, or DeiT-B with BACKBONE=DeiT. Run or source from any directory. Settings come from the presets (configs/paper/,
# configs/methods/); environment variables override them (README, "The paper's recipe"); extra arguments go to
# run_classification.py, e.g.  DATASET=Food101 EPOCHS=3 bash scripts/train_base_deit.sh --max_train_samples 1000
source "$(dirname "${BASH_SOURCE[0]}")/launch.sh" base deit "$@"
