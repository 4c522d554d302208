"""The early-exit fields and checks every backbone configuration shares (the original code's field names).

`DeiTHighwayConfig` and `SwinHighwayConfig` inherit `EarlyExitConfig` next to transformers' own configuration and
add only what differs: the type of `num_early_exits` / `position_exits`, where the exits sit, the token layout each
exit reads and the original code's default thresholds for that backbone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from .exit_settings import (
    STAGE2_STRATEGIES,
    ExitSettings,
    check_training_fields,
    parse_list_string,
    resolve_exit_settings,
)
from .head_types import HeadSpec, check_grid_ratio
from .heads import TokenLayout
from .losses import check_lgvit_distillation_layout
from .original_checkpoint import is_original_config, original_config_fields

logger = logging.getLogger(__name__)


def as_pair(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    """An image or patch size as (height, width)."""
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


# Global aggregation heads split their tokens into this many attention heads (models.heads.GlobalAggregationMixer).
GLOBAL_HEAD_ATTENTION_HEADS = 8


@dataclass(repr=False)
class EarlyExitConfig:
    r"""Early-exit fields shared by every backbone, and their checks.

    highway_type (`str`, defaults to `"linear"`): exit head type (`models.head_types`): `linear`, `conv_normal`,
        `conv1_1`, `conv2_1`, `attention_rN`, `self_attention`, `vit`, or `LGViT`, a layout of local perception
        heads on the shallow exits and global aggregation heads on the deep ones.
    exit_strategy (`str`): an exit criterion of `models.criteria` (`entropy`, `confidence`, `patience`,
        `patient_and_confident`, or one registered later).
    threshold (`float` or `list[float]`, *optional*): one value for all exits or one per exit (in layer order);
        None uses the backbone's default for the criterion (the original code's values).
    patience (`int`, *optional*): exits in a row for `patience` and `patient_and_confident`.
    train_strategy (`str`, defaults to `"normal"`): stage 1 `normal`, `weighted`, `alternating`,
        `alternating_weighted`, `distillation`; stage 2 `distillation_LGViT` (or `distillation` with
        `freeze_backbone`).
    loss_coefficient (`float`, defaults to 0.3): weight of prediction distillation.
    homo_coefficient, hete_coefficient (`float`, defaults to 0.01): weights of the homogeneous and heterogeneous
        feature distillation of `distillation_LGViT`.
    freeze_backbone (`bool`, defaults to False): stage 2, only the exit heads train. Implied by
        `distillation_LGViT`.
    training_data (`list[dict]`, *optional*): one entry per training stage that led to these weights, oldest
        first (written by run_classification.py, carried over from the checkpoint a stage starts from): the
        train split and the calibration rows it held out (`utils.data.provenance.split_record`), its
        `train_strategy`, `output_dir` and starting checkpoint. None for weights trained elsewhere.

    A subclass defines `num_blocks`, `num_exits`, `exit_positions()`, `head_specs()`, `exit_token_layouts()`,
    `check_layout()`, and the class attributes `default_thresholds` / `default_patience` (by criterion name).
    """

    highway_type: str = "linear"
    exit_strategy: str = "entropy"
    threshold: float | int | list[float | int] | None = None
    patience: int | None = None
    train_strategy: str = "normal"
    loss_coefficient: float | int = 0.3
    homo_coefficient: float | int = 0.01
    hete_coefficient: float | int = 0.01
    freeze_backbone: bool = False
    training_data: list[dict[str, Any]] | None = None

    default_thresholds: ClassVar[dict[str, float]] = {}
    # model types of transformers' configurations this class reads (the backbone's own, without exits)
    readable_model_types: ClassVar[tuple[str, ...]] = ()
    default_patience: ClassVar[dict[str, int]] = {}

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        """Build from a saved configuration: this project's, a plain transformers one of the same backbone, or one of
        the original LGViT code (`models.original_checkpoint`), converted.

        Early-exit keyword arguments are applied before validation, so `from_pretrained(dir, num_early_exits=8,
        position_exits=[...])` is checked as a whole.
        """
        config_dict = cls.translate_config_dict(config_dict)
        for name in list(kwargs):
            if name in cls.__dataclass_fields__ and name not in ("id2label", "label2id"):
                config_dict[name] = kwargs.pop(name)
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: Any, **kwargs: Any) -> tuple[dict[str, Any], dict]:
        """As transformers' `get_config_dict`, with a configuration of another model type that this class reads (a
        plain ViT/DeiT/Swin one, or the original code's) translated here: the load logs one line saying so instead
        of transformers' warning that the model type differs."""
        config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        source_type = config_dict.get("model_type")
        if source_type in cls.readable_model_types:
            kind = "an original LGViT" if is_original_config(config_dict) else "a plain transformers"
            config_dict = cls.translate_config_dict(config_dict)
            logger.info("%s is %s `%s` configuration: read as %s.", pretrained_model_name_or_path, kind, source_type,
                        cls.__name__)
        return config_dict, kwargs

    @classmethod
    def translate_config_dict(cls, config_dict: dict[str, Any]) -> dict[str, Any]:
        """This class's fields (and `model_type`) from a configuration it reads: its own, a plain transformers one of
        the same backbone (`adapt_plain_config`), or one of the original code (`original_config_fields`)."""
        config_dict = dict(config_dict)
        if is_original_config(config_dict):
            config_dict = original_config_fields(config_dict)
            if config_dict["model_type"] != cls.model_type:
                raise ValueError(f"This is a {config_dict['model_type']} checkpoint of the original code; load it with "
                                 f"the matching class, not {cls.__name__}.")
        config_dict = cls.adapt_plain_config(config_dict)
        if config_dict.get("model_type") in cls.readable_model_types:
            config_dict["model_type"] = cls.model_type
        return config_dict

    @classmethod
    def adapt_plain_config(cls, config_dict: dict[str, Any]) -> dict[str, Any]:
        """Fill in the early-exit fields a plain transformers configuration of this backbone implies."""
        return config_dict

    def parse_original_strings(self) -> None:
        """Accept the original code's string forms ("[4,5,6]", "0.8") of the list fields, converted once."""
        self.position_exits = parse_list_string("position_exits", self.position_exits)
        if isinstance(self.threshold, str):
            self.threshold = parse_list_string("threshold", self.threshold)

    def exit_settings(self) -> ExitSettings:
        """The checked exit criterion, read at every forward call so that changes take effect at once."""
        return resolve_exit_settings(self.exit_strategy, self.threshold, self.patience, self.num_exits,
                                     self.default_thresholds, self.default_patience)

    @property
    def frozen_backbone(self) -> bool:
        """Stage 2: backbone and final classifier(s) frozen."""
        return self.freeze_backbone or self.train_strategy == "distillation_LGViT"

    def check(self) -> None:
        """Validate the early-exit fields together; raises ValueError naming the field and the allowed values."""
        self.check_layout()
        check_training_fields(self.train_strategy, self.loss_coefficient, self.homo_coefficient,
                              self.hete_coefficient)
        if self.num_exits:
            self.exit_settings()
        specs = self.head_specs()
        for spec, layout, layer in zip(specs, self.exit_token_layouts(), self.exit_positions()):
            check_exit_head(spec, layout, f"layer {layer}")
        if self.freeze_backbone and self.train_strategy not in STAGE2_STRATEGIES:
            raise ValueError(
                f"`freeze_backbone`=True trains only the exit heads; `train_strategy` must then be one of "
                f"{', '.join(STAGE2_STRATEGIES)}, not {self.train_strategy!r}."
            )
        if self.train_strategy == "distillation_LGViT":
            check_lgvit_distillation_layout(specs)


def check_exit_head(spec: HeadSpec, layout: TokenLayout, where: str) -> None:
    """A head must fit the tokens at its exit: a global aggregation head needs a stride inside the grid and a
    width its attention heads divide."""
    check_grid_ratio(spec, layout.grid, where)
    if spec.family == "global" and layout.width % GLOBAL_HEAD_ATTENTION_HEADS:
        raise ValueError(
            f"`highway_type` {spec.name!r} at {where} splits {layout.width} channels into "
            f"{GLOBAL_HEAD_ATTENTION_HEADS} attention heads; the width there must be a multiple of "
            f"{GLOBAL_HEAD_ATTENTION_HEADS}."
        )
