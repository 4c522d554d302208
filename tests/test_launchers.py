"""The launchers: the presets are the one source of hyperparameters, a variable overrides a setting only when set,
the original scripts' variable names work, and stage-1 output paths name the method."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_helpers import write_tiny_config

from models import DeiTHighwayConfig, DeiTHighwayForImageClassification

ROOT = Path(__file__).resolve().parents[1]
SHORT = "--max_train_samples 32 --max_eval_samples 16 --max_steps 1 --eval_strategy no --save_strategy no " \
        "--load_best_model_at_end False --disable_tqdm True"


def launch(script: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in ("BACKBONE", "METHOD", "EPOCHS", "LR")}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", REPORT_TO="none", NUM_GPUS="0", DATASET="digits",
               OMP_NUM_THREADS="1", PYTHON=sys.executable, **variables)
    return subprocess.run(["bash", "-c", f"bash {ROOT / 'scripts' / script} {SHORT}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 4-layer checkpoint with the digits' ten classes, standing for the hub model."""
    root = tmp_path_factory.mktemp("base")
    config = DeiTHighwayConfig.from_pretrained(write_tiny_config(root), num_labels=10, num_early_exits=0)
    DeiTHighwayForImageClassification(config).save_pretrained(root / "model")
    return root / "model"


def command_line(finished: subprocess.CompletedProcess) -> str:
    """The run_classification.py command a launcher printed before running it."""
    return next(line for line in finished.stdout.splitlines() if line.startswith("=== "))


def test_the_original_variable_names_and_the_method_in_the_output_path(tmp_path: Path, base_model: Path) -> None:
    saved = tmp_path / "saved"
    runs = {"PABEE": {"PAPER_NAME": "PABEE", "PATIENCE": "2"}, "SDN": {"ADDTIONAL_INFO": "sdn"},
            "PCEE": {"ADD_INFO": "pcee", "THRESHOLD": "0.4"}}
    for method, variables in runs.items():
        finished = launch("train_baseline_deit.sh", tmp_path, SAVE_ROOT=str(saved), MODEL_NAME=str(base_model),
                          NUM_EXITS="3", POSITION_EXITS="[1,2,3]", **variables)
        assert finished.returncode == 0, finished.stderr[-3000:]
        assert f"configs/methods/{method}.yaml" in command_line(finished)
    pabee = json.loads((saved / "PABEE" / "weighted" / "config.json").read_text())
    assert pabee["exit_strategy"] == "patience" and pabee["patience"] == 2 and pabee["num_early_exits"] == 3
    sdn = json.loads((saved / "SDN" / "weighted" / "config.json").read_text())
    assert sdn["exit_strategy"] == "confidence" and sdn["position_exits"] == [1, 2, 3]
    pcee = json.loads((saved / "PCEE" / "weighted" / "config.json").read_text())
    assert pcee["exit_strategy"] == "patient_and_confident" and pcee["threshold"] == 0.4


def test_settings_come_from_the_presets_unless_a_variable_is_set(tmp_path: Path, base_model: Path) -> None:
    finished = launch("train_base_deit.sh", tmp_path, SAVE_ROOT=str(tmp_path / "saved"),
                      MODEL_NAME_OR_PATH=str(base_model))
    assert finished.returncode == 0, finished.stderr[-3000:]
    line = command_line(finished)
    assert "configs/paper/base.yaml" in line and "--learning_rate" not in line and "--num_train_epochs" not in line
    args = json.loads((tmp_path / "saved" / "base" / "trainer_state.json").read_text())
    assert args["train_batch_size"] == 64  # configs/paper/base.yaml
    finished = launch("train_base_deit.sh", tmp_path, SAVE_ROOT=str(tmp_path / "saved"),
                      MODEL_NAME_OR_PATH=str(base_model), LR="3e-4", BATCH_SIZE="8", EPOCHS="2")
    assert finished.returncode == 0, finished.stderr[-3000:]
    line = command_line(finished)
    assert "--learning_rate 3e-4" in line and "--per_device_train_batch_size 8" in line and "--num_train_epochs 2" in line
    assert json.loads((tmp_path / "saved" / "base" / "trainer_state.json").read_text())["train_batch_size"] == 8


def test_an_unknown_method_stops_before_anything_runs(tmp_path: Path) -> None:
    finished = launch("train_baseline_swin.sh", tmp_path, METHOD="LGVit2", SAVE_ROOT=str(tmp_path / "saved"))
    assert finished.returncode == 2 and "METHOD must be one of BERxiT LGViT PABEE PCEE SDN ViT-EE" in finished.stderr
    assert not (tmp_path / "saved").exists()


def test_swin_stage1_stacks_the_backbones_layout_after_the_method() -> None:
    """configs/paper/swin/stage1.yaml moves every method's exits to Swin-B's layers; ViT-EE has its own."""
    finished = subprocess.run(
        ["bash", "-c", f"export SCRIPT_DIR={ROOT / 'scripts'} BACKBONE=Swin NUM_GPUS=0 PYTHON={sys.executable}; "
                       f"source {ROOT / 'scripts' / 'common.sh'} && stage_presets stage1 "
                       f"{ROOT / 'configs' / 'methods' / 'ViT-EE.yaml'}"],
        capture_output=True, text=True, timeout=60)
    presets = [Path(line).relative_to(ROOT).as_posix() for line in finished.stdout.split()]
    assert presets == ["configs/paper/stage1.yaml", "configs/methods/ViT-EE.yaml", "configs/paper/swin/stage1.yaml",
                       "configs/methods/swin/ViT-EE.yaml"]
