#!/usr/bin/env bash
# Offline quickstart, CPU, a few minutes: the whole LGViT recipe on scikit-learn's handwritten digits with a tiny
# 12-layer ViT (configs/digits/): base training from scratch, stage 1 (LGViT exit heads, configs/methods/LGViT.yaml),
# stage 2 (self-distillation), then early-exit evaluation. Prints a table and writes OUTPUT_DIR/results.json.
#   bash scripts/quickstart.sh                    # outputs in outputs/quickstart
#   OUTPUT_DIR=outputs/my_run REPORT_TO=wandb bash scripts/quickstart.sh
#   EPOCHS=1 bash scripts/quickstart.sh           # every training stage 1 epoch: a quick check, not the results
# EPOCHS sets the epochs of every training stage (default: the presets' 25 for the base model, 15 for stage 1 and
# 10 for stage 2); SEED the seed (777).
# Each stage is one run_classification.py command, shown before it starts. Rerunning overwrites the outputs.
# The last digits depend on the CPU's kernel set (AVX-512, AVX2 or none); `python -m benchmarks.bench_reproducibility`
# runs the quickstart under each and prints how far every stage moves.
_lgvit_quickstart() {
    set -euo pipefail
    local SCRIPT_DIR
    SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    REPORT_TO="${REPORT_TO:-none}"
    source "$SCRIPT_DIR/common.sh"
    local out="${OUTPUT_DIR:-$ROOT/outputs/quickstart}"
    mkdir -p "$out"
    out="$(cd "$out" && pwd)"
    local configs="$ROOT/configs/digits"
    # Nothing here needs the network; wandb (if asked for) logs offline without an API key.
    export HF_HUB_OFFLINE=1
    # One thread: this model is too small to gain much from two, and on a 2-core machine that is busy with
    # anything else, two OpenMP threads per process made training 6x slower (measured: 48 s instead of 3 s
    # per epoch). Set OMP_NUM_THREADS to use more.
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
    local common=(--report_to "$REPORT_TO" --seed "${SEED:-777}") epochs=()
    if [[ -n "${EPOCHS:-}" ]]; then epochs=(--num_train_epochs "$EPOCHS"); fi
    local start=$SECONDS

    stage() {  # stage <name> <presets...> -- <args...>
        local name="$1" presets=()
        shift
        while [[ "$1" != -- ]]; do presets+=("$ROOT/configs/$1"); shift; done
        shift
        echo
        echo "=== $name: run_classification.py ${presets[*]#$ROOT/} $* ==="
        "$PYTHON" "$RUN" "${presets[@]}" --output_dir "$out/$name" "${common[@]}" "$@"
    }
    stage base digits/base.yaml -- --config_name "$configs/tiny_deit.json" "${epochs[@]}"
    stage stage1 digits/stage1.yaml methods/LGViT.yaml -- --model_name_or_path "$out/base" "${epochs[@]}"
    stage stage2 digits/stage2.yaml -- --model_name_or_path "$out/stage1" "${epochs[@]}"
    stage eval digits/eval.yaml -- --model_name_or_path "$out/stage2"
    # The same model at full depth: a confidence above 1 is never reached, so every sample runs all 12 layers.
    stage full_depth digits/eval.yaml -- --model_name_or_path "$out/stage2" --threshold 1.0 --disable_tqdm True \
        --sweep False

    (cd "$ROOT" && "$PYTHON" -m utils.analysis.quickstart_report "$out" "$((SECONDS - start))")
    echo "Quickstart took $((SECONDS - start)) s."
}
( _lgvit_quickstart "$@" ); _lgvit_status=$?
unset -f _lgvit_quickstart
(return 0 2>/dev/null) && return "$_lgvit_status" || exit "$_lgvit_status"
