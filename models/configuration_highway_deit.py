"""Configuration of DeiT/ViT classifiers with early exits."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import DeiTConfig

from .exit_settings import (
    STAGE2_STRATEGIES,
    ExitSettings,
    check_choice,
    check_positions,
    check_training_fields,
    parse_list_string,
    resolve_exit_settings,
)
from .heads import check_grid_ratio, check_head_type, exit_head_types
from .losses import check_lgvit_distillation_layout

BACKBONES = ("ViT", "DeiT")
# The original code's defaults for DeiT/ViT (original-behaviour.md section 6).
DEFAULT_THRESHOLDS = {"entropy": 0.6, "confidence": 0.865, "patient_and_confident": 0.5}
DEFAULT_PATIENCE = {"patience": 7, "patient_and_confident": 2}


@strict
class DeiTHighwayConfig(DeiTConfig):
    r"""DeiT/ViT configuration plus the LGViT early-exit fields (the original code's names).

    backbone (`str`, defaults to `"ViT"`): `"ViT"` (cls token; final prediction from it) or `"DeiT"` (cls and
        distillation tokens; final prediction = mean of their two classifiers).
    highway_type (`str`, defaults to `"linear"`): exit head type, see `models.heads`; `"LGViT"` mixes local
        perception and global aggregation heads.
    num_early_exits (`int`, defaults to 4): number of exits; 0 gives a plain classifier.
    position_exits (`list[int]`, *optional*): 1-based layer read by each exit, increasing. None places the exits on
        the `num_early_exits` layers just before the last (8 exits on 12 layers: 4..11, the paper's setting).
        The original's string form "[4,5,6]" is accepted and converted once.
    exit_strategy (`str`, defaults to `"entropy"`): `entropy`, `confidence`, `patience`, `patient_and_confident`.
    threshold (`float` or `list[float]`, *optional*): one value for all exits or one per exit; None uses the
        original defaults (entropy 0.6, confidence 0.865, patient_and_confident 0.5).
    patience (`int`, *optional*): exits in a row for `patience` (default 7) and `patient_and_confident` (2).
    train_strategy (`str`, defaults to `"normal"`): stage 1 `normal`, `weighted`, `alternating`,
        `alternating_weighted`, `distillation`; stage 2 `distillation_LGViT` (or `distillation` with
        `freeze_backbone`).
    loss_coefficient (`float`, defaults to 0.3): weight of prediction distillation.
    homo_coefficient, hete_coefficient (`float`, defaults to 0.01): weights of the homogeneous and heterogeneous
        feature distillation of `distillation_LGViT`.
    freeze_backbone (`bool`, defaults to False): stage 2, only the exit heads train. Implied by
        `distillation_LGViT`.
    """

    model_type = "deit_highway"

    backbone: str = "ViT"
    highway_type: str = "linear"
    num_early_exits: int = 4
    position_exits: list[int] | str | None = None
    exit_strategy: str = "entropy"
    threshold: float | int | list[float | int] | None = None
    patience: int | None = None
    train_strategy: str = "normal"
    loss_coefficient: float | int = 0.3
    homo_coefficient: float | int = 0.01
    hete_coefficient: float | int = 0.01
    freeze_backbone: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        self.position_exits = parse_list_string("position_exits", self.position_exits)
        if isinstance(self.threshold, str):
            self.threshold = parse_list_string("threshold", self.threshold)
        super().__post_init__(**kwargs)
        self.check()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> DeiTHighwayConfig:
        """Build from a saved configuration; a plain transformers ViT or DeiT one picks the matching backbone.

        Early-exit keyword arguments are applied before validation, so `from_pretrained(dir, num_early_exits=8,
        position_exits=[...])` is checked as a whole.
        """
        config_dict = dict(config_dict)
        if config_dict.get("model_type") in ("vit", "deit") and "backbone" not in config_dict:
            config_dict["backbone"] = "ViT" if config_dict["model_type"] == "vit" else "DeiT"
        for name in list(kwargs):
            if name in cls.__dataclass_fields__ and name not in ("id2label", "label2id"):
                config_dict[name] = kwargs.pop(name)
        return super().from_dict(config_dict, **kwargs)

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.backbone == "ViT" else 2

    @property
    def patch_grid(self) -> tuple[int, int]:
        image = self.image_size if isinstance(self.image_size, (list, tuple)) else (self.image_size,) * 2
        patch = self.patch_size if isinstance(self.patch_size, (list, tuple)) else (self.patch_size,) * 2
        return image[0] // patch[0], image[1] // patch[1]

    def exit_positions(self) -> list[int]:
        """1-based layer of every exit."""
        if self.position_exits is None:
            return list(range(self.num_hidden_layers - self.num_early_exits, self.num_hidden_layers))
        return check_positions("position_exits", self.position_exits, self.num_hidden_layers, self.num_early_exits)

    def head_types(self) -> list[str]:
        """Head type of every exit (the LGViT layout expanded)."""
        return exit_head_types(self.highway_type, self.num_early_exits)

    def exit_settings(self) -> ExitSettings:
        """The checked exit criterion, read at every forward call so that changes take effect at once."""
        return resolve_exit_settings(self.exit_strategy, self.threshold, self.patience, self.num_early_exits,
                                     DEFAULT_THRESHOLDS, DEFAULT_PATIENCE)

    @property
    def frozen_backbone(self) -> bool:
        """Stage 2: backbone and final classifier(s) frozen."""
        return self.freeze_backbone or self.train_strategy == "distillation_LGViT"

    def check(self) -> None:
        """Validate the early-exit fields together; raises ValueError naming the field and the allowed values."""
        check_choice("backbone", self.backbone, BACKBONES)
        check_head_type(self.highway_type)
        if not isinstance(self.num_early_exits, int) or not 0 <= self.num_early_exits <= self.num_hidden_layers:
            raise ValueError(
                f"`num_early_exits`={self.num_early_exits!r} must be a whole number between 0 and "
                f"`num_hidden_layers`={self.num_hidden_layers}."
            )
        if self.position_exits is None and self.num_early_exits == self.num_hidden_layers:
            raise ValueError("Give `position_exits` explicitly when every layer has an exit.")
        positions = self.exit_positions()
        check_training_fields(self.train_strategy, self.loss_coefficient, self.homo_coefficient,
                              self.hete_coefficient)
        if self.num_early_exits:
            self.exit_settings()
        head_types = self.head_types()
        for head_type, position in zip(head_types, positions):
            check_grid_ratio(head_type, self.patch_grid, f"layer {position}")
        if self.freeze_backbone and self.train_strategy not in STAGE2_STRATEGIES:
            raise ValueError(
                f"`freeze_backbone`=True trains only the exit heads; `train_strategy` must then be one of "
                f"{', '.join(STAGE2_STRATEGIES)}, not {self.train_strategy!r}."
            )
        if self.train_strategy == "distillation_LGViT":
            check_lgvit_distillation_layout(head_types)
