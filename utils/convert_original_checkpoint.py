"""Convert a checkpoint of the original LGViT code into this project's model (`models.original_checkpoint`).

`from_pretrained` of the model classes already converts such a directory on load; this command writes the converted
model as a `save_pretrained` directory, for tools that load checkpoints without this project's classes' hook:

    python -m utils.convert_original_checkpoint ORIGINAL_DIR OUTPUT_DIR

ORIGINAL_DIR holds config.json and the weights (model.safetensors or pytorch_model.bin) under the original names.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch

from models import DeiTHighwayForImageClassification, SwinHighwayForImageClassification
from models.original_checkpoint import is_swin_config, read_original_checkpoint

logger = logging.getLogger(__name__)


def convert(original_config: dict[str, Any], state_dict: dict[str, torch.Tensor]
            ) -> DeiTHighwayForImageClassification | SwinHighwayForImageClassification:
    """Build this project's model from an original checkpoint (its config.json dict and state dict)."""
    model_class = SwinHighwayForImageClassification if is_swin_config(original_config) else \
        DeiTHighwayForImageClassification
    return model_class.from_original(original_config, state_dict)


def build_parser() -> argparse.ArgumentParser:
    """The command line of this module."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("original_dir", type=Path, help="directory of a checkpoint saved by the original code")
    parser.add_argument("output_dir", type=Path, help="where to write the converted save_pretrained directory")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    model = convert(*read_original_checkpoint(args.original_dir))
    model.save_pretrained(args.output_dir)
    logger.info("Wrote %s (%d exits at layers %s).", args.output_dir, model.config.num_exits,
                model.config.exit_positions())


if __name__ == "__main__":
    main()
