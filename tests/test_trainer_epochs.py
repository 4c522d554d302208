"""The training set's per-sample augmentation seeds follow the epoch in every process, not only in single-process
runs (where accelerate forwards the epoch to the dataset itself)."""

from __future__ import annotations

from pathlib import Path

from pipeline_helpers import TINY_CONFIG
from transformers import TrainerState

from models import DeiTHighwayConfig, DeiTHighwayForImageClassification
from utils.arguments import DataTrainingArguments, TrainingArguments
from utils.data.image_dataset import EpochCallback, ImageDataset, collate_fn
from utils.data.loading import load_datasets
from utils.data.transforms import Normalization, build_transforms
from utils.training.trainer import ExitTrainer


def test_the_trainer_tells_the_training_set_each_epoch(tmp_path: Path) -> None:
    data = load_datasets(DataTrainingArguments(dataset_name="digits", max_train_samples=8), seed=1)
    train_transform, _ = build_transforms(16, horizontal_flip=True, min_crop_scale=0.5)
    dataset = ImageDataset(data["train"], train_transform, Normalization([0.5] * 3, [0.5] * 3), seed=1)
    model = DeiTHighwayForImageClassification(DeiTHighwayConfig(**{**TINY_CONFIG, "num_labels": 10}))
    trainer = ExitTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none"),
                          train_dataset=dataset, data_collator=collate_fn)
    callbacks = [c for c in trainer.callback_handler.callbacks if isinstance(c, EpochCallback)]
    assert len(callbacks) == 1

    first = dataset[0]["pixel_values"]
    trainer.callback_handler.on_epoch_begin(trainer.args, TrainerState(epoch=2.0), trainer.control)
    assert dataset.epoch == 2
    assert not (dataset[0]["pixel_values"] == first).all()  # another epoch, another crop of the same image
    trainer.callback_handler.on_epoch_begin(trainer.args, TrainerState(epoch=0.0), trainer.control)
    assert (dataset[0]["pixel_values"] == first).all()
