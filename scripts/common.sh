# Shared by the launchers in scripts/ (sourced, never run): repository root, Python, launcher, and `lgvit_stage`,
# the one stage function every train_*/eval_* script calls. Expects SCRIPT_DIR (the sourcing script's directory).
#
# Hyperparameters live in the presets (configs/paper/, configs/methods/); a launcher passes paths, and passes a
# setting only when its variable is set (LR=1e-4, EPOCHS=3, ...). The original scripts' variable names work too.

ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
RUN="$ROOT/run_classification.py"
PRESETS="${PRESETS:-$ROOT/configs/paper}"   # configs/digits for the offline runs

# The active virtualenv's python, else the repository's .venv, else python3.
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -n "${VIRTUAL_ENV:-}" ]]; then PYTHON=python
    elif [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"
    else PYTHON=python3
    fi
fi

# Processes: one per visible GPU on this node (torchrun), one plain python process on a CPU-only machine.
# GPUS_PER_NODE (or NUM_GPUS, the older name) sets the processes per node (on a CPU-only machine GPUS_PER_NODE=2 runs
# two gloo processes). Several nodes: NNODES, NODE_RANK (0 .. NNODES-1, one launcher per node), MASTER_ADDR and
# MASTER_PORT (node 0's address and a free port), as torchrun's multi-node flags; scripts/slurm/ starts them from
# SLURM's variables. MAX_RESTARTS > 0 restarts the whole group after a failure, resuming from the last checkpoint
# (on several nodes through torchrun's c10d rendezvous at MASTER_ADDR:MASTER_PORT, named RDZV_ID).
# PRECISION (auto, bf16, fp16, fp32 = IEEE float32 as in the paper, tf32 = float32 with TF32 products),
# GLOBAL_BATCH_SIZE (0: off) and NUM_WORKERS change the presets' precision, global batch and loader workers;
# COMPILE=1 compiles the training step (torch.compile, the Trainer's --torch_compile);
# `python -m utils.training.launch_plan` prints what they come to before anything runs.
# DRY_RUN=1 prints the plan and the command without running it (PLAN_GPU and PLAN_CPUS: plan for another node).
GPUS_PER_NODE="${GPUS_PER_NODE:-${NUM_GPUS:-}}"
NNODES="${NNODES:-1}"
NODE_RANK="${NODE_RANK:-0}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
MASTER_PORT="${MASTER_PORT:-29500}"
MAX_RESTARTS="${MAX_RESTARTS:-0}"

launch_command() {  # launch_command <processes per node>: sets LAUNCH, the command starting the processes
    local per_node="$1" restarts=()
    if (( MAX_RESTARTS > 0 )); then
        # A restarted group gets a fresh rendezvous store: the shared one would still hold the failed group's
        # addresses, which the new processes may read before they are replaced.
        export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
        restarts=(--max_restarts="$MAX_RESTARTS")
    fi
    if (( NNODES > 1 && MAX_RESTARTS > 0 )); then
        # Restarts across nodes need the c10d rendezvous (the static one cannot form a group twice); node ranks then
        # follow the order in which nodes join, and RDZV_ID names the run on every node.
        LAUNCH=("$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --rdzv_backend=c10d
                --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" --rdzv_id="${RDZV_ID:-${SLURM_JOB_ID:-lgvit}}"
                --nproc_per_node="$per_node" "${restarts[@]}")
    elif (( NNODES > 1 )); then
        LAUNCH=("$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK"
                --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --nproc_per_node="$per_node")
    elif (( per_node > 0 || MAX_RESTARTS > 0 )); then
        LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node="$(( per_node > 0 ? per_node : 1 ))"
                "${restarts[@]}")
    else
        LAUNCH=("$PYTHON")
    fi
}

# SIGUSR1 or SIGTERM (a cluster's warning before a time limit or a pre-emption; Ctrl-C too) stops training at the
# next optimizer step end with a checkpoint, and the stage exits with REQUEUE_EXIT_CODE: run the same command again
# to resume (utils/training/requeue.py).
REQUEUE_EXIT_CODE=75

run_requeueable() {  # run_requeueable <command...>: run it, passing SIGUSR1/SIGTERM/SIGINT on to it as SIGTERM
    # In the background with `wait`: bash runs no trap while a foreground command runs. torchrun passes SIGTERM on
    # to its workers. A command that fails after a signal was passed on returns REQUEUE_EXIT_CODE (torchrun itself
    # exits 1 on a signal whatever its workers return); one that succeeds (training had ended) returns 0.
    local child="" signalled="" status
    # Passed on once: a second SIGTERM would cut torchrun's wait for its workers short.
    trap 'if [[ -z "$signalled" && -n "$child" ]]; then kill -TERM "$child" 2>/dev/null || true; fi; signalled=1' \
        USR1 TERM INT
    "$@" &
    child=$!
    if [[ -n "$signalled" ]]; then kill -TERM "$child" 2>/dev/null || true; fi   # a signal before it started
    while true; do
        wait "$child" && status=0 || status=$?
        kill -0 "$child" 2>/dev/null || break   # still running: `wait` was cut short by a signal
    done
    trap - USR1 TERM INT
    if [[ -n "$signalled" && "$status" -ne 0 ]]; then return "$REQUEUE_EXIT_CODE"; fi
    return "$status"
}

# wandb by default (offline when no API key is configured); REPORT_TO=none turns it off.
REPORT_TO="${REPORT_TO:-wandb}"
export WANDB_DIR="${WANDB_DIR:-$ROOT}"

# The original scripts' variable names: MODEL_NAME (the model), NUM_EXITS, and the method tag they put into output
# paths (PAPER_NAME, ADDTIONAL_INFO, ADD_INFO); DATANAME and MODEL_TYPE below.
MODEL_NAME_OR_PATH="${MODEL_NAME_OR_PATH:-${MODEL_NAME:-}}"
NUM_EARLY_EXITS="${NUM_EARLY_EXITS:-${NUM_EXITS:-}}"
METHOD="${METHOD:-${PAPER_NAME:-${ADDTIONAL_INFO:-${ADD_INFO:-LGViT}}}}"

# Paper backbones: ViT-B/16 (real ViT weights) or DeiT-B (distilled) with BACKBONE=DeiT; Swin-B for *_swin.sh.
BACKBONE="${BACKBONE:-ViT}"
case "$BACKBONE" in
    ViT) DEFAULT_MODEL=google/vit-base-patch16-224 ;;
    DeiT) DEFAULT_MODEL=facebook/deit-base-distilled-patch16-224 ;;
    Swin) DEFAULT_MODEL=microsoft/swin-base-patch4-window7-224 ;;
    *) echo "BACKBONE must be ViT, DeiT or Swin, not '$BACKBONE'" >&2; return 2 ;;
esac
DATASET="${DATASET:-cifar100}"
# The data's name in paths and run names (the original's DATANAME and MODEL_TYPE work as well).
if [[ -n "${DATANAME:-}" ]]; then
    DATA_NAME="$DATANAME"
elif [[ -n "${TRAIN_DIR:-}${VALIDATION_DIR:-}" ]]; then
    DATA_NAME="$(basename "$(dirname "${TRAIN_DIR:-$VALIDATION_DIR}")")"   # data/flowers/train -> flowers
else
    DATA_NAME="${DATASET##*/}"        # Maysee/tiny-imagenet -> tiny-imagenet
fi
SAVE_ROOT="${SAVE_ROOT:-$ROOT/saved_models/${MODEL_TYPE:-$BACKBONE-base}/$DATA_NAME}"

method_preset() {  # method_preset <name>: the configs/methods file of a method, whatever the case of its name
    local file
    for file in "$ROOT"/configs/methods/*.yaml; do
        if [[ "$(basename "${file%.yaml}" | tr '[:upper:]' '[:lower:]')" == "$(tr '[:upper:]' '[:lower:]' <<< "$1")" ]]; then
            echo "$file"
            return 0
        fi
    done
    echo "No preset for method '$1' in configs/methods/: METHOD must be one of" \
        "$(cd "$ROOT/configs/methods" && ls -- *.yaml | sed 's/\.yaml$//' | paste -sd ' ')." >&2
    return 2
}

preset_value() {  # preset_value <key> <preset file>...: the value the last file setting <key> gives it
    "$PYTHON" -c 'import sys, yaml
value = None
for path in sys.argv[2:]:
    value = (yaml.safe_load(open(path)) or {}).get(sys.argv[1], value)
print("" if value is None else value)' "$@"
}

stage_presets() {  # stage_presets <stage> <method preset>: a stage's presets, later ones overriding earlier ones
    local stage="$1" method_file="$2" backbone="$(tr '[:upper:]' '[:lower:]' <<< "$BACKBONE")"
    echo "$PRESETS/$stage.yaml"
    [[ "$stage" == stage1 ]] && echo "$method_file"
    [[ -f "$PRESETS/$backbone/$stage.yaml" ]] && echo "$PRESETS/$backbone/$stage.yaml"
    if [[ "$stage" == stage1 && -f "$ROOT/configs/methods/$backbone/$(basename "$method_file")" ]]; then
        echo "$ROOT/configs/methods/$backbone/$(basename "$method_file")"
    fi
    return 0
}

lgvit_stage() {  # lgvit_stage <base|stage1|stage2|eval> [run_classification.py arguments...]
    local stage="$1"
    shift
    local method_file presets
    method_file="$(method_preset "$METHOD")" || return 2   # a wrong METHOD stops before anything runs
    METHOD="$(basename "${method_file%.yaml}")"             # the preset's own spelling, for paths and names
    mapfile -t presets < <(stage_presets "$stage" "$method_file")
    local args=() model output_dir run_name
    local train_strategy="${TRAIN_STRATEGY:-$(preset_value train_strategy "${presets[@]}")}"
    local stage1_strategy="${STAGE1_STRATEGY:-$(preset_value train_strategy "$PRESETS/stage1.yaml" "$method_file")}"
    local stage1_dir="${STAGE1_DIR:-$SAVE_ROOT/$METHOD/$stage1_strategy}"
    local stage2_dir="$SAVE_ROOT/$METHOD/stage2_${TRAIN_STRATEGY:-$(preset_value train_strategy "$PRESETS/stage2.yaml")}"
    case "$stage" in
        base|stage1)
            model="${MODEL_NAME_OR_PATH:-}"
            if [[ -z "$model" && -z "${CONFIG_NAME:-}" ]]; then model="$DEFAULT_MODEL"; fi
            [[ -n "$model" ]] && args+=(--model_name_or_path "$model")
            [[ -n "${CONFIG_NAME:-}" ]] && args+=(--config_name "$CONFIG_NAME")
            args+=(--backbone "$BACKBONE")
            if [[ "$stage" == base ]]; then
                output_dir="${OUTPUT_DIR:-$SAVE_ROOT/base}"
            else
                output_dir="${OUTPUT_DIR:-$SAVE_ROOT/$METHOD/$train_strategy}"
            fi ;;
        stage2)
            args+=(--model_name_or_path "${MODEL_NAME_OR_PATH:-$stage1_dir}")
            output_dir="${OUTPUT_DIR:-$SAVE_ROOT/$METHOD/stage2_$train_strategy}" ;;
        eval)
            # LGViT is evaluated after stage 2, the baselines after stage 1.
            if [[ -d "$stage2_dir" ]]; then model="$stage2_dir"; else model="$stage1_dir"; fi
            args+=(--model_name_or_path "${MODEL_NAME_OR_PATH:-$model}")
            output_dir="${OUTPUT_DIR:-$ROOT/outputs/$BACKBONE-base/$DATA_NAME/$METHOD/eval${EXIT_STRATEGY:+_$EXIT_STRATEGY}${THRESHOLD:+_$THRESHOLD}}" ;;
        *) echo "lgvit_stage: unknown stage '$stage'" >&2; return 2 ;;
    esac
    if [[ -n "${TRAIN_DIR:-}${VALIDATION_DIR:-}" ]]; then
        [[ -n "${TRAIN_DIR:-}" ]] && args+=(--train_dir "$TRAIN_DIR")
        [[ -n "${VALIDATION_DIR:-}" ]] && args+=(--validation_dir "$VALIDATION_DIR")
    else
        args+=(--dataset_name "$DATASET")
    fi
    run_name="${RUN_NAME:-${BACKBONE}_${METHOD}_${stage}_${DATA_NAME}}"
    export WANDB_PROJECT="${WANDB_PROJECT:-LGViT_${BACKBONE}_${DATA_NAME}}"
    args+=(--output_dir "$output_dir" --run_name "$run_name" --report_to "$REPORT_TO")
    # The user's overrides: a setting is passed only when its variable is set, and only to the stages it concerns
    # (the exit layout is stage 1's; later stages keep the checkpoint's).
    local pair variable flag pairs=(LR:learning_rate BATCH_SIZE:per_device_train_batch_size
                                    GLOBAL_BATCH_SIZE:global_batch_size EVAL_BATCH_SIZE:per_device_eval_batch_size
                                    EPOCHS:num_train_epochs SEED:seed PRECISION:precision
                                    NUM_WORKERS:dataloader_num_workers COMPILE:torch_compile)
    [[ "$stage" == stage1 ]] && pairs+=(HIGHWAY_TYPE:highway_type NUM_EARLY_EXITS:num_early_exits
                                        POSITION_EXITS:position_exits)
    [[ "$stage" == stage1 || "$stage" == stage2 ]] && pairs+=(TRAIN_STRATEGY:train_strategy
        LOSS_COEFFICIENT:loss_coefficient HOMO_COEFFICIENT:homo_coefficient HETE_COEFFICIENT:hete_coefficient)
    [[ "$stage" != base ]] && pairs+=(EXIT_STRATEGY:exit_strategy THRESHOLD:threshold PATIENCE:patience)
    for pair in "${pairs[@]}"; do
        variable="${pair%%:*}" flag="${pair#*:}"
        [[ -n "${!variable:-}" ]] && args+=("--$flag" "${!variable}")
    done
    local per_node
    per_node="$(cd "$ROOT" && "$PYTHON" -m utils.training.launch_plan --nodes "$NNODES" \
        --processes_per_node "$GPUS_PER_NODE" -- "${presets[@]}" "${args[@]}" "$@")" || return 2
    launch_command "$per_node"
    echo "=== $stage: run_classification.py ${presets[*]#$ROOT/} ${args[*]} $* ==="
    if [[ -n "${DRY_RUN:-}" ]]; then
        echo "${LAUNCH[*]} $RUN ${presets[*]} ${args[*]} $*"
        return 0
    fi
    run_requeueable "${LAUNCH[@]}" "$RUN" "${presets[@]}" "${args[@]}" "$@"
}
