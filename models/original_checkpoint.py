"""Checkpoints of the original LGViT code: recognise them and convert them into this project's models.

The original code saved transformers 4.26 checkpoints of its own classes, whose config.json keeps `model_type`
"deit" or "swin" next to its early-exit fields (string-valued `position_exits`, thresholds that pack the patience
count, `homo_loss_coefficient`...), and whose weights use its own names: `deit.encoder.highway.K...` (Swin:
`swin.encoder.layers.S.highway.K...`) for the exit heads, 4.x block names for the backbone. `config_from_original`
rebuilds the configuration with this project's fields and `convert_state_dict` renames every tensor;
`from_pretrained` of the model classes uses them for such directories (`EarlyExitMixin.from_original`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .criteria import get_criterion
from .exit_settings import TRAIN_STRATEGIES, parse_list_string
from .head_types import HeadSpec

logger = logging.getLogger(__name__)

CONVERTER = "python -m utils.convert_original_checkpoint ORIGINAL_DIR OUTPUT_DIR"
# Fields only the original code's configurations hold (a plain transformers configuration has none of them).
ORIGINAL_EXIT_FIELDS = ("highway_type", "num_early_exits", "position_exits", "exit_strategy", "train_strategy")
# transformers 4.x block tensor names -> the 5.x module names (DeiT/ViT: attention.attention.*, Swin: attention.self.*).
_BLOCK_RENAMES = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.self.query.", "attention.q_proj."),
    ("attention.self.key.", "attention.k_proj."),
    ("attention.self.value.", "attention.v_proj."),
    ("attention.self.relative_position_bias_table", "attention.relative_position_bias.relative_position_bias_table"),
    ("attention.output.dense.", "attention.o_proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)
_DEIT_BACKBONE_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps", "image_size",
    "patch_size", "num_channels", "qkv_bias", "encoder_stride", "id2label", "label2id", "num_labels",
)
_SWIN_BACKBONE_FIELDS = (
    "image_size", "patch_size", "num_channels", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio",
    "qkv_bias", "hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate", "hidden_act",
    "use_absolute_embeddings", "initializer_range", "layer_norm_eps", "encoder_stride", "id2label", "label2id",
    "num_labels",
)


def is_original_config(config_dict: dict[str, Any]) -> bool:
    """Whether a config.json was written by the original code: a transformers DeiT/ViT/Swin model type (or none) with
    the original's early-exit fields."""
    return config_dict.get("model_type") in (None, "deit", "vit", "swin") and any(
        name in config_dict for name in ORIGINAL_EXIT_FIELDS)


def is_swin_config(config_dict: dict[str, Any]) -> bool:
    """True for a Swin configuration (stage depths, an embedding width), False for DeiT/ViT."""
    return config_dict.get("model_type") == "swin" or "depths" in config_dict or "embed_dim" in config_dict


def exit_fields_from_original(strategy: str, threshold: Any) -> dict[str, Any]:
    """`threshold` and `patience` from the original's threshold, which packs the patience count into its list:
    `[count]` for a criterion without threshold (patience), `[thresholds..., count]` for one with both
    (patient_and_confident). A single value with a counting criterion is ignored, as the original did."""
    criterion = get_criterion(strategy)
    if not criterion.uses_patience:
        return {"threshold": threshold}
    if isinstance(threshold, list):
        return {"threshold": threshold[:-1] if criterion.uses_threshold else None, "patience": int(threshold[-1])}
    if threshold is not None:
        logger.warning("The original code ignores a single threshold with %s; using the default thresholds.",
                       strategy)
    return {"threshold": None}


def _common_fields(original: dict[str, Any], strategy_default: str) -> dict[str, Any]:
    """Fields both backbones convert alike: loss weights under either name, strategies, thresholds."""
    fields = {name: original[name] for name in ("highway_type", "loss_coefficient") if name in original}
    for name in ("homo", "hete"):
        value = original.get(f"{name}_coefficient", original.get(f"{name}_loss_coefficient"))
        if value is not None:
            fields[f"{name}_coefficient"] = value
    if original.get("train_strategy") in TRAIN_STRATEGIES:
        fields["train_strategy"] = original["train_strategy"]
    strategy = original.get("exit_strategy") or strategy_default
    fields["exit_strategy"] = strategy
    fields.update(exit_fields_from_original(strategy, original.get("threshold")))
    return fields


def original_config_fields(original: dict[str, Any]) -> dict[str, Any]:
    """This project's configuration fields (with its `model_type`) from an original config.json dict."""
    if is_swin_config(original):
        fields = {name: original[name] for name in _SWIN_BACKBONE_FIELDS if name in original}
        for name in ("num_early_exits", "position_exits"):
            if original.get(name) is not None:
                fields[name] = parse_list_string(name, original[name])
        fields.update(_common_fields(original, "confidence"), model_type="swin_highway")
        if fields.get("highway_type") == "vit":
            raise ValueError(
                "The original Swin ViT-EE head is a DeiT layer fixed at width 512 with a 3072-wide MLP; this "
                "project's `vit` head follows its stage (MLP = mlp_ratio x width), so those weights cannot be "
                "converted."
            )
        return fields
    fields = {name: original[name] for name in _DEIT_BACKBONE_FIELDS + ("backbone", "num_early_exits")
              if name in original}
    fields["position_exits"] = parse_list_string("position_exits", original.get("position_exits"))
    fields.update(_common_fields(original, "entropy"), model_type="deit_highway")
    return fields


def _rename_block(name: str) -> str:
    for old, new in _BLOCK_RENAMES:
        if name.startswith(old):
            return new + name[len(old):]
    return name


def _rename_deit_head(name: str, spec: HeadSpec) -> str:
    """Rename a tensor inside one original DeiT/ViT exit head (`name` is relative to the head)."""
    if name.startswith("layer."):
        return "layer." + _rename_block(name[len("layer."):])
    if spec.family == "vit" and name.startswith("classifier."):
        return "classifier." + _rename_deit_head(name[len("classifier."):], HeadSpec("linear", "linear"))
    # The self_attention head held a 4.x self-attention (query/key/value) and its output dense separately.
    if match := re.fullmatch(r"mlp\.attention\.(query|key|value)\.(.*)", name):
        return f"mlp.attention.{match.group(1)[0]}_proj.{match.group(2)}"
    if name.startswith("mlp.output.dense."):
        return "mlp.attention.o_proj." + name[len("mlp.output.dense."):]
    for old, new in (("pooler.dense.", "pooler."), ("cls_classifier.", "classifiers.0."),
                     ("distillation_classifier.", "classifiers.1.")):
        if name.startswith(old):
            return new + name[len(old):]
    if name.startswith("classifier.") and spec.family != "linear":
        return "classifiers.0." + name[len("classifier."):]
    return name


def _rename_swin_head(name: str, spec: HeadSpec) -> str:
    """Rename a tensor inside one original Swin exit head: LGViT heads keep their readout under `classifier.`."""
    if spec.family != "linear" and name.startswith("classifier."):
        return "readout." + name[len("classifier."):]
    return name


def convert_state_dict(state_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Rename an original state dict to the names of this project's model for `config` (DeiT/ViT or Swin).

    Dropped: the unused DeiT pooler, the 4.x Swin `relative_position_index` buffers (transformers recomputes them)
    and the untrained top-level `layernorm` of the original's Swin stage-2 class.
    """
    specs, swin = config.head_specs(), config.model_type == "swin_highway"
    if swin:
        first_exit = [sum(config.num_early_exits[:stage]) for stage in range(len(config.depths))]
        head = re.compile(r"swin\.encoder\.layers\.(\d+)\.highway\.(\d+)\.(.*)")
        block = re.compile(r"(swin\.encoder\.layers\.\d+\.blocks\.\d+\.)(.*)")
    else:
        prefix = "vit." if config.backbone == "ViT" else "deit."
        head = re.compile(r"deit\.encoder\.highway\.(\d+)\.(.*)")
        block = re.compile(r"deit\.encoder\.layer\.(\d+)\.(.*)")
    converted = {}
    for name, tensor in state_dict.items():
        if name.startswith(("deit.pooler.", "layernorm.")) or name.endswith("relative_position_index"):
            continue
        if swin:
            if match := head.fullmatch(name):
                index = first_exit[int(match.group(1))] + int(match.group(2))
                name = f"exits.{index}.{_rename_swin_head(match.group(3), specs[index])}"
            elif match := block.fullmatch(name):
                name = match.group(1) + _rename_block(match.group(2))
        elif match := head.fullmatch(name):
            index = int(match.group(1))
            name = f"exits.{index}.{_rename_deit_head(match.group(2), specs[index])}"
        elif match := block.fullmatch(name):
            name = f"{prefix}layers.{match.group(1)}.{_rename_block(match.group(2))}"
        elif name.startswith("deit."):
            name = prefix + name[len("deit."):]
        converted[name] = tensor
    return converted


def read_original_checkpoint(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """config.json and the weights (model.safetensors or pytorch_model.bin) of a checkpoint directory."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    if (directory / "model.safetensors").exists():
        return config, load_file(directory / "model.safetensors")
    weights = directory / "pytorch_model.bin"
    if not weights.exists():
        raise FileNotFoundError(f"{directory} holds neither model.safetensors nor pytorch_model.bin.")
    return config, torch.load(weights, map_location="cpu", weights_only=True)


def find_original_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """The config dict and state dict of `path` when it is a local directory saved by the original code, else None."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file() or not is_original_config(json.loads(config_file.read_text())):
        return None
    return read_original_checkpoint(path)
