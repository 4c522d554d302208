"""Configuration of Swin classifiers with early exits."""

from __future__ import annotations

from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import SwinConfig

from .early_exit_config import EarlyExitConfig, as_pair
from .exit_settings import check_choice, check_positions, parse_list_string
from .head_types import HeadSpec, expand_head_types
from .heads import TokenLayout
from .swin_layout import default_stage_positions, exit_stages, global_layers, stage_grids, stage_widths


def _as_list(value: object) -> object:
    """A tuple from a dataclass default becomes a list; anything else is checked later."""
    return list(value) if isinstance(value, tuple) else value


@strict
class SwinHighwayConfig(EarlyExitConfig, SwinConfig):
    r"""Swin configuration plus the LGViT early-exit fields (`models.early_exit_config.EarlyExitConfig`), per stage.

    The backbone defaults are Swin-B (`microsoft/swin-base-patch4-window7-224`): embed_dim 128, depths [2, 2, 18, 2],
    heads [4, 8, 16, 32]. "Layer" means one Swin block, numbered 1..sum(depths) over all stages (24 for Swin-B);
    an exit reads its block's output before patch merging (`models.swin_layout`).

    backbone (`str`, defaults to `"Swin"`): always "Swin"; the field exists so every config names its backbone.
    num_early_exits (`list[int]`, defaults to `[0, 1, 6, 1]`): number of exits in each stage. The original's string
        form "[0,1,6,1]" is accepted and converted once; a plain 0 means no exits (a plain classifier).
    position_exits (`list[list[int]]`, *optional*): per stage, the 1-based blocks *within the stage* read by its
        exits, e.g. [[], [2], [3, 6, 9, 12, 15, 18], [1]]; the string form is accepted. None spreads each stage's
        exits evenly (`models.swin_layout.default_stage_positions`): the paper's global layers 4, 7, ..., 22, 23 with
        the defaults.
    `highway_type="LGViT"` follows `models.head_types.swin_lgvit_layout` over all exits, shallow to deep.
    exit_strategy defaults to `"confidence"`; without a threshold the original Swin defaults apply (entropy 0.65,
    confidence 0.75, patient_and_confident 0.8; patience 3, patient_and_confident 2).
    """

    model_type = "swin_highway"
    readable_model_types = ("swin",)
    default_thresholds: ClassVar[dict[str, float]] = {"entropy": 0.65, "confidence": 0.75,
                                                      "patient_and_confident": 0.8}
    default_patience: ClassVar[dict[str, int]] = {"patience": 3, "patient_and_confident": 2}

    embed_dim: int = 128
    depths: list[int] | tuple[int, ...] = (2, 2, 18, 2)
    num_heads: list[int] | tuple[int, ...] = (4, 8, 16, 32)
    backbone: str = "Swin"
    num_early_exits: list[int] | tuple[int, ...] | str | int = (0, 1, 6, 1)
    position_exits: list[list[int]] | str | None = None
    exit_strategy: str = "confidence"

    def __post_init__(self, **kwargs: Any) -> None:
        self.depths = _as_list(self.depths)
        self.num_heads = _as_list(self.num_heads)
        self.num_early_exits = _as_list(parse_list_string("num_early_exits", self.num_early_exits))
        if self.num_early_exits == 0:
            self.num_early_exits = [0] * len(self.depths)
        self.parse_original_strings()
        super().__post_init__(**kwargs)
        self.check()

    @property
    def num_blocks(self) -> int:
        """Number of Swin blocks over all stages (the exit-layer scale; `num_layers` counts stages)."""
        return sum(self.depths)

    @property
    def num_exits(self) -> int:
        return sum(self.num_early_exits)

    def stage_positions(self) -> list[list[int]]:
        """Per stage, the 1-based blocks within the stage that have an exit."""
        if self.position_exits is not None:
            return [list(stage) for stage in self.position_exits]
        return default_stage_positions(self.num_early_exits, self.depths)

    def exit_stages(self) -> list[int]:
        """0-based stage of every exit, in layer order."""
        return exit_stages(self.num_early_exits)

    def exit_positions(self) -> list[int]:
        """1-based global layer (block over all stages) of every exit."""
        return global_layers(self.stage_positions(), self.depths)

    def head_specs(self) -> list[HeadSpec]:
        """Head type of every exit (the LGViT layout expanded)."""
        return expand_head_types(self.highway_type, self.num_exits, swin=True)

    def stage_grids(self) -> list[tuple[int, int]]:
        return stage_grids(as_pair(self.image_size), as_pair(self.patch_size), len(self.depths))

    def exit_token_layouts(self) -> list[TokenLayout]:
        """The tokens every exit reads: its stage's width and grid, no prefix tokens."""
        widths, grids = stage_widths(self.embed_dim, len(self.depths)), self.stage_grids()
        return [TokenLayout(widths[stage], 0, grids[stage]) for stage in self.exit_stages()]

    def check_layout(self) -> None:
        """`num_early_exits` and `position_exits` hold one entry per stage and name existing blocks."""
        check_choice("backbone", self.backbone, ("Swin",))
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
        self.head_specs()
