"""Shared set-up of the pipeline tests: a tiny DeiT config and the arguments of each stage on the digits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from models import DeiTHighwayForImageClassification
from utils.arguments import DataTrainingArguments
from utils.data.image_dataset import ImageDataset, collate_fn
from utils.data.loading import load_datasets
from utils.data.transforms import Normalization, build_transforms, image_normalization

# 4 layers of hidden size 32 on 16x16 inputs with 4x4 patches (a 4x4 grid, enough for the r2/r3 LGViT heads).
TINY_CONFIG = {
    "model_type": "deit_highway",
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "image_size": 16,
    "patch_size": 4,
    "num_early_exits": 0,
}
NUM_LAYERS = TINY_CONFIG["num_hidden_layers"]


def write_tiny_config(directory: Path, **changes: Any) -> str:
    """The tiny DeiT config (with `changes`) as a file in `directory`; returns its path."""
    path = directory / "tiny_deit.json"
    path.write_text(json.dumps({**TINY_CONFIG, **changes}))
    return str(path)


def run_args(output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Arguments of a short run on a slice of the digits (train and evaluate), updated by `overrides`."""
    args = {
        "dataset_name": "digits",
        "output_dir": str(output_dir),
        "do_train": True,
        "do_eval": True,
        "max_train_samples": 96,
        "max_eval_samples": 45,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 8,
        "learning_rate": 1e-3,
        "max_steps": 3,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "seed": 777,
    }
    args.update(overrides)
    return args


def stage1_args(output_dir: Path, base_dir: Path, **overrides: Any) -> dict[str, Any]:
    """Stage 1 from a base checkpoint: three LGViT exits on layers 1-3, alternating weighted loss."""
    return run_args(
        output_dir,
        model_name_or_path=str(base_dir),
        highway_type="LGViT",
        num_early_exits=3,
        train_strategy="alternating_weighted",
        exit_strategy="confidence",
        threshold="0.5",
        **overrides,
    )


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def digits_split(model_dir: Path, split: str = "validation", **data_fields: Any
                 ) -> tuple[DeiTHighwayForImageClassification, ImageDataset]:
    """The saved model and one of the run's digit splits (`data_fields` as the run had them) with its evaluation
    transforms and normalisation."""
    model = DeiTHighwayForImageClassification.from_pretrained(model_dir).eval()
    data = load_datasets(DataTrainingArguments(dataset_name="digits", **data_fields), seed=777)
    _, eval_transform = build_transforms(model.config.image_size)
    return model, ImageDataset(data[split], eval_transform, Normalization(*image_normalization(str(model_dir))))


def full_depth_pass(model_dir: Path, eval_samples: int) -> tuple[Any, torch.Tensor, DeiTHighwayForImageClassification]:
    """One pass with every exit over the run's first `eval_samples` evaluation digits: the outputs, the labels and
    the model."""
    model, dataset = digits_split(model_dir, max_eval_samples=eval_samples)
    batch = collate_fn([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        outputs = model(dataset.normalization(batch["pixel_values"]), early_exit=False)
    return outputs, batch["labels"], model


def median_first_exit_confidence(model_dir: Path, eval_samples: int) -> float:
    """A confidence threshold at which about half the eval samples leave at the first exit, the rest later: halfway
    between the two middle confidences, so that no image sits on the threshold (its last bits may differ with the
    batch it is computed in)."""
    first_exit = full_depth_pass(model_dir, eval_samples)[0].exit_logits[0]
    confidences = first_exit.softmax(-1).max(-1).values.sort().values
    middle = len(confidences) // 2
    return float((confidences[middle - 1] + confidences[middle]) / 2)
