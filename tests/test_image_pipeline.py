"""The fast image pipeline (torchvision decoders, v2 transforms on uint8 tensors, normalisation on the device)
against the original's PIL pipeline: the same crops and flips for the same seed, pixel values within one grey level
of 255; every image kind decodes as PIL decodes it; persistent loader workers follow the epoch."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage

from utils.data.digits import load_digits_dataset
from utils.data.image_dataset import ImageDataset, collate_fn, decode_rgb
from utils.data.transforms import Normalization, build_transforms, reference_transforms

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
# One grey level in 255: both pipelines resize in 8 bits, and round at slightly different points.
LEVEL = 1.0 / 255


def natural_image(height: int, width: int, seed: int, mode: str = "RGB") -> PILImage.Image:
    """Smooth gradients with sensor-like noise: compresses like a photograph (random pixels would not)."""
    rows, columns = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).normal(0, 12, (height, width, 3))
    channels = [np.sin(columns / 17 + c) * 60 + np.cos(rows / 23 * (c + 1)) * 60 + 128 for c in range(3)]
    pixels = np.clip(np.stack(channels, -1) + noise, 0, 255).astype(np.uint8)
    return PILImage.fromarray(pixels).convert(mode)


def encoded(image: PILImage.Image, kind: str, **options) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return {"bytes": buffer.getvalue(), "path": None}


def digit() -> dict:
    return load_digits_dataset()["train"].cast_column("image", Image(decode=False))[0]["image"]


CASES = {  # image, model input size, smallest crop, flips
    "imagenet_like_jpeg": (lambda: encoded(natural_image(375, 500, 0), "JPEG", quality=90), 224, 0.08, True),
    "cifar_like_png": (lambda: encoded(natural_image(32, 32, 1), "PNG"), 224, 0.08, True),
    "digit_8x8": (digit, 16, 0.8, False),
}


def pixel_difference(value: dict, size: int, min_crop_scale: float, flip: bool, seed: int | None) -> float:
    """Largest difference, in [0, 1] pixel units, between the fast and the reference pipeline (train transform with
    `seed`, eval transform with None)."""
    fast_train, fast_eval = build_transforms(size, flip, min_crop_scale)
    reference_train, reference_eval = reference_transforms(size, MEAN, STD, flip, min_crop_scale)
    image, pil = decode_rgb(value), Image().decode_example(value).convert("RGB")
    if seed is None:
        fast, reference = Normalization(MEAN, STD)(fast_eval(image)), reference_eval(pil)
    else:
        torch.manual_seed(seed)
        fast = Normalization(MEAN, STD)(fast_train(image))
        torch.manual_seed(seed)
        reference = reference_train(pil)
    return float(((fast - reference) * torch.tensor(STD).view(3, 1, 1)).abs().max())


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_crops_and_flips_as_the_reference_within_one_grey_level(case: str) -> None:
    make, size, min_crop_scale, flip = CASES[case]
    value = make()
    worst = max(pixel_difference(value, size, min_crop_scale, flip, seed) for seed in range(12))
    assert worst <= LEVEL + 1e-6, worst
    assert pixel_difference(value, size, min_crop_scale, flip, None) <= LEVEL + 1e-6


def test_a_wrong_crop_would_be_seen() -> None:
    """The comparison has power: another seed (another crop) differs by far more than a grey level."""
    make, size, min_crop_scale, flip = CASES["imagenet_like_jpeg"]
    value = make()
    fast_train, _ = build_transforms(size, flip, min_crop_scale)
    reference_train, _ = reference_transforms(size, MEAN, STD, flip, min_crop_scale)
    torch.manual_seed(0)
    fast = Normalization(MEAN, STD)(fast_train(decode_rgb(value)))
    torch.manual_seed(1)
    reference = reference_train(Image().decode_example(value).convert("RGB"))
    assert float(((fast - reference) * torch.tensor(STD).view(3, 1, 1)).abs().max()) > 50 * LEVEL


@pytest.mark.parametrize("kind, options", [
    ("grey_png", {"mode": "L", "format": "PNG"}), ("rgba_png", {"mode": "RGBA", "format": "PNG"}),
    ("palette_png", {"mode": "P", "format": "PNG"}), ("cmyk_jpeg", {"mode": "CMYK", "format": "JPEG"}),
    ("bmp", {"mode": "RGB", "format": "BMP"}), ("tiff", {"mode": "RGB", "format": "TIFF"}),
    ("webp", {"mode": "RGB", "format": "WEBP"}), ("gif", {"mode": "P", "format": "GIF"}),
])
def test_every_image_kind_decodes_to_the_rgb_pixels_pil_gives(kind: str, options: dict) -> None:
    value = encoded(natural_image(20, 28, 2, options["mode"]), options["format"])
    expected = torch.from_numpy(np.array(Image().decode_example(value).convert("RGB"))).permute(2, 0, 1)
    decoded = decode_rgb(value)
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 20, 28)
    # JPEG decoders may round the colour conversion differently by a level or two.
    assert (decoded.int() - expected.int()).abs().max() <= (2 if "jpeg" in kind else 0)


def test_a_16_bit_png_and_an_exif_rotated_jpeg_decode_as_datasets_decodes_them() -> None:
    deep = PILImage.fromarray((np.arange(12 * 10).reshape(12, 10) * 500).astype(np.uint16))
    value = encoded(deep, "PNG")
    assert decode_rgb(value).dtype == torch.uint8 and decode_rgb(value).shape == (3, 12, 10)
    rotated = natural_image(20, 30, 3)
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    value = encoded(rotated, "JPEG", quality=95, exif=exif.tobytes())
    expected = Image().decode_example(value).convert("RGB")
    assert expected.size == (20, 30) and decode_rgb(value).shape == (3, 30, 20)


def test_normalization_runs_on_the_batch_and_passes_model_ready_floats() -> None:
    batch = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    normalised = Normalization(MEAN, STD)(batch)
    expected = (batch.float() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
    torch.testing.assert_close(normalised, expected)
    assert Normalization(MEAN, STD)(normalised) is normalised
    with pytest.raises(TypeError, match="uint8"):
        Normalization(MEAN, STD)(batch.int())


def test_persistent_workers_follow_the_epoch() -> None:
    """Two persistent workers keep one copy of the dataset for every epoch; each epoch's crops are still that
    epoch's (the epoch lives in shared memory)."""
    features = Features({"image": Image(decode=False), "labels": ClassLabel(names=["a"])})
    data = Dataset.from_dict({"image": [encoded(natural_image(24, 24, seed), "PNG") for seed in range(8)],
                              "labels": [0] * 8}, features=features)
    train, _ = build_transforms(16, True, 0.3)
    dataset = ImageDataset(data, train, Normalization(MEAN, STD), seed=5)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True,
                                         collate_fn=collate_fn)
    epochs = []
    for epoch in range(3):
        dataset.set_epoch(epoch)
        epochs.append(torch.cat([batch["pixel_values"] for batch in loader]))
    for epoch, seen in enumerate(epochs):
        dataset.set_epoch(epoch)
        expected = torch.stack([dataset[index]["pixel_values"] for index in range(8)])
        assert torch.equal(seen, expected), epoch
    assert not torch.equal(epochs[0], epochs[1])
