"""Export a model with exits to ONNX, one graph per segment (`models.segments`), with a dynamic batch axis.

The files, in the output directory:
- `segment_0.onnx` .. `segment_{E-1}.onnx`: the blocks up to exit k and exit k's head; segment 0 also embeds the
  images. Input `pixel_values` (B, 3, H, W) for segment 0, else `hidden` (B, N, C); outputs `next_hidden` (the next
  segment's input) and `logits` (B, K);
- `final.onnx`: the remaining blocks and the final classifier; output `logits`;
- `full_model.onnx` (with `full_model=True`): the plain classifier (embedding, every block, final classifier, no
  exit head), the reference for measuring speed in the same engine;
- `manifest.json`: the segments, exit layers, criterion, thresholds, patience, labels, image size and normalisation.

The exit decision is not in these files: `utils.export.session.EarlyExitSession` nests the segments and the
criterion's decisions into one graph (`utils.export.early_exit_graph`) at its first call with each criterion, so the
criterion can change after export (thresholds and patience are graph inputs).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.early_exit_config import as_pair
from models.segments import Segment, SegmentModule

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
EXPORTERS = ("dynamo", "torchscript")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
FORMAT_VERSION = 1


def segment_file(segment: Segment) -> str:
    return "final.onnx" if segment.is_final else f"segment_{segment.exit_index}.onnx"


def export_segment(model: nn.Module, segment: Segment, example: torch.Tensor, path: Path,
                   exporter: str) -> torch.Tensor:
    """Write one segment as ONNX with a dynamic batch axis; returns its `hidden` output on `example` (the next
    segment's example input)."""
    module = SegmentModule(model, segment).eval()
    input_name = "pixel_values" if segment.embeds else "hidden"
    output_names = ["logits"] if segment.is_final else ["next_hidden", "logits"]
    with torch.no_grad():
        outputs = module(example)
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=output_names,
                              dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
        else:
            axes = {name: {0: "batch"} for name in [input_name, *output_names]}
            torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=output_names,
                              dynamic_axes=axes, dynamo=False)
    return outputs if segment.is_final else outputs[0]


def export_onnx(model: nn.Module, output_dir: str | Path, exporter: str = "dynamo", dtype: str = "float32",
                image_mean: list[float] | None = None, image_std: list[float] | None = None,
                full_model: bool = False) -> dict[str, Any]:
    """Export `model` (DeiT/ViT or Swin with exits) for `utils.export.session.EarlyExitSession`.

    Args:
        model: put in evaluation mode (a copy is cast when `dtype` differs from its own).
        output_dir: created if missing; existing files of an earlier export are overwritten.
        exporter: `dynamo` (torch.export, the default) or `torchscript` (tracing; faster to export).
        dtype: `float32` or `float16` weights and activations; the graphs take float32 images either way.
            ONNX has no bfloat16 convolution, so bfloat16 is refused (run bfloat16 with PyTorch instead).
        image_mean, image_std: the normalisation the images need (written to the manifest for the image CLI).
        full_model: also write `full_model.onnx`, the plain classifier without exit heads.
    Returns:
        The manifest.
    """
    check_export_options(exporter, dtype)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if next(model.parameters()).dtype != DTYPES[dtype]:
        model = copy.deepcopy(model).to(DTYPES[dtype])
    model = model.eval()
    config = model.config
    images = torch.randn(2, config.num_channels, *as_pair(config.image_size))
    segments = model.segments()
    example = images
    for segment in segments:
        example = export_segment(model, segment, example, output_dir / segment_file(segment), exporter)
    if full_model:
        export_segment(model, Segment(0, config.num_blocks, None), images, output_dir / "full_model.onnx", exporter)
    manifest = build_manifest(config, segments, dtype, full_model, image_mean, image_std)
    (output_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("Exported %d segments (%s exporter, %s) to %s.", len(segments), exporter, dtype, output_dir)
    return manifest


def check_export_options(exporter: str, dtype: str) -> None:
    """Refuse an unknown exporter or a dtype ONNX cannot run, before anything is written."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r}: choose one of {', '.join(EXPORTERS)}.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: ONNX export supports {', '.join(DTYPES)} (ONNX's Conv has no bfloat16; "
                         "evaluate bfloat16 with PyTorch).")


def build_manifest(config: Any, segments: list[Segment], dtype: str, full_model: bool,
                   image_mean: list[float] | None, image_std: list[float] | None) -> dict[str, Any]:
    """What `EarlyExitSession` needs besides the graphs: files, exit layers, criterion, labels and image format."""
    settings = config.exit_settings()
    return {
        "format": FORMAT_VERSION,
        "model_type": config.model_type,
        "dtype": dtype,
        "num_blocks": config.num_blocks,
        "exit_layers": config.exit_positions(),
        "segments": [segment_file(segment) for segment in segments],
        "full_model": "full_model.onnx" if full_model else None,
        "exit_strategy": settings.strategy,
        "threshold": list(settings.thresholds),
        "patience": settings.patience,
        "id2label": {str(index): label for index, label in config.id2label.items()},
        "image_size": list(as_pair(config.image_size)),
        "num_channels": config.num_channels,
        "image_mean": image_mean,
        "image_std": image_std,
    }
