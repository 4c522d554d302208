"""Configuration of DeiT/ViT classifiers with early exits."""

from __future__ import annotations

from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import DeiTConfig

from .early_exit_config import EarlyExitConfig, as_pair
from .exit_settings import check_choice, check_positions
from .head_types import HeadSpec, expand_head_types
from .heads import TokenLayout

BACKBONES = ("ViT", "DeiT")


@strict
class DeiTHighwayConfig(EarlyExitConfig, DeiTConfig):
    r"""DeiT/ViT configuration plus the LGViT early-exit fields (`models.early_exit_config.EarlyExitConfig`).

    backbone (`str`, defaults to `"ViT"`): `"ViT"` (cls token; final prediction from it) or `"DeiT"` (cls and
        distillation tokens; final prediction = mean of their two classifiers).
    num_early_exits (`int`, defaults to 4): number of exits; 0 gives a plain classifier.
    position_exits (`list[int]`, *optional*): 1-based layer read by each exit, increasing. None places the exits on
        the `num_early_exits` layers just before the last (8 exits on 12 layers: 4..11, the paper's setting).
        The original's string form "[4,5,6]" is accepted and converted once.
    exit_strategy defaults to `"entropy"`; without a threshold the original DeiT defaults apply (entropy 0.6,
    confidence 0.865, patient_and_confident 0.5; patience 7, patient_and_confident 2).
    """

    model_type = "deit_highway"
    readable_model_types = ("vit", "deit")
    default_thresholds: ClassVar[dict[str, float]] = {"entropy": 0.6, "confidence": 0.865,
                                                      "patient_and_confident": 0.5}
    default_patience: ClassVar[dict[str, int]] = {"patience": 7, "patient_and_confident": 2}

    backbone: str = "ViT"
    num_early_exits: int = 4
    position_exits: list[int] | str | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        self.parse_original_strings()
        super().__post_init__(**kwargs)
        self.check()

    @classmethod
    def adapt_plain_config(cls, config_dict: dict[str, Any]) -> dict[str, Any]:
        """A plain transformers ViT or DeiT configuration picks the matching backbone."""
        if config_dict.get("model_type") in ("vit", "deit") and "backbone" not in config_dict:
            config_dict["backbone"] = "ViT" if config_dict["model_type"] == "vit" else "DeiT"
        return config_dict

    @property
    def num_blocks(self) -> int:
        """Number of transformer blocks (the exit layer of the final classifier)."""
        return self.num_hidden_layers

    @property
    def num_exits(self) -> int:
        return self.num_early_exits

    @property
    def num_prefix_tokens(self) -> int:
        return 1 if self.backbone == "ViT" else 2

    @property
    def patch_grid(self) -> tuple[int, int]:
        image, patch = as_pair(self.image_size), as_pair(self.patch_size)
        return image[0] // patch[0], image[1] // patch[1]

    def exit_positions(self) -> list[int]:
        """1-based layer of every exit."""
        if self.position_exits is None:
            return list(range(self.num_hidden_layers - self.num_early_exits, self.num_hidden_layers))
        return check_positions("position_exits", self.position_exits, self.num_hidden_layers, self.num_early_exits)

    def head_specs(self) -> list[HeadSpec]:
        """Head type of every exit (the LGViT layout expanded)."""
        return expand_head_types(self.highway_type, self.num_early_exits)

    def exit_token_layouts(self) -> list[TokenLayout]:
        """The tokens every exit reads: all blocks share one width, prefix and grid."""
        return [TokenLayout(self.hidden_size, self.num_prefix_tokens, self.patch_grid)] * self.num_early_exits

    def check_layout(self) -> None:
        check_choice("backbone", self.backbone, BACKBONES)
        if not isinstance(self.num_early_exits, int) or not 0 <= self.num_early_exits <= self.num_hidden_layers:
            raise ValueError(
                f"`num_early_exits`={self.num_early_exits!r} must be a whole number between 0 and "
                f"`num_hidden_layers`={self.num_hidden_layers}."
            )
        if self.position_exits is None and self.num_early_exits == self.num_hidden_layers:
            raise ValueError("Give `position_exits` explicitly when every layer has an exit.")
        self.exit_positions()
        self.head_specs()
