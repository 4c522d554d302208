"""Convert a checkpoint of the original LGViT code into this project's model.

The original code saved transformers 4.26 checkpoints of its own classes (`deit.encoder.highway.K...` exit heads,
string-valued `position_exits`, thresholds that pack the patience count). `convert` rebuilds the configuration
with this project's field names and renames every tensor, so the published LGViT checkpoints can be evaluated here.

Command line:
    python -m utils.convert_original_checkpoint ORIGINAL_DIR OUTPUT_DIR
reads ORIGINAL_DIR/config.json and its weights (model.safetensors or pytorch_model.bin) and writes a
`save_pretrained` directory that `AutoModelForImageClassification.from_pretrained` loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from models import DeiTHighwayConfig, DeiTHighwayForImageClassification, SwinHighwayForImageClassification
from models.exit_settings import parse_list_string
from utils.original_swin_checkpoint import convert_swin, is_swin_config

logger = logging.getLogger(__name__)

# transformers 4.x block names -> the 5.x module names of DeiTLayer / ViTLayer.
_BLOCK_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)
_BACKBONE_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps", "image_size",
    "patch_size", "num_channels", "qkv_bias", "encoder_stride", "id2label", "label2id", "num_labels",
)
_EXIT_FIELDS = ("backbone", "highway_type", "num_early_exits", "exit_strategy", "train_strategy", "loss_coefficient")


def _rename_block(name: str) -> str:
    for old, new in _BLOCK_RENAMES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _rename_head(name: str, head_type: str) -> str:
    """Rename a tensor inside one original exit head (`name` is relative to the head)."""
    if name.startswith("layer."):
        return "layer." + _rename_block(name[len("layer."):])
    if head_type == "vit" and name.startswith("classifier."):
        return "classifier." + _rename_head(name[len("classifier."):], "linear")
    # The self_attention head held a 4.x self-attention (query/key/value) and its output dense separately.
    if match := re.fullmatch(r"mlp\.attention\.(query|key|value)\.(.*)", name):
        return f"mlp.attention.{match.group(1)[0]}_proj.{match.group(2)}"
    if name.startswith("mlp.output.dense."):
        return "mlp.attention.o_proj." + name[len("mlp.output.dense."):]
    for old, new in (("pooler.dense.", "pooler."), ("cls_classifier.", "classifiers.0."),
                     ("distillation_classifier.", "classifiers.1.")):
        if name.startswith(old):
            return new + name[len(old):]
    if name.startswith("classifier.") and head_type != "linear":
        return "classifiers.0." + name[len("classifier."):]
    return name


def config_from_original(original_config: dict) -> DeiTHighwayConfig:
    """This project's configuration from an original DeiT/ViT highway configuration (a config.json dict)."""
    fields = {name: original_config[name] for name in _BACKBONE_FIELDS + _EXIT_FIELDS if name in original_config}
    fields["position_exits"] = parse_list_string("position_exits", original_config.get("position_exits"))
    for name in ("homo", "hete"):
        value = original_config.get(f"{name}_coefficient", original_config.get(f"{name}_loss_coefficient"))
        if value is not None:
            fields[f"{name}_coefficient"] = value
    threshold, strategy = original_config.get("threshold"), original_config.get("exit_strategy", "entropy")
    # The original packs the patience count into the threshold list: [count] or [entropy thresholds..., count].
    if isinstance(threshold, list) and strategy == "patience":
        fields["patience"], threshold = int(threshold[0]), None
    elif isinstance(threshold, list) and strategy == "patient_and_confident":
        fields["patience"], threshold = int(threshold[-1]), threshold[:-1]
    elif strategy in ("patience", "patient_and_confident") and threshold is not None:
        logger.warning("The original ignores a single threshold with %s; using the default thresholds.", strategy)
        threshold = None
    fields["threshold"] = threshold
    if fields.get("train_strategy") not in (None, "normal", "weighted", "alternating", "alternating_weighted",
                                            "distillation", "distillation_LGViT"):
        fields.pop("train_strategy")
    return DeiTHighwayConfig(**fields)


def convert_state_dict(state_dict: dict[str, torch.Tensor], config: DeiTHighwayConfig) -> dict[str, torch.Tensor]:
    """Rename an original DeiT/ViT highway state dict to this project's names (the unused pooler is dropped)."""
    prefix = "vit." if config.backbone == "ViT" else "deit."
    head_types = config.head_types()
    converted = {}
    for name, tensor in state_dict.items():
        if name.startswith("deit.pooler."):
            continue
        if match := re.match(r"deit\.encoder\.highway\.(\d+)\.(.*)", name):
            index = int(match.group(1))
            converted[f"exits.{index}.{_rename_head(match.group(2), head_types[index])}"] = tensor
        elif match := re.match(r"deit\.encoder\.layer\.(\d+)\.(.*)", name):
            converted[f"{prefix}layers.{match.group(1)}.{_rename_block(match.group(2))}"] = tensor
        elif name.startswith("deit."):
            converted[prefix + name[len("deit."):]] = tensor
        else:
            converted[name] = tensor
    return converted


def convert(original_config: dict, state_dict: dict[str, torch.Tensor]
            ) -> DeiTHighwayForImageClassification | SwinHighwayForImageClassification:
    """Build this project's model from an original checkpoint (its config.json dict and state dict)."""
    if is_swin_config(original_config):
        return convert_swin(original_config, state_dict)
    config = config_from_original(original_config)
    model = DeiTHighwayForImageClassification(config)
    converted = convert_state_dict(state_dict, config)
    converted.setdefault("training_forwards", model.training_forwards)
    model.load_state_dict(converted, strict=True)
    return model


def load_original_checkpoint(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read config.json and the weights of an original checkpoint directory."""
    config = json.loads((directory / "config.json").read_text())
    if (directory / "model.safetensors").exists():
        return config, load_file(directory / "model.safetensors")
    weights = directory / "pytorch_model.bin"
    if not weights.exists():
        raise FileNotFoundError(f"{directory} holds neither model.safetensors nor pytorch_model.bin.")
    return config, torch.load(weights, map_location="cpu", weights_only=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("original_dir", type=Path, help="directory of a checkpoint saved by the original code")
    parser.add_argument("output_dir", type=Path, help="where to write the converted save_pretrained directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    model = convert(*load_original_checkpoint(args.original_dir))
    model.save_pretrained(args.output_dir)
    logger.info("Wrote %s (%s exits at layers %s).", args.output_dir, model.config.num_early_exits,
                model.config.exit_positions())


if __name__ == "__main__":
    main()
