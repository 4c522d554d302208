"""Where exits sit on a Swin backbone: per-stage exit counts and within-stage blocks, and the stages' token grids.

Pure functions of the configuration values. "Layer" counts Swin blocks over all stages, 1-based (Swin-B: 1..24);
"block" is 1-based within its stage. An exit reads its block's output before the stage's patch merging.
"""

from __future__ import annotations

from collections.abc import Sequence


def default_stage_positions(counts: Sequence[int], depths: Sequence[int]) -> list[list[int]]:
    """Spread each stage's exits evenly so the last one reads the stage's last block (in the last stage, the block
    before the last): block ceil(k * d / n) for exit k of n in a stage of d usable blocks.

    With Swin-B's depths [2, 2, 18, 2] and counts [0, 1, 6, 1] this gives the paper's global layers
    4, 7, 10, 13, 16, 19, 22, 23.
    """
    positions = []
    for stage, (count, depth) in enumerate(zip(counts, depths)):
        usable = depth - 1 if stage == len(depths) - 1 else depth
        positions.append([-(-k * usable // count) for k in range(1, count + 1)])
    return positions


def global_layers(stage_positions: Sequence[Sequence[int]], depths: Sequence[int]) -> list[int]:
    """1-based global layer of every exit, in layer order."""
    offsets = [sum(depths[:stage]) for stage in range(len(depths))]
    return [offsets[stage] + block for stage, blocks in enumerate(stage_positions) for block in blocks]


def exit_stages(counts: Sequence[int]) -> list[int]:
    """0-based stage of every exit, in layer order."""
    return [stage for stage, count in enumerate(counts) for _ in range(count)]


def stage_widths(embed_dim: int, num_stages: int) -> list[int]:
    """Channels of the tokens in each stage (doubling at every patch merging)."""
    return [embed_dim * 2**stage for stage in range(num_stages)]


def stage_grids(image_size: tuple[int, int], patch_size: tuple[int, int], num_stages: int) -> list[tuple[int, int]]:
    """(height, width) of the token grid in each stage, as transformers' Swin computes it (padding rounds up)."""
    grid = (-(-image_size[0] // patch_size[0]), -(-image_size[1] // patch_size[1]))
    grids = []
    for _ in range(num_stages):
        grids.append(grid)
        grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
    return grids
