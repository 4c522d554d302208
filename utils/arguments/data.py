"""Which data a run trains and evaluates on."""

from __future__ import annotations

from dataclasses import dataclass, field


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
