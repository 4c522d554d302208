"""Data loading: the digits, column detection, the evaluation-split rule, image folders and bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from pipeline_helpers import TINY_CONFIG, read_json, run_args, write_tiny_config
from torchvision.transforms import v2
from transformers import ViTImageProcessor

import run_classification
from models import DeiTHighwayConfig, DeiTHighwayForImageClassification
from utils.arguments import DataTrainingArguments
from utils.data import image_dataset
from utils.data.digits import load_digits_dataset
from utils.data.image_dataset import ImageDataset, collate_fn
from utils.data.loading import load_datasets, split_train_eval, standardize_columns
from utils.data.transforms import Normalization, build_transforms

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def record_transforms(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[v2.Compose, Normalization]]:
    """Capture the transforms run_classification really hands to its datasets (`split_image_datasets`): 'train' (the
    seeded one) and 'eval'."""
    seen: dict[str, tuple[v2.Compose, Normalization]] = {}

    class RecordingDataset(ImageDataset):
        def __init__(self, data, transform, normalization, seed=None):
            seen["train" if seed is not None else "eval"] = (transform, normalization)
            super().__init__(data, transform, normalization, seed=seed)

    monkeypatch.setattr(image_dataset, "ImageDataset", RecordingDataset)
    return seen


def steps_of(recorded: tuple[v2.Compose, Normalization], kind: type) -> list:
    return [step for step in recorded[0].transforms if isinstance(step, kind)]


def assert_normalised_with(recorded: tuple[v2.Compose, Normalization], mean: list[float], std: list[float]) -> None:
    normalization = recorded[1]
    assert normalization.mean == pytest.approx(mean) and normalization.std == pytest.approx(std)


def digits_args(**kwargs) -> DataTrainingArguments:
    return DataTrainingArguments(dataset_name="digits", **kwargs)


def test_digits_are_real_8x8_rgb_images() -> None:
    train = load_digits_dataset()["train"]
    assert len(train) == 1797 and train.features["labels"].names == [str(d) for d in range(10)]
    image = train[0]["image"]
    assert image.mode == "RGB" and image.size == (8, 8)
    assert np.asarray(image).max() > 200  # ink reaches full intensity


def test_digits_split_is_fixed_and_stratified() -> None:
    first, second = load_datasets(digits_args(), seed=1), load_datasets(digits_args(), seed=2)
    assert (len(first["train"]), len(first["validation"])) == (1527, 270)
    assert first["validation"]["labels"] == second["validation"]["labels"]
    counts = np.bincount(first["validation"]["labels"], minlength=10)
    assert counts.min() >= 25 and counts.max() <= 29  # 15% of each class (174-183 samples per class)


def test_sample_caps_use_a_seeded_shuffle() -> None:
    capped = load_datasets(digits_args(max_train_samples=50, max_eval_samples=20), seed=3)
    again = load_datasets(digits_args(max_train_samples=50, max_eval_samples=20), seed=3)
    assert (len(capped["train"]), len(capped["validation"])) == (50, 20)
    assert capped["train"]["labels"] == again["train"]["labels"]


def in_memory(columns: dict, features: Features, splits: tuple[str, ...]) -> DatasetDict:
    return DatasetDict({split: Dataset.from_dict(columns, features=features) for split in splits})


def test_cifar_style_columns_are_renamed() -> None:
    images = [PILImage.new("RGB", (4, 4))] * 4
    features = Features({"img": Image(), "fine_label": ClassLabel(names=["a", "b"]),
                         "coarse_label": ClassLabel(names=["x"])})
    dataset = in_memory({"img": images, "fine_label": [0, 1, 0, 1], "coarse_label": [0] * 4}, features,
                        ("train", "test"))
    standard = standardize_columns(dataset, DataTrainingArguments(dataset_name="cifar100"))
    assert standard["train"].column_names == ["image", "labels"]
    assert standard["train"].features["labels"].names == ["a", "b"]
    assert standard["train"][0]["image"]["bytes"]  # left undecoded for ImageDataset


def test_plain_labels_get_one_class_list_for_all_splits() -> None:
    images = [PILImage.new("RGB", (4, 4))] * 3
    features = Features({"image": Image(), "label": Value("int64")})
    dataset = DatasetDict({
        "train": Dataset.from_dict({"image": images, "label": [3, 5, 7]}, features=features),
        "test": Dataset.from_dict({"image": images[:2], "label": [7, 5]}, features=features),
    })
    standard = standardize_columns(dataset, DataTrainingArguments(dataset_name="x"))
    assert standard["train"].features["labels"].names == ["3", "5", "7"]
    assert standard["test"]["labels"] == [2, 1]


@pytest.mark.parametrize("splits, used", [
    (("train", "validation", "test"), "validation"),
    (("train", "valid", "test"), "valid"),
    (("train", "test"), "test"),
])
def test_evaluation_split_rule(splits: tuple[str, ...], used: str) -> None:
    features = Features({"image": Image(), "labels": ClassLabel(names=["a", "b"])})
    # Splits of different sizes tell which one was picked.
    dataset = DatasetDict({
        name: Dataset.from_dict({"image": [PILImage.new("RGB", (2, 2))] * (i + 2), "labels": [0] * (i + 2)},
                                features=features)
        for i, name in enumerate(splits)
    })
    chosen = split_train_eval(dataset, 0.15)
    assert sorted(chosen) == ["train", "validation"]
    assert len(chosen["validation"]) == len(dataset[used])


def save_image(path: Path, image: PILImage.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def odd_image_folder(root: Path) -> Path:
    """Two classes of images in every mode and shape a folder may hold."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (31, 13, 4), dtype=np.uint8)
    for split in ("train", "val"):
        save_image(root / split / "cat" / "grey.png", PILImage.fromarray(pixels[..., 0], mode="L"))
        save_image(root / split / "cat" / "rgba.png", PILImage.fromarray(pixels, mode="RGBA"))
        save_image(root / split / "cat" / "tiny.png", PILImage.new("RGB", (1, 1), (200, 0, 0)))
        save_image(root / split / "dog" / "palette.gif", PILImage.fromarray(pixels[..., 0], mode="L").convert("P"))
        save_image(root / split / "dog" / "cmyk.jpg", PILImage.new("CMYK", (300, 17), (0, 50, 100, 0)))
        save_image(root / split / "dog" / "wide.jpg", PILImage.new("RGB", (64, 9), (0, 0, 255)))
    return root


def test_image_folders_of_any_mode_and_size(tmp_path: Path) -> None:
    root = odd_image_folder(tmp_path / "images")
    data = load_datasets(DataTrainingArguments(train_dir=str(root / "train"), validation_dir=str(root / "val")),
                         seed=0, cache_dir=str(tmp_path / "cache"))
    assert data["train"].features["labels"].names == ["cat", "dog"]
    train_transform, eval_transform = build_transforms(16)
    for split, transform in (("train", train_transform), ("validation", eval_transform)):
        batch = collate_fn(list(ImageDataset(data[split], transform, Normalization([0.5] * 3, [0.5] * 3), seed=0)))
        assert batch["pixel_values"].shape == (6, 3, 16, 16) and batch["pixel_values"].dtype == torch.uint8


def test_image_folders_train_with_the_original_augmentation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline on image folders: crops of 8-100% of the area and flips, normalised with ImageNet's mean/std
    (the model has no image processor of its own)."""
    root = odd_image_folder(tmp_path / "images")
    seen = record_transforms(monkeypatch)
    metrics = run_classification.main(run_args(
        tmp_path / "out", config_name=write_tiny_config(tmp_path), dataset_name=None, train_dir=str(root / "train"),
        validation_dir=str(root / "val"), max_train_samples=None, max_eval_samples=None, max_steps=1,
        cache_dir=str(tmp_path / "cache"),
    ))
    assert metrics["eval_samples"] == 6
    (crop,) = steps_of(seen["train"], v2.RandomResizedCrop)
    assert crop.scale == (0.08, 1.0) and tuple(crop.size) == (16, 16)
    assert len(steps_of(seen["train"], v2.RandomHorizontalFlip)) == 1
    assert steps_of(seen["eval"], v2.RandomResizedCrop) == steps_of(seen["eval"], v2.RandomHorizontalFlip) == []
    for transform in seen.values():
        assert_normalised_with(transform, IMAGENET_MEAN, IMAGENET_STD)


def test_a_checkpoints_own_normalisation_and_the_digits_augmentation(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint saved with its image processor: train and eval normalise with its mean/std, and the output
    keeps them. The 8x8 digits get crops of 80-100% and no flips."""
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]
    checkpoint = tmp_path / "checkpoint"
    fields = {key: value for key, value in TINY_CONFIG.items() if key != "model_type"}
    DeiTHighwayForImageClassification(DeiTHighwayConfig(**fields, num_labels=10)).save_pretrained(checkpoint)
    ViTImageProcessor(image_mean=mean, image_std=std).save_pretrained(checkpoint)
    seen = record_transforms(monkeypatch)
    output = tmp_path / "out"
    run_classification.main(run_args(output, model_name_or_path=str(checkpoint), max_steps=1, max_train_samples=16,
                                     max_eval_samples=8))
    assert set(seen) == {"train", "eval"}
    for transform in seen.values():
        assert_normalised_with(transform, mean, std)
    saved = read_json(output / "preprocessor_config.json")
    assert saved["image_mean"] == pytest.approx(mean) and saved["image_std"] == pytest.approx(std)
    (crop,) = steps_of(seen["train"], v2.RandomResizedCrop)
    assert crop.scale == (0.8, 1.0) and tuple(crop.size) == (16, 16)
    assert steps_of(seen["train"], v2.RandomHorizontalFlip) == []


def test_unreadable_files_are_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = odd_image_folder(tmp_path / "images")
    (root / "train" / "cat" / "notes.jpg").write_text("not an image")
    good = root / "train" / "dog" / "wide.jpg"
    (root / "train" / "dog" / "cut.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        metrics = run_classification.main(run_args(
            tmp_path / "out", config_name=write_tiny_config(tmp_path), dataset_name=None,
            train_dir=str(root / "train"), validation_dir=str(root / "val"), max_train_samples=None,
            max_eval_samples=None, max_steps=2, cache_dir=str(tmp_path / "cache"),
        ))
    assert "notes.jpg" in caplog.text and "cut.jpg" in caplog.text
    assert metrics["eval_samples"] == 6


def test_an_image_that_fails_late_is_left_out_of_its_batch(caplog: pytest.LogCaptureFixture) -> None:
    good = PILImage.new("RGB", (5, 5))
    features = Features({"image": Image(decode=False), "labels": ClassLabel(names=["a"])})
    data = Dataset.from_dict(
        {"image": [{"bytes": b"garbage", "path": "broken.png"}, good], "labels": [0, 0]}, features=features
    )
    _, transform = build_transforms(8)
    with caplog.at_level(logging.WARNING):
        batch = collate_fn([ImageDataset(data, transform, Normalization([0.5] * 3, [0.5] * 3))[i] for i in range(2)])
    assert batch["pixel_values"].shape == (1, 3, 8, 8) and "broken.png" in caplog.text


def test_missing_folder_names_the_flag(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--train_dir .* is not a directory"):
        load_datasets(DataTrainingArguments(train_dir=str(tmp_path / "nowhere")), seed=0)


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="No images found"):
        load_datasets(DataTrainingArguments(train_dir=str(tmp_path / "empty")), seed=0,
                      cache_dir=str(tmp_path / "cache"))


def test_unknown_dataset_points_at_the_offline_options() -> None:
    with pytest.raises(ValueError, match="--dataset_name digits"):
        load_datasets(DataTrainingArguments(dataset_name="no-such-dataset-anywhere"), seed=0)


def test_some_data_must_be_named() -> None:
    with pytest.raises(ValueError, match="--dataset_name"):
        DataTrainingArguments()
