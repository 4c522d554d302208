"""The launchers: the presets are the one source of hyperparameters, a variable overrides a setting only when set
(and only in the stages it concerns), the original scripts' variable names work, and stage-1 output paths name the
method. Most checks read the command a launcher would run (`DRY_RUN=1`); two launches really train."""

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
CLEAN = ("BACKBONE", "METHOD", "EPOCHS", "LR", "MODEL_NAME", "MODEL_NAME_OR_PATH", "PAPER_NAME", "ADDTIONAL_INFO",
         "ADD_INFO", "NUM_EXITS", "THRESHOLD", "PATIENCE", "OUTPUT_DIR", "TRAIN_STRATEGY", "DATANAME", "MODEL_TYPE",
         "SAVE_ROOT")


def environment(**variables: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in CLEAN}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="disabled", REPORT_TO="none", NUM_GPUS="0", DATASET="digits",
               PYTHON=sys.executable, **variables)
    return env


def launch(script: str, cwd: Path, **variables: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", f"bash {ROOT / 'scripts' / script} {SHORT}"], cwd=cwd,
                          env=environment(**variables), capture_output=True, text=True, timeout=600)


def planned_command(stage: str, backbone: str = "ViT", **variables: str) -> list[str]:
    """The run_classification.py command `lgvit_stage` would launch, printed instead of run."""
    finished = subprocess.run(
        ["bash", "-c", f"SCRIPT_DIR={ROOT / 'scripts'}; BACKBONE={backbone}; source {ROOT / 'scripts' / 'common.sh'}"
                       f" && lgvit_stage {stage}"],
        env=environment(SAVE_ROOT="/saved", DRY_RUN="1", **variables), capture_output=True, text=True, timeout=60)
    assert finished.returncode == 0, finished.stderr
    return finished.stdout.splitlines()[-1].split()


def value(command: list[str], flag: str) -> str | None:
    return command[command.index(flag) + 1] if flag in command else None


def presets(command: list[str]) -> list[str]:
    return [Path(word).relative_to(ROOT).as_posix() for word in command if word.endswith(".yaml")]


def test_presets_stack_per_stage_and_backbone() -> None:
    assert presets(planned_command("base")) == ["configs/paper/base.yaml"]
    assert presets(planned_command("base", "Swin")) == ["configs/paper/base.yaml", "configs/paper/swin/base.yaml"]
    assert presets(planned_command("stage1")) == ["configs/paper/stage1.yaml", "configs/methods/LGViT.yaml"]
    assert presets(planned_command("stage1", "Swin", METHOD="vit-ee")) == [
        "configs/paper/stage1.yaml", "configs/methods/ViT-EE.yaml", "configs/paper/swin/stage1.yaml",
        "configs/methods/swin/ViT-EE.yaml"]
    assert presets(planned_command("stage2")) == ["configs/paper/stage2.yaml"]
    assert presets(planned_command("eval")) == ["configs/paper/eval.yaml"]


def test_a_variable_overrides_a_setting_only_when_set_and_only_where_it_belongs() -> None:
    plain = planned_command("base")
    assert all(flag not in plain for flag in ("--learning_rate", "--num_train_epochs", "--threshold"))
    overridden = planned_command("base", LR="3e-4", EPOCHS="2", NUM_EARLY_EXITS="3", THRESHOLD="0.5")
    assert value(overridden, "--learning_rate") == "3e-4" and value(overridden, "--num_train_epochs") == "2"
    assert "--num_early_exits" not in overridden and "--threshold" not in overridden  # no exits in the base stage
    stage2 = planned_command("stage2", NUM_EARLY_EXITS="3", THRESHOLD="0.5", TRAIN_STRATEGY="distillation")
    assert "--num_early_exits" not in stage2  # the stage-1 checkpoint brings its layout
    assert value(stage2, "--threshold") == "0.5" and value(stage2, "--train_strategy") == "distillation"


@pytest.mark.parametrize("variables, method, extra", [
    ({"PAPER_NAME": "SDN"}, "SDN", {}),
    ({"ADDTIONAL_INFO": "pabee", "PATIENCE": "2"}, "PABEE", {"--patience": "2"}),
    ({"ADD_INFO": "PCEE", "NUM_EXITS": "5"}, "PCEE", {"--num_early_exits": "5"}),
    ({"METHOD": "BERxiT", "MODEL_NAME": "/models/vit"}, "BERxiT", {"--model_name_or_path": "/models/vit"}),
])
def test_the_original_variable_names(variables, method, extra) -> None:
    command = planned_command("stage1", **variables)
    assert presets(command)[-1] == f"configs/methods/{method}.yaml"
    strategy = {"SDN": "weighted", "PABEE": "weighted", "PCEE": "weighted", "BERxiT": "alternating"}[method]
    assert value(command, "--output_dir") == f"/saved/{method}/{strategy}"  # SDN, PABEE, PCEE: three folders
    assert all(value(command, flag) == expected for flag, expected in extra.items())


def test_the_original_data_and_model_type_names_shape_the_paths() -> None:
    variables = {"DATANAME": "tinyimnet", "MODEL_TYPE": "ViT-large"}
    finished = subprocess.run(
        ["bash", "-c", f"SCRIPT_DIR={ROOT / 'scripts'}; source {ROOT / 'scripts' / 'common.sh'} && echo $SAVE_ROOT"],
        env=environment(**variables), capture_output=True, text=True, timeout=60)
    assert finished.stdout.split()[-1] == f"{ROOT}/saved_models/ViT-large/tinyimnet"
    assert value(planned_command("base", **variables), "--run_name") == "ViT_LGViT_base_tinyimnet"


def test_stage2_and_evaluation_find_the_previous_stage() -> None:
    assert value(planned_command("stage2"), "--model_name_or_path") == "/saved/LGViT/alternating_weighted"
    assert value(planned_command("stage2"), "--output_dir") == "/saved/LGViT/stage2_distillation_LGViT"
    # A baseline has no stage 2: its stage-1 model is evaluated.
    assert value(planned_command("eval", METHOD="PABEE"), "--model_name_or_path") == "/saved/PABEE/weighted"


def test_image_folders_instead_of_a_dataset() -> None:
    command = planned_command("base", TRAIN_DIR="/data/flowers/train", VALIDATION_DIR="/data/flowers/val")
    assert value(command, "--train_dir") == "/data/flowers/train" and "--dataset_name" not in command
    assert value(command, "--output_dir") == "/saved/base" and value(command, "--run_name") == "ViT_LGViT_base_flowers"


def test_an_unknown_method_stops_before_anything_runs(tmp_path: Path) -> None:
    finished = launch("train_baseline_swin.sh", tmp_path, METHOD="LGVit2", SAVE_ROOT=str(tmp_path / "saved"))
    assert finished.returncode == 2 and "METHOD must be one of BERxiT LGViT PABEE PCEE SDN ViT-EE" in finished.stderr
    assert not (tmp_path / "saved").exists()


def test_launched_runs_take_the_variables(tmp_path: Path) -> None:
    """Two real launches: a base run with the batch size set by a variable, then a PABEE stage 1 on it, configured
    through the original scripts' variable names."""
    config = DeiTHighwayConfig.from_pretrained(write_tiny_config(tmp_path), num_labels=10, num_early_exits=0)
    DeiTHighwayForImageClassification(config).save_pretrained(tmp_path / "hub_like")
    saved = tmp_path / "saved"
    finished = launch("train_base_deit.sh", tmp_path, SAVE_ROOT=str(saved), MODEL_NAME=str(tmp_path / "hub_like"),
                      BATCH_SIZE="8")
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert json.loads((saved / "base" / "trainer_state.json").read_text())["train_batch_size"] == 8
    finished = launch("train_baseline_deit.sh", tmp_path, SAVE_ROOT=str(saved), MODEL_NAME=str(saved / "base"),
                      PAPER_NAME="PABEE", NUM_EXITS="3", POSITION_EXITS="[1,2,3]", PATIENCE="2")
    assert finished.returncode == 0, finished.stderr[-3000:]
    pabee = json.loads((saved / "PABEE" / "weighted" / "config.json").read_text())
    assert pabee["exit_strategy"] == "patience" and pabee["patience"] == 2 and pabee["position_exits"] == [1, 2, 3]
    trainer_state = json.loads((saved / "PABEE" / "weighted" / "trainer_state.json").read_text())
    assert trainer_state["train_batch_size"] == 64  # configs/paper/stage1.yaml, since BATCH_SIZE was not set
