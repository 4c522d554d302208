"""Configuration of Swin classifiers with early exits."""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import SwinConfig

from .exit_settings import (
    STAGE2_STRATEGIES,
    ExitSettings,
    check_choice,
    check_positions,
    check_training_fields,
    parse_list_string,
    resolve_exit_settings,
)
from .heads import check_grid_ratio, check_head_type, global_ratio, swin_lgvit_layout
from .losses import check_lgvit_distillation_layout

# The original code's defaults for Swin (original-behaviour.md section 6).
DEFAULT_THRESHOLDS = {"entropy": 0.65, "confidence": 0.75, "patient_and_confident": 0.8}
DEFAULT_PATIENCE = {"patience": 3, "patient_and_confident": 2}
# Global aggregation heads use 8 attention heads (models.heads.GlobalAggregationMixer).
GLOBAL_HEAD_ATTENTION_HEADS = 8


def _as_int_list(value: object) -> object:
    """A tuple from a dataclass default becomes a list; anything else is checked later."""
    return list(value) if isinstance(value, tuple) else value


@strict
class SwinHighwayConfig(SwinConfig):
    r"""Swin configuration plus the LGViT early-exit fields (the original code's names), per stage.

    The backbone defaults are Swin-B (`microsoft/swin-base-patch4-window7-224`): embed_dim 128, depths [2, 2, 18, 2],
    heads [4, 8, 16, 32]. "Layer" means one Swin block, numbered 1..sum(depths) over all stages (24 for Swin-B);
    an exit reads its block's output before patch merging.

    backbone (`str`, defaults to `"Swin"`): always "Swin"; the field exists so every config names its backbone.
    highway_type (`str`, defaults to `"linear"`): exit head type, see `models.heads`; `"LGViT"` follows
        `models.heads.swin_lgvit_layout` over all exits, shallow to deep.
    num_early_exits (`list[int]`, defaults to `[0, 1, 6, 1]`): number of exits in each stage. The original's string
        form "[0,1,6,1]" is accepted and converted once; a plain 0 means no exits (a plain classifier).
    position_exits (`list[list[int]]`, *optional*): per stage, the 1-based blocks *within the stage* read by its
        exits, e.g. [[], [2], [3, 6, 9, 12, 15, 18], [1]]; the string form is accepted. None spreads each stage's
        exits evenly so the last one reads the stage's last block (in the last stage, the block before the last):
        block ceil(k * d / n) for exit k of n in a stage of d usable blocks. With the defaults this gives the
        paper's global layers 4, 7, 10, 13, 16, 19, 22, 23.
    exit_strategy (`str`, defaults to `"confidence"`): `entropy`, `confidence`, `patience`, `patient_and_confident`.
    threshold (`float` or `list[float]`, *optional*): one value for all exits or one per exit (in layer order);
        None uses the original Swin defaults (entropy 0.65, confidence 0.75, patient_and_confident 0.8).
    patience (`int`, *optional*): exits in a row for `patience` (default 3) and `patient_and_confident` (2).
    train_strategy (`str`, defaults to `"normal"`): stage 1 `normal`, `weighted`, `alternating`,
        `alternating_weighted`, `distillation`; stage 2 `distillation_LGViT` (or `distillation` with
        `freeze_backbone`).
    loss_coefficient (`float`, defaults to 0.3): weight of prediction distillation.
    homo_coefficient, hete_coefficient (`float`, defaults to 0.01): weights of the homogeneous and heterogeneous
        feature distillation of `distillation_LGViT` (see docs/swin_distillation.md).
    freeze_backbone (`bool`, defaults to False): stage 2, only the exit heads train. Implied by
        `distillation_LGViT`.
    """

    model_type = "swin_highway"

    embed_dim: int = 128
    depths: list[int] | tuple[int, ...] = (2, 2, 18, 2)
    num_heads: list[int] | tuple[int, ...] = (4, 8, 16, 32)
    backbone: str = "Swin"
    highway_type: str = "linear"
    num_early_exits: list[int] | tuple[int, ...] | str | int = (0, 1, 6, 1)
    position_exits: list[list[int]] | str | None = None
    exit_strategy: str = "confidence"
    threshold: float | int | list[float | int] | None = None
    patience: int | None = None
    train_strategy: str = "normal"
    loss_coefficient: float | int = 0.3
    homo_coefficient: float | int = 0.01
    hete_coefficient: float | int = 0.01
    freeze_backbone: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        self.depths = _as_int_list(self.depths)
        self.num_heads = _as_int_list(self.num_heads)
        self.num_early_exits = _as_int_list(parse_list_string("num_early_exits", self.num_early_exits))
        if self.num_early_exits == 0:
            self.num_early_exits = [0] * len(self.depths)
        self.position_exits = parse_list_string("position_exits", self.position_exits)
        if isinstance(self.threshold, str):
            self.threshold = parse_list_string("threshold", self.threshold)
        super().__post_init__(**kwargs)
        self.check()

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> SwinHighwayConfig:
        """Build from a saved configuration (also a plain transformers Swin one).

        Early-exit keyword arguments are applied before validation, so `from_pretrained(dir, num_early_exits=[...],
        position_exits=[...])` is checked as a whole.
        """
        config_dict = dict(config_dict)
        for name in list(kwargs):
            if name in cls.__dataclass_fields__ and name not in ("id2label", "label2id"):
                config_dict[name] = kwargs.pop(name)
        return super().from_dict(config_dict, **kwargs)

    @property
    def total_layers(self) -> int:
        """Number of Swin blocks over all stages (the exit-layer scale; `num_hidden_layers` counts stages)."""
        return sum(self.depths)

    @property
    def num_exits(self) -> int:
        return sum(self.num_early_exits)

    def stage_widths(self) -> list[int]:
        """Channels of the tokens in each stage."""
        return [self.embed_dim * 2**stage for stage in range(len(self.depths))]

    def stage_grids(self) -> list[tuple[int, int]]:
        """(height, width) of the token grid in each stage, as transformers' Swin computes it (padding rounds up)."""
        image = self.image_size if isinstance(self.image_size, (list, tuple)) else (self.image_size,) * 2
        patch = self.patch_size if isinstance(self.patch_size, (list, tuple)) else (self.patch_size,) * 2
        grid = (-(-image[0] // patch[0]), -(-image[1] // patch[1]))
        grids = []
        for _ in self.depths:
            grids.append(grid)
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
        return grids

    def stage_positions(self) -> list[list[int]]:
        """Per stage, the 1-based blocks within the stage that have an exit."""
        if self.position_exits is not None:
            return [list(stage) for stage in self.position_exits]
        positions = []
        for stage, (count, depth) in enumerate(zip(self.num_early_exits, self.depths)):
            usable = depth - 1 if stage == len(self.depths) - 1 else depth
            positions.append([-(-k * usable // count) for k in range(1, count + 1)])
        return positions

    def exit_stages(self) -> list[int]:
        """0-based stage of every exit, in layer order."""
        return [stage for stage, count in enumerate(self.num_early_exits) for _ in range(count)]

    def exit_positions(self) -> list[int]:
        """1-based global layer (block over all stages) of every exit."""
        offsets = [sum(self.depths[:stage]) for stage in range(len(self.depths))]
        return [offsets[stage] + block for stage, blocks in enumerate(self.stage_positions()) for block in blocks]

    def head_types(self) -> list[str]:
        """Head type of every exit (the LGViT layout expanded)."""
        check_head_type(self.highway_type)
        if self.highway_type == "LGViT":
            return swin_lgvit_layout(self.num_exits)
        return [self.highway_type] * self.num_exits

    def exit_settings(self) -> ExitSettings:
        """The checked exit criterion, read at every forward call so that changes take effect at once."""
        return resolve_exit_settings(self.exit_strategy, self.threshold, self.patience, self.num_exits,
                                     DEFAULT_THRESHOLDS, DEFAULT_PATIENCE)

    @property
    def frozen_backbone(self) -> bool:
        """Stage 2: backbone and final classifier frozen."""
        return self.freeze_backbone or self.train_strategy == "distillation_LGViT"

    def check(self) -> None:
        """Validate the early-exit fields together; raises ValueError naming the field and the allowed values."""
        check_choice("backbone", self.backbone, ("Swin",))
        check_head_type(self.highway_type)
        self._check_stage_lists()
        check_training_fields(self.train_strategy, self.loss_coefficient, self.homo_coefficient,
                              self.hete_coefficient)
        if self.num_exits:
            self.exit_settings()
        head_types = self.head_types()
        grids, widths = self.stage_grids(), self.stage_widths()
        for head_type, stage, layer in zip(head_types, self.exit_stages(), self.exit_positions()):
            where = f"layer {layer} (stage {stage + 1})"
            check_grid_ratio(head_type, grids[stage], where)
            if global_ratio(head_type) is not None and widths[stage] % GLOBAL_HEAD_ATTENTION_HEADS:
                raise ValueError(
                    f"`highway_type` {head_type!r} at {where} splits {widths[stage]} channels into "
                    f"{GLOBAL_HEAD_ATTENTION_HEADS} attention heads; `embed_dim` must make every stage width a "
                    f"multiple of {GLOBAL_HEAD_ATTENTION_HEADS}."
                )
        if self.freeze_backbone and self.train_strategy not in STAGE2_STRATEGIES:
            raise ValueError(
                f"`freeze_backbone`=True trains only the exit heads; `train_strategy` must then be one of "
                f"{', '.join(STAGE2_STRATEGIES)}, not {self.train_strategy!r}."
            )
        if self.train_strategy == "distillation_LGViT":
            check_lgvit_distillation_layout(head_types)

    def _check_stage_lists(self) -> None:
        """`num_early_exits` and `position_exits` hold one entry per stage and name existing blocks."""
        num_stages = len(self.depths)
        counts = self.num_early_exits
        if isinstance(counts, int):
            raise ValueError(
                f"`num_early_exits`={counts} must count exits per stage on Swin, e.g. [0, 1, 6, 1] for "
                f"{num_stages} stages (or 0 for none)."
            )
        if not isinstance(counts, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                   for n in counts):
            raise ValueError(f"`num_early_exits`={counts!r} must be a list of exit counts per stage, e.g. [0,1,6,1].")
        if len(counts) != num_stages:
            raise ValueError(
                f"`num_early_exits`={counts} has {len(counts)} entries but `depths`={self.depths} has {num_stages} "
                "stages; give one exit count per stage."
            )
        positions = self.position_exits
        if positions is not None:
            if not isinstance(positions, list) or not all(isinstance(stage, list) for stage in positions):
                raise ValueError(
                    f"`position_exits`={positions!r} must hold one list of within-stage blocks per stage, e.g. "
                    "[[], [2], [3, 6, 9, 12, 15, 18], [1]]."
                )
            if len(positions) != num_stages:
                raise ValueError(
                    f"`position_exits` has {len(positions)} stage lists but `depths`={self.depths} has {num_stages} "
                    "stages; give one list per stage (an empty one for a stage without exits)."
                )
        for stage, (count, depth) in enumerate(zip(counts, self.depths)):
            if positions is None:
                usable = depth - 1 if stage == num_stages - 1 else depth
                if count > usable:
                    raise ValueError(
                        f"`num_early_exits`[{stage}]={count} exits do not fit stage {stage + 1}, which has {depth} "
                        f"blocks (at most {usable} default positions); lower the count or give `position_exits`."
                    )
                continue
            blocks = positions[stage]
            bad = [block for block in blocks if isinstance(block, int) and not 1 <= block <= depth]
            if bad:
                raise ValueError(
                    f"`position_exits`[{stage}]={blocks} names block(s) {bad}, but stage {stage + 1} has only "
                    f"{depth} blocks (within-stage positions are 1..{depth})."
                )
            check_positions(f"position_exits[{stage}]", blocks, depth, count)
