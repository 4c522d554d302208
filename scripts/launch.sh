# Sourced by every train_*/eval_* launcher: `source scripts/launch.sh <stage> <deit|swin> [arguments...]` runs that
# stage (`lgvit_stage` in common.sh) in a subshell, so a shell that sources a launcher keeps its options and
# variables, and returns its exit status. "deit" takes BACKBONE from the environment (ViT or DeiT), "swin" sets Swin.
_lgvit_stage="$1" _lgvit_family="$2"
shift 2
(
    set -euo pipefail
    SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    if [[ "$_lgvit_family" == swin ]]; then BACKBONE=Swin; fi
    source "$SCRIPT_DIR/common.sh"
    lgvit_stage "$_lgvit_stage" "$@"
)
_lgvit_status=$?
unset _lgvit_stage _lgvit_family
return "$_lgvit_status"
