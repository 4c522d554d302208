"""A launcher that fails when sourced returns its status without closing or changing the shell. (Every launcher run
from another directory and chained through the default paths: test_paper_scale.py; settings and variables:
test_launchers.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1",
                   "NUM_GPUS": "0", "REPORT_TO": "none", "DATASET": "digits", "BATCH_SIZE": "16",
                   "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=300)


def test_a_failing_sourced_script_returns_without_closing_the_shell(tmp_path: Path) -> None:
    finished = run_script(
        f"source {ROOT}/scripts/eval_highway_deit.sh --no_such_flag 1; echo rc=$?; "
        "case $- in *e*) echo errexit-leaked;; esac; echo backbone=${BACKBONE:-unset}",
        tmp_path, MODEL_NAME_OR_PATH=str(tmp_path / "none"),
    )
    assert "rc=0" not in finished.stdout and "rc=" in finished.stdout
    assert "errexit-leaked" not in finished.stdout and "backbone=unset" in finished.stdout
