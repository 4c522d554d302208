"""Convert a Swin checkpoint of the original LGViT code into this project's `SwinHighwayForImageClassification`.

The original kept its exit heads inside the encoder stages (`swin.encoder.layers.S.highway.K...`), stored the
per-stage exit layout as strings and saved transformers 4.26 Swin block names. `convert_swin` rebuilds the
configuration, numbers the heads over all stages in layer order and renames every tensor.
`utils.convert_original_checkpoint.convert` dispatches here for Swin configurations.
"""

from __future__ import annotations

import logging
import re

import torch

from models import SwinHighwayConfig, SwinHighwayForImageClassification
from models.exit_settings import TRAIN_STRATEGIES, parse_list_string

logger = logging.getLogger(__name__)

# transformers 4.x Swin block names -> the 5.x module names (the same renames transformers applies to hub files).
_BLOCK_RENAMES = (
    ("attention.self.query.", "attention.q_proj."),
    ("attention.self.key.", "attention.k_proj."),
    ("attention.self.value.", "attention.v_proj."),
    ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)
_BACKBONE_FIELDS = (
    "image_size", "patch_size", "num_channels", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio",
    "qkv_bias", "hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate", "hidden_act",
    "use_absolute_embeddings", "initializer_range", "layer_norm_eps", "encoder_stride", "id2label", "label2id",
    "num_labels",
)
_EXIT_FIELDS = ("highway_type", "exit_strategy", "loss_coefficient")


def is_swin_config(original_config: dict) -> bool:
    """True for a Swin configuration (it has stage depths and an embedding width), False for DeiT/ViT."""
    return "depths" in original_config or "embed_dim" in original_config


def _threshold_fields(original_config: dict) -> dict:
    """`threshold` and `patience` from the original's threshold, which packs the patience count into its list."""
    threshold, strategy = original_config.get("threshold"), original_config.get("exit_strategy", "confidence")
    if isinstance(threshold, list) and strategy == "patience":
        return {"threshold": None, "patience": int(threshold[0])}
    if isinstance(threshold, list) and strategy == "patient_and_confident":
        return {"threshold": threshold[:-1], "patience": int(threshold[-1])}
    if strategy in ("patience", "patient_and_confident") and threshold is not None:
        logger.warning("The original ignores a single threshold with %s; using the default thresholds.", strategy)
        return {"threshold": None}
    return {"threshold": threshold}


def swin_config_from_original(original_config: dict) -> SwinHighwayConfig:
    """This project's configuration from an original Swin highway configuration (a config.json dict)."""
    fields = {name: original_config[name] for name in _BACKBONE_FIELDS + _EXIT_FIELDS if name in original_config}
    for name in ("num_early_exits", "position_exits"):
        if original_config.get(name) is not None:
            fields[name] = parse_list_string(name, original_config[name])
    for name in ("homo", "hete"):
        value = original_config.get(f"{name}_coefficient", original_config.get(f"{name}_loss_coefficient"))
        if value is not None:
            fields[f"{name}_coefficient"] = value
    if original_config.get("train_strategy") in TRAIN_STRATEGIES:
        fields["train_strategy"] = original_config["train_strategy"]
    fields.update(_threshold_fields(original_config))
    if fields.get("highway_type") == "vit":
        raise ValueError(
            "The original Swin ViT-EE head is a DeiT layer fixed at width 512 with a 3072-wide MLP; this project's "
            "`vit` head follows its stage (MLP = mlp_ratio x width), so those weights cannot be converted."
        )
    return SwinHighwayConfig(**fields)


def _rename_block(name: str) -> str:
    for old, new in _BLOCK_RENAMES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _rename_head(name: str, head_type: str) -> str:
    """Rename a tensor inside one original exit head: LGViT heads keep their readout under `classifier.`."""
    if head_type != "linear" and name.startswith("classifier."):
        return "readout." + name[len("classifier."):]
    return name


def convert_swin_state_dict(state_dict: dict[str, torch.Tensor],
                            config: SwinHighwayConfig) -> dict[str, torch.Tensor]:
    """Rename an original Swin highway state dict to this project's names.

    Dropped: the 4.x `relative_position_index` buffers (transformers recomputes them) and the untrained top-level
    `layernorm` of the original's stage-2 class (original-behaviour.md B7).
    """
    first_exit = [sum(config.num_early_exits[:stage]) for stage in range(len(config.depths))]
    head_types = config.head_types()
    converted = {}
    for name, tensor in state_dict.items():
        if name.endswith("relative_position_index") or name.startswith("layernorm."):
            continue
        if match := re.fullmatch(r"swin\.encoder\.layers\.(\d+)\.highway\.(\d+)\.(.*)", name):
            index = first_exit[int(match.group(1))] + int(match.group(2))
            converted[f"exits.{index}.{_rename_head(match.group(3), head_types[index])}"] = tensor
        elif match := re.fullmatch(r"(swin\.encoder\.layers\.\d+\.blocks\.\d+\.)(.*)", name):
            converted[match.group(1) + _rename_block(match.group(2))] = tensor
        else:
            converted[name] = tensor
    return converted


def convert_swin(original_config: dict, state_dict: dict[str, torch.Tensor]) -> SwinHighwayForImageClassification:
    """Build this project's Swin model from an original checkpoint (its config.json dict and state dict)."""
    config = swin_config_from_original(original_config)
    model = SwinHighwayForImageClassification(config)
    converted = convert_swin_state_dict(state_dict, config)
    converted.setdefault("training_forwards", model.training_forwards)
    model.load_state_dict(converted, strict=True)
    return model
