"""Command-line arguments of `run_classification.py` and their parsing (CLI, a JSON/YAML file, or a dict)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import HfArgumentParser
from transformers import TrainingArguments as HfTrainingArguments

from models.criteria import get_criterion
from utils.training.original_arguments import translate_arguments, translate_values

# Model fields that override the loaded config when given (None keeps the checkpoint's value).
MODEL_CONFIG_FIELDS = (
    "backbone", "highway_type", "num_early_exits", "position_exits", "exit_strategy", "threshold", "patience",
    "train_strategy", "loss_coefficient", "homo_coefficient", "hete_coefficient", "freeze_backbone",
)


def parse_literal(name: str, value: Any) -> Any:
    """Turn the command line's text form of a number or list ("0.8", "[4,5,6]", "4,5,6") into a value.

    Values that are already numbers or lists (from a dict, JSON or YAML) pass through unchanged.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in ("", "none", "null"):
        return None
    if "," in text and not text.startswith("["):
        text = f"[{text}]"
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"`{name}`={value!r} is not a number or a list such as [4,5,6].") from error


@dataclass
class ModelArguments:
    """Which model to start from and the early-exit settings; every early-exit field left at None keeps the
    value of the loaded config (or the model defaults when training from a bare config)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Checkpoint directory or hub id to start from (None: train from scratch)."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config JSON file or directory; with no model_name_or_path, from scratch."}
    )
    model_type: str | None = field(
        default=None,
        metadata={"help": "Without a checkpoint or config: vit, deit or swin builds the paper's ViT-B/16, DeiT-B or "
                          "Swin-B (configs/paper/models) from scratch; with one, it must be of this type."},
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Take the image normalisation from this processor (default: the model's)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where hub models and datasets are cached."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a hub model."})
    token: str | None = field(default=None, metadata={"help": "HF token for gated hub models and datasets."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise checkpoint weights whose shape differs (new label count)."}
    )
    backbone: str | None = field(default=None, metadata={"help": "ViT (cls token) or DeiT (cls + distillation)."})
    highway_type: str | None = field(
        default=None,
        metadata={"help": "Exit head: linear, conv_normal, conv1_1, conv2_1, attention_rN, self_attention, vit, "
                          "LGViT."},
    )
    num_early_exits: str | None = field(
        default=None, metadata={"help": "Number of exits, 0 = plain classifier (Swin: per stage, '[0,1,6,1]')."}
    )
    position_exits: str | None = field(
        default=None, metadata={"help": "1-based exit layers, e.g. '[4,5,6,7,8,9,10,11]' (quote it in shells)."}
    )
    exit_strategy: str | None = field(
        default=None, metadata={"help": "entropy, confidence, patience or patient_and_confident."}
    )
    threshold: str | None = field(default=None, metadata={"help": "One threshold, or a list with one per exit."})
    patience: int | None = field(default=None, metadata={"help": "Exits in a row for patience strategies."})
    train_strategy: str | None = field(
        default=None,
        metadata={"help": "normal, weighted, alternating, alternating_weighted, distillation, distillation_LGViT."},
    )
    loss_coefficient: float | None = field(default=None, metadata={"help": "Weight of prediction distillation."})
    homo_coefficient: float | None = field(default=None, metadata={"help": "Weight of homogeneous distillation."})
    hete_coefficient: float | None = field(default=None, metadata={"help": "Weight of heterogeneous distillation."})
    freeze_backbone: bool | None = field(
        default=None, metadata={"help": "Stage 2: train only the exit heads (implied by distillation_LGViT)."}
    )

    def __post_init__(self) -> None:
        if self.model_name_or_path is None and self.config_name is None and self.model_type is None:
            raise ValueError("Give --model_name_or_path (a checkpoint), --config_name (a config file, from scratch) or "
                             "--model_type (vit, deit or swin: the paper's architecture, from scratch).")
        self.num_early_exits = parse_literal("num_early_exits", self.num_early_exits)
        self.position_exits = parse_literal("position_exits", self.position_exits)
        self.threshold = parse_literal("threshold", self.threshold)

    def config_overrides(self) -> dict[str, Any]:
        """The early-exit fields that were set, ready to override the loaded config."""
        return {name: getattr(self, name) for name in MODEL_CONFIG_FIELDS if getattr(self, name) is not None}


@dataclass
class DataTrainingArguments:
    """Which data to train and evaluate on."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset (cifar100, Food101, Maysee/tiny-imagenet, imagenet-1k) or 'digits' (offline)."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Configuration of the hub dataset."})
    train_dir: str | None = field(default=None, metadata={"help": "Image folder: one sub-folder per class."})
    validation_dir: str | None = field(default=None, metadata={"help": "Image folder for evaluation."})
    train_val_split: float = field(
        default=0.15, metadata={"help": "Fraction of train held out when the dataset has no evaluation split."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep this many training samples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep this many evaluation samples."})
    horizontal_flip: bool | None = field(
        default=None, metadata={"help": "Random horizontal flips in training (default: on, off for digits)."}
    )
    min_crop_scale: float | None = field(
        default=None,
        metadata={"help": "Smallest area fraction of RandomResizedCrop (default: 0.08 as the original; digits 0.8)."},
    )
    calibration_split: float = field(
        default=0.0,
        metadata={"help": "Fraction of train held out of training (stratified, fixed seed) for threshold "
                          "calibration; give every stage the same value so the calibration samples stay unseen."},
    )
    image_column_name: str | None = field(default=None, metadata={"help": "Image column (detected if not given)."})
    label_column_name: str | None = field(default=None, metadata={"help": "Label column (detected if not given)."})

    def __post_init__(self) -> None:
        if self.dataset_name is None and self.train_dir is None and self.validation_dir is None:
            raise ValueError("Give --dataset_name (e.g. digits, cifar100) or --train_dir/--validation_dir folders.")
        if not 0.0 < self.train_val_split < 1.0:
            raise ValueError(f"--train_val_split={self.train_val_split} must be between 0 and 1.")
        if self.min_crop_scale is not None and not 0.0 < self.min_crop_scale <= 1.0:
            raise ValueError(f"--min_crop_scale={self.min_crop_scale} must be in (0, 1].")
        if not 0.0 <= self.calibration_split < 1.0:
            raise ValueError(f"--calibration_split={self.calibration_split} must be in [0, 1), e.g. 0.1.")


@dataclass
class AnalysisArguments:
    """The accuracy-speed analysis of an evaluation (`utils.analysis`): threshold calibration before it, and a
    one-pass sweep of every exit criterion, the measured speed-up and the figures after it."""

    target_speedup: float | None = field(
        default=None,
        metadata={"help": "Calibrate thresholds to the most accurate setting with at least this speed-up "
                          "(see --calibration_speedup) on the --calibration_split samples; saved in the config."},
    )
    max_accuracy_drop: float | None = field(
        default=None,
        metadata={"help": "Calibrate thresholds to the fastest setting losing at most this many accuracy points "
                          "against the final classifier on the --calibration_split samples; saved in the config."},
    )
    calibration_strategy: str | None = field(
        default=None, metadata={"help": "Exit criterion to calibrate (default: the model's exit_strategy)."}
    )
    calibration_speedup: str = field(
        default="flops", metadata={"help": "Speed-up --target_speedup refers to: flops (exit heads counted) or layer."}
    )
    sweep: bool = field(
        default=False,
        metadata={"help": "After evaluating, run the eval set once with every exit and write every criterion's "
                          "accuracy/speed-up curve (sweep.json, analysis_results.json) and the figures."},
    )
    measure_speedup: bool = field(
        default=False,
        metadata={"help": "Also time early exit against the full model on eval images (wall-clock speed-up)."},
    )
    speed_samples: int = field(default=1024, metadata={"help": "Eval images timed by --measure_speedup (at most)."})
    speed_repeats: int = field(
        default=11, metadata={"help": "Timing rounds of --measure_speedup; the report gives their median and range."}
    )

    def __post_init__(self) -> None:
        if self.target_speedup is not None and self.max_accuracy_drop is not None:
            raise ValueError("Give one of --target_speedup and --max_accuracy_drop, not both.")
        if self.target_speedup is not None and self.target_speedup < 1.0:
            raise ValueError(f"--target_speedup={self.target_speedup} must be >= 1 (1 = the full model's cost).")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0.0:
            raise ValueError(f"--max_accuracy_drop={self.max_accuracy_drop} must be >= 0 (accuracy points).")
        if self.calibration_strategy is not None:
            get_criterion(self.calibration_strategy, field="calibration_strategy")
        if self.calibration_speedup not in ("flops", "layer"):
            raise ValueError(f"--calibration_speedup={self.calibration_speedup!r} must be flops or layer.")
        if self.speed_samples < 1 or self.speed_repeats < 1:
            raise ValueError("--speed_samples and --speed_repeats must be >= 1.")

    @property
    def calibrates(self) -> bool:
        return self.target_speedup is not None or self.max_accuracy_drop is not None

    @property
    def analyses(self) -> bool:
        """Whether the evaluation is followed by the analysis pass (sweep, report, figures)."""
        return self.sweep or self.measure_speedup or self.calibrates


@dataclass
class TrainingArguments(HfTrainingArguments):
    """transformers' TrainingArguments with these changes: `overwrite_output_dir`, which transformers 5 dropped, is
    back (the original rule: a non-empty output dir is an error unless overwriting or resuming);
    `remove_unused_columns` defaults to False (the original scripts always passed that); without accelerators,
    memory is not pinned and a multi-process launch (torchrun) turns on `use_cpu`, which CPU distributed runs
    need."""

    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train into a non-empty output dir instead of resuming from its checkpoint."}
    )
    # The collator needs the `image` column, which the model's forward does not take.
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False (images are decoded late)."})

    def __post_init__(self) -> None:
        if self.remove_unused_columns:
            raise ValueError("--remove_unused_columns must be False: the transforms read the `image` column.")
        if self.dataloader_persistent_workers:
            # Workers would keep the epoch they started with, and so repeat the first epoch's augmentations.
            raise ValueError("--dataloader_persistent_workers is not supported (per-epoch augmentation seeds).")
        if not torch.accelerator.is_available():
            self.dataloader_pin_memory = False  # nothing to pin for; torch warns at every epoch otherwise
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                # Without use_cpu, accelerate starts the process group but not distributed mode on a CPU-only
                # machine: each rank evaluates its shard and nothing is gathered.
                self.use_cpu = True
        super().__post_init__()


ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, AnalysisArguments, TrainingArguments)
ARGUMENT_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def read_argument_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML file of arguments into a dict."""
    text = Path(path).read_text(encoding="utf-8")
    values = yaml.safe_load(text) if str(path).endswith((".yaml", ".yml")) else json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values.")
    return values


def parse_arguments(
    args: list[str] | dict[str, Any] | None = None,
) -> tuple[ModelArguments, DataTrainingArguments, AnalysisArguments, TrainingArguments]:
    """Parse the arguments from a dict, or from a command line that may start with JSON/YAML files.

    Later files override earlier ones and command-line flags override the files:
    `run_classification.py configs/digits/stage1.yaml configs/methods/PABEE.yaml --seed 1`. The original scripts'
    renamed and retired flags are accepted (`utils.training.original_arguments`).
    """
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    if isinstance(args, dict):
        return parser.parse_dict(translate_values(args))
    argv = translate_arguments(list(sys.argv[1:] if args is None else args))
    defaults: dict[str, Any] = {}
    known = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}
    while argv and argv[0].endswith(ARGUMENT_FILE_SUFFIXES):
        path = argv.pop(0)
        values = translate_values(read_argument_file(path))
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown arguments in {path}: {unknown}")
        defaults.update(values)
    # argparse does not apply `type` to defaults, so file values keep their JSON/YAML types.
    parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
