"""Export a saved model with exits to ONNX graphs that `utils.export.EarlyExitSession` runs with early exit.

    python -m utils.export MODEL_DIR OUT_DIR [--exporter dynamo|torchscript] [--dtype float32|float16]
        [--exit_strategy confidence --threshold 0.8 --patience 2] [--full_model]

MODEL_DIR is any directory `from_pretrained` accepts (this project's, or the original code's, converted on load).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from transformers import AutoModelForImageClassification

import models  # noqa: F401  (registers the classes with the Auto classes)
from utils.data.transforms import image_normalization

from .onnx_export import DTYPES, EXPORTERS, export_onnx

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The command line of this module."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="a saved model directory")
    parser.add_argument("output_dir", type=Path, help="where to write the ONNX graphs and manifest.json")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--exit_strategy", help="criterion to start with (default: the model's)")
    parser.add_argument("--threshold", type=json.loads, help="a number, or a JSON list with one per exit")
    parser.add_argument("--patience", type=int)
    parser.add_argument("--full_model", action="store_true", help="also export the plain classifier (reference)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    model = AutoModelForImageClassification.from_pretrained(args.model_dir)
    for name in ("exit_strategy", "threshold", "patience"):
        if getattr(args, name) is not None:
            setattr(model.config, name, getattr(args, name))
    model.config.exit_settings()  # a bad setting stops here, before any export
    mean, std = image_normalization(args.model_dir)
    export_onnx(model, args.output_dir, exporter=args.exporter, dtype=args.dtype, image_mean=mean, image_std=std,
                full_model=args.full_model)


if __name__ == "__main__":
    main()
