# Shared by the launchers in scripts/ (sourced, never run): repository root, Python, launcher, wandb defaults.
# Expects SCRIPT_DIR (the directory of the sourcing script).

ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
RUN="$ROOT/run_classification.py"

# The active virtualenv's python, else the repository's .venv, else python3.
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -n "${VIRTUAL_ENV:-}" ]]; then PYTHON=python
    elif [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"
    else PYTHON=python3
    fi
fi

# One process per visible GPU (torchrun), plain python on CPU-only machines. NUM_GPUS overrides.
NUM_GPUS="${NUM_GPUS:-$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)}"
if (( NUM_GPUS > 0 )); then
    LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$NUM_GPUS")
else
    LAUNCH=("$PYTHON")
fi

# wandb by default (offline when no API key is configured); REPORT_TO=none turns it off.
REPORT_TO="${REPORT_TO:-wandb}"
export WANDB_DIR="${WANDB_DIR:-$ROOT}"

# Paper backbones: real ViT-B weights, or DeiT-B (distilled) with BACKBONE=DeiT.
BACKBONE="${BACKBONE:-ViT}"
case "$BACKBONE" in
    ViT) DEFAULT_MODEL=google/vit-base-patch16-224 ;;
    DeiT) DEFAULT_MODEL=facebook/deit-base-distilled-patch16-224 ;;
    Swin) DEFAULT_MODEL=microsoft/swin-base-patch4-window7-224 ;;   # set by the *_swin.sh launchers
    *) echo "BACKBONE must be ViT, DeiT or Swin, not '$BACKBONE'" >&2; return 2 ;;
esac
DATASET="${DATASET:-cifar100}"
DATA_NAME="${DATASET##*/}"        # Maysee/tiny-imagenet -> tiny-imagenet, for paths and names
SAVE_ROOT="${SAVE_ROOT:-$ROOT/saved_models/$BACKBONE-base/$DATA_NAME}"
