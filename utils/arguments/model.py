"""Which model a run starts from, and the early-exit settings that override its configuration."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Model fields that override the loaded config when given (None keeps the checkpoint's value).
MODEL_CONFIG_FIELDS = (
    "backbone", "highway_type", "num_early_exits", "position_exits", "exit_strategy", "threshold", "patience",
    "train_strategy", "loss_coefficient", "homo_coefficient", "hete_coefficient", "freeze_backbone",
)


def parse_literal(name: str, value: Any) -> Any:
    """Turn the command line's text form of a number or list ("0.8", "[4,5,6]", "4,5,6") into a value.

    Values that are already numbers or lists (from a dict, JSON or YAML) pass through unchanged.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in ("", "none", "null"):
        return None
    if "," in text and not text.startswith("["):
        text = f"[{text}]"
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"`{name}`={value!r} is not a number or a list such as [4,5,6].") from error


@dataclass
class ModelArguments:
    """Which model to start from and the early-exit settings; every early-exit field left at None keeps the
    value of the loaded config (or the model defaults when training from a bare config)."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Checkpoint directory or hub id to start from (None: train from scratch)."}
    )
    config_name: str | None = field(
        default=None, metadata={"help": "Config JSON file or directory; with no model_name_or_path, from scratch."}
    )
    model_type: str | None = field(
        default=None,
        metadata={"help": "Without a checkpoint or config: vit, deit or swin builds the paper's ViT-B/16, DeiT-B or "
                          "Swin-B (configs/paper/models) from scratch; with one, it must name the checkpoint's "
                          "architecture."},
    )
    image_processor_name: str | None = field(
        default=None, metadata={"help": "Take the image normalisation from this processor (default: the model's)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where hub models and datasets are cached."})
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a hub model."})
    token: str | None = field(default=None, metadata={"help": "HF token for gated hub models and datasets."})
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise checkpoint weights whose shape differs (new label count)."}
    )
    backbone: str | None = field(default=None, metadata={"help": "ViT (cls token) or DeiT (cls + distillation)."})
    highway_type: str | None = field(
        default=None,
        metadata={"help": "Exit head: linear, conv_normal, conv1_1, conv2_1, attention_rN, self_attention, vit, "
                          "LGViT."},
    )
    num_early_exits: str | None = field(
        default=None, metadata={"help": "Number of exits, 0 = plain classifier (Swin: per stage, '[0,1,6,1]')."}
    )
    position_exits: str | None = field(
        default=None, metadata={"help": "1-based exit layers, e.g. '[4,5,6,7,8,9,10,11]' (quote it in shells)."}
    )
    exit_strategy: str | None = field(
        default=None, metadata={"help": "entropy, confidence, patience or patient_and_confident."}
    )
    threshold: str | None = field(default=None, metadata={"help": "One threshold, or a list with one per exit."})
    patience: int | None = field(default=None, metadata={"help": "Exits in a row for patience strategies."})
    train_strategy: str | None = field(
        default=None,
        metadata={"help": "normal, weighted, alternating, alternating_weighted, distillation, distillation_LGViT."},
    )
    loss_coefficient: float | None = field(default=None, metadata={"help": "Weight of prediction distillation."})
    homo_coefficient: float | None = field(default=None, metadata={"help": "Weight of homogeneous distillation."})
    hete_coefficient: float | None = field(default=None, metadata={"help": "Weight of heterogeneous distillation."})
    freeze_backbone: bool | None = field(
        default=None, metadata={"help": "Stage 2: train only the exit heads (implied by distillation_LGViT)."}
    )

    def __post_init__(self) -> None:
        if self.model_name_or_path is None and self.config_name is None and self.model_type is None:
            raise ValueError("Give --model_name_or_path (a checkpoint), --config_name (a config file, from scratch) or "
                             "--model_type (vit, deit or swin: the paper's architecture, from scratch).")
        self.num_early_exits = parse_literal("num_early_exits", self.num_early_exits)
        self.position_exits = parse_literal("position_exits", self.position_exits)
        self.threshold = parse_literal("threshold", self.threshold)

    def config_overrides(self) -> dict[str, Any]:
        """The early-exit fields that were set, ready to override the loaded config."""
        return {name: getattr(self, name) for name in MODEL_CONFIG_FIELDS if getattr(self, name) is not None}
