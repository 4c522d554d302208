# Sourced by every train_*/eval_* launcher: `source scripts/launch.sh <stage> <deit|swin> [arguments...]` runs that
# stage (`lgvit_stage` in common.sh) in a subshell, so a shell that sources a launcher keeps its options and
# variables, and returns its exit status. "deit" takes BACKBONE from the environment (ViT or DeiT), "swin" sets Swin.
_lgvit_stage="$1" _lgvit_family="$2"
shift 2
# SIGUSR1/SIGTERM/SIGINT to this shell go to the stage as SIGTERM, which stops training with a checkpoint
# (run_requeueable in common.sh); the stage runs in the background because bash runs no trap during a foreground one.
_lgvit_pid="" _lgvit_traps="$(trap -p USR1 TERM INT)"
trap 'if [[ -n "$_lgvit_pid" ]]; then kill -TERM "$_lgvit_pid" 2>/dev/null || true; fi' USR1 TERM INT
(
    set -euo pipefail
    SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    if [[ "$_lgvit_family" == swin ]]; then BACKBONE=Swin; fi
    source "$SCRIPT_DIR/common.sh"
    lgvit_stage "$_lgvit_stage" "$@"
) &
_lgvit_pid=$!
while true; do
    wait "$_lgvit_pid" && _lgvit_status=0 || _lgvit_status=$?
    kill -0 "$_lgvit_pid" 2>/dev/null || break   # still running: `wait` was cut short by a signal
done
trap - USR1 TERM INT
eval "$_lgvit_traps"
unset _lgvit_stage _lgvit_family _lgvit_pid _lgvit_traps
return "$_lgvit_status"
