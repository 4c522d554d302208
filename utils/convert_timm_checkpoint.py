"""Write a timm ViT, DeiT or Swin as this project's model (`from_timm`), as a `save_pretrained` directory that every
stage accepts as --model_name_or_path (stage 0 fine-tuning, or stage 1 with the exit layout given there):

    python -m utils.convert_timm_checkpoint vit_base_patch16_224.augreg_in21k_ft_in1k OUTPUT_DIR
    python -m utils.convert_timm_checkpoint deit_base_distilled_patch16_224 OUTPUT_DIR --weights deit.safetensors

Without --weights the pretrained weights come from the HuggingFace Hub; with it, from that local file.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import timm

from models import DeiTHighwayForImageClassification, SwinHighwayForImageClassification

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The command line of this module."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="timm model name, e.g. vit_base_patch16_224")
    parser.add_argument("output_dir", type=Path, help="where to write the save_pretrained directory")
    parser.add_argument("--weights", type=Path, help="a local timm weights file instead of the Hub's")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    overlay = {"pretrained_cfg_overlay": {"file": str(args.weights)}} if args.weights else {}
    timm_model = timm.create_model(args.model, pretrained=True, **overlay)
    model_class = (SwinHighwayForImageClassification if "Swin" in type(timm_model).__name__
                   else DeiTHighwayForImageClassification)
    model_class.from_timm(timm_model, num_early_exits=0).save_pretrained(args.output_dir)
    logger.info("Wrote %s: timm's %s as %s.", args.output_dir, args.model, model_class.__name__)


if __name__ == "__main__":
    main()
