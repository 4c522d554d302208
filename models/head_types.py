"""Exit head types: the `highway_type` strings parsed once into a small typed spec, and the LGViT layouts.

Head types (the original code's names):
- `linear`: a classifier on the prefix tokens (ViT: tanh pooler on the cls token; DeiT: one classifier per prefix
  token, averaged) or, without prefix tokens (Swin), on the token mean;
- local perception heads `conv_normal`, `conv1_1` (the paper's LPH) and `conv2_1`: convolutions over the patch grid;
- global aggregation heads `attention_rN` (the paper's GAH, N >= 1): attention over every N-th patch of the grid;
- `self_attention`: full multi-head self-attention over the patch tokens;
- `vit` (ViT-EE): one extra transformer layer, then the `linear` head;
- `LGViT`: a layout of local perception heads on the shallow exits and global aggregation heads on the deep ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FAMILIES = ("linear", "local", "global", "self_attention", "vit")
LOCAL_HEAD_TYPES = ("conv_normal", "conv1_1", "conv2_1")
LAYOUT_NAME = "LGViT"
HEAD_TYPE_NAMES = ("linear", *LOCAL_HEAD_TYPES, "attention_rN (N >= 1)", "self_attention", "vit", LAYOUT_NAME)
_GLOBAL_HEAD = re.compile(r"attention_r(\d+)")
# The original code's layouts for the exit counts it supported; other counts follow `lgvit_layout`'s rule.
_ORIGINAL_LGVIT_LAYOUTS = {
    2: ["conv1_1", "attention_r2"],
    4: ["conv1_1", "conv2_1", "attention_r2", "attention_r3"],
    6: ["conv1_1", "conv2_1", "attention_r2", "attention_r2", "attention_r3", "attention_r3"],
    8: ["conv1_1", "conv1_1", "conv2_1", "conv2_1", "attention_r2", "attention_r2", "attention_r3", "attention_r3"],
}


@dataclass(frozen=True)
class HeadSpec:
    """One exit head type.

    Attributes:
        name: its `highway_type` string, e.g. "attention_r2".
        family: `linear`, `local` (convolutions), `global` (strided attention), `self_attention` or `vit`.
        ratio: the sampling stride of a global aggregation head (None for the others).
    """

    name: str
    family: str
    ratio: int | None = None

    @property
    def distillation_group(self) -> str | None:
        """The `distillation_LGViT` group the head belongs to: "local", "global", or None (no feature terms)."""
        return self.family if self.family in ("local", "global") else None


def parse_head_type(name: str, field: str = "highway_type") -> HeadSpec:
    """The spec of one head type; a ValueError naming `field` and the allowed values otherwise."""
    if name in LOCAL_HEAD_TYPES:
        return HeadSpec(name, "local")
    if name in ("linear", "self_attention", "vit"):
        return HeadSpec(name, name)
    match = _GLOBAL_HEAD.fullmatch(name)
    if match and int(match.group(1)) >= 1:
        return HeadSpec(name, "global", int(match.group(1)))
    raise ValueError(f"`{field}`={name!r} is not supported; allowed values: {', '.join(HEAD_TYPE_NAMES)}.")


def lgvit_layout(num_exits: int) -> list[str]:
    """Head types of the LGViT layout for `num_exits` exits, shallow to deep.

    2, 4, 6 and 8 exits reproduce the original layouts. Any other count puts local perception heads on the
    shallow half (conv1_1 first, then conv2_1) and global aggregation heads on the deep half (stride 2 first,
    then stride 3); with an odd count the extra exit is global.
    """
    if num_exits in _ORIGINAL_LGVIT_LAYOUTS:
        return list(_ORIGINAL_LGVIT_LAYOUTS[num_exits])
    num_local = num_exits // 2
    num_global = num_exits - num_local
    local = ["conv1_1"] * ((num_local + 1) // 2) + ["conv2_1"] * (num_local // 2)
    global_ = ["attention_r2"] * ((num_global + 1) // 2) + ["attention_r3"] * (num_global // 2)
    return local + global_


def swin_lgvit_layout(num_exits: int) -> list[str]:
    """Head types of the LGViT layout on Swin, shallow to deep over all stages.

    The DeiT rule (`lgvit_layout`) with every global aggregation stride one smaller (r2 -> r1, r3 -> r2), since
    Swin's deep stages have small grids (14x14 and 7x7 at 224 px). For the paper's 8 exits this is the original Swin
    layout: conv1_1 x2, conv2_1 x2, attention_r1 x2, attention_r2 x2 (global layers 4..23 of Swin-B).
    """
    specs = [parse_head_type(name) for name in lgvit_layout(num_exits)]
    return [f"attention_r{spec.ratio - 1}" if spec.family == "global" else spec.name for spec in specs]


def expand_head_types(highway_type: str, num_exits: int, swin: bool = False) -> list[HeadSpec]:
    """One head spec per exit for a configuration's `highway_type` (`LGViT` expands into its layout)."""
    if highway_type == LAYOUT_NAME:
        names = swin_lgvit_layout(num_exits) if swin else lgvit_layout(num_exits)
        return [parse_head_type(name) for name in names]
    return [parse_head_type(highway_type)] * num_exits


def check_grid_ratio(spec: HeadSpec, grid: tuple[int, int], where: str) -> None:
    """A global aggregation head must keep at least one full stride inside the patch grid."""
    if spec.ratio is not None and spec.ratio > min(grid):
        raise ValueError(
            f"`highway_type` {spec.name!r} at {where} samples every {spec.ratio}th patch, but the patch grid there is "
            f"only {grid[0]}x{grid[1]}; use a ratio of at most {min(grid)}."
        )
