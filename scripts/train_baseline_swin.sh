#!/usr/bin/env bash
# Stage 1: train the exit heads of METHOD (default LGViT; SDN, PABEE, PCEE, BERxiT, ViT-EE) with the
# backbone.
# Backbone: Swin-B. Run or source from any directory. Settings come from the presets (configs/paper/,
# configs/methods/); environment variables override them (README, "The paper's recipe"); extra arguments go to
# run_classification.py, e.g.  DATASET=Food101 EPOCHS=3 bash scripts/train_baseline_swin.sh --max_train_samples 1000
source "$(dirname "${BASH_SOURCE[0]}")/launch.sh" stage1 swin "$@"
