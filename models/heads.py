"""Exit heads ("highways") and the LGViT head layouts.

Every head maps the raw output of one backbone block, a token sequence (B, N, C), to `(logits, feature)`:
`logits` (B, K) are the exit's prediction and `feature` is what self-distillation compares (stage 2).
A head learns the token layout (prefix tokens, patch grid, width) from a `TokenLayout` given by the backbone,
never from hard-coded sizes.

Head types (the original's `highway_type` names):
- `linear`: ViT (1 prefix token) a tanh pooler on the cls token and a classifier; DeiT (cls + distillation token)
  a LayerNorm and one classifier per prefix token, averaged; Swin (no prefix token) LayerNorm, token mean, classifier.
- `conv_normal`, `conv1_1` (the paper's local perception head), `conv2_1`: convolutions over the patch grid.
- `attention_rN` (the paper's global aggregation head): attention over the patch grid subsampled with stride N.
- `self_attention`: full multi-head self-attention over the patch tokens.
- `vit` (ViT-EE): one extra transformer layer, then the `linear` head.
- `LGViT`: local perception heads on the shallow exits and global aggregation heads on the deep ones
  (`lgvit_layout`; on Swin `swin_lgvit_layout`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.deit.configuration_deit import DeiTConfig
from transformers.models.deit.modeling_deit import DeiTAttention, DeiTLayer

LOCAL_HEAD_TYPES = ("conv_normal", "conv1_1", "conv2_1")
HEAD_TYPE_NAMES = ("linear", "conv_normal", "conv1_1", "conv2_1", "attention_rN (N >= 1)", "self_attention", "vit",
                   "LGViT")
_GLOBAL_HEAD = re.compile(r"attention_r(\d+)")
# The original code's layouts for the exit counts it supported; other counts follow `lgvit_layout`'s rule.
_ORIGINAL_LGVIT_LAYOUTS = {
    2: ["conv1_1", "attention_r2"],
    4: ["conv1_1", "conv2_1", "attention_r2", "attention_r3"],
    6: ["conv1_1", "conv2_1", "attention_r2", "attention_r2", "attention_r3", "attention_r3"],
    8: ["conv1_1", "conv1_1", "conv2_1", "conv2_1", "attention_r2", "attention_r2", "attention_r3", "attention_r3"],
}


@dataclass(frozen=True)
class TokenLayout:
    """What a head needs to know about the tokens it reads.

    Attributes:
        width: channels C of every token.
        num_prefix_tokens: leading non-patch tokens (ViT 1: cls; DeiT 2: cls, distillation; Swin 0).
        grid: (height, width) of the patch grid; the patch tokens follow the prefix tokens in row-major order.
    """

    width: int
    num_prefix_tokens: int
    grid: tuple[int, int]


def global_ratio(head_type: str) -> int | None:
    """The subsampling stride N of an `attention_rN` head type, or None for any other type."""
    match = _GLOBAL_HEAD.fullmatch(head_type)
    return int(match.group(1)) if match else None


def is_local_head(head_type: str) -> bool:
    return head_type in LOCAL_HEAD_TYPES


def check_head_type(head_type: str, field: str = "highway_type") -> None:
    """Raise a ValueError naming the allowed values when `head_type` is not a head type."""
    ratio = global_ratio(head_type)
    known = head_type in ("linear", "self_attention", "vit", "LGViT") or is_local_head(head_type)
    if not known and (ratio is None or ratio < 1):
        raise ValueError(f"`{field}`={head_type!r} is not supported; allowed values: {', '.join(HEAD_TYPE_NAMES)}.")


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
    return [f"attention_r{ratio - 1}" if (ratio := global_ratio(head)) else head for head in lgvit_layout(num_exits)]


def exit_head_types(highway_type: str, num_exits: int) -> list[str]:
    """One head type per exit for a configuration's `highway_type`."""
    check_head_type(highway_type)
    return lgvit_layout(num_exits) if highway_type == "LGViT" else [highway_type] * num_exits


def check_grid_ratio(head_type: str, grid: tuple[int, int], where: str) -> None:
    """A global aggregation head must keep at least one full stride inside the patch grid."""
    ratio = global_ratio(head_type)
    if ratio is not None and ratio > min(grid):
        raise ValueError(
            f"`highway_type` {head_type!r} at {where} samples every {ratio}th patch, but the patch grid there is only "
            f"{grid[0]}x{grid[1]}; use a ratio of at most {min(grid)}."
        )


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) patch tokens -> (B, C, H, W) feature map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def map_to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature map -> (B, H*W, C) tokens."""
    return feature_map.flatten(2).transpose(1, 2)


def sample_grid(tokens: torch.Tensor, grid: tuple[int, int], ratio: int) -> torch.Tensor:
    """Keep every `ratio`-th patch in both directions (the original's AvgPool2d(kernel 1, stride ratio))."""
    if ratio == 1:
        return tokens
    return map_to_tokens(tokens_to_map(tokens, grid)[:, :, ::ratio, ::ratio])


def sampled_grid(grid: tuple[int, int], ratio: int) -> tuple[int, int]:
    """Grid size after `sample_grid` with `ratio`."""
    return tuple(-(-size // ratio) for size in grid)


class ConvNormalMixer(nn.Module):
    """`conv_normal`: 3x3 convolution, GELU, BatchNorm over the patch grid (no residual)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.BatchNorm2d(width))

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return map_to_tokens(self.conv(tokens_to_map(tokens, grid)))


class LocalPerceptionMixer(nn.Module):
    """`conv1_1` (local perception head) and `conv2_1` on the patch grid, with a residual connection.

    conv1_1: 1x1 conv, GELU, BN -> depthwise 3x3 conv, GELU, BN -> 1x1 conv, BN, plus the input.
    conv2_1 is the same without the depthwise stage.
    """

    def __init__(self, width: int, depthwise: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(width, width, 1), nn.GELU(), nn.BatchNorm2d(width))
        self.depthwise = depthwise
        if depthwise:
            self.proj = nn.Conv2d(width, width, 3, padding=1, groups=width)
            self.proj_act = nn.GELU()
            self.proj_bn = nn.BatchNorm2d(width)
        self.conv2 = nn.Sequential(nn.Conv2d(width, width, 1), nn.BatchNorm2d(width))

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        feature_map = tokens_to_map(tokens, grid)
        hidden = self.conv1(feature_map)
        if self.depthwise:
            hidden = self.proj_bn(self.proj_act(self.proj(hidden)))
        return map_to_tokens(self.conv2(hidden) + feature_map)


class GlobalAggregationMixer(nn.Module):
    """`attention_rN` (global aggregation head): multi-head attention over every N-th patch, then a projection.

    No residual and no norm, as in the paper's head. The scale is (C / heads) ** -0.5.
    """

    def __init__(self, width: int, ratio: int, num_heads: int = 8):
        super().__init__()
        if width % num_heads:
            raise ValueError(f"A global aggregation head needs a width divisible by {num_heads}; got {width}.")
        self.ratio = ratio
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        tokens = sample_grid(tokens, grid, self.ratio)
        batch, length, width = tokens.shape
        qkv = self.qkv(tokens).reshape(batch, length, 3, self.num_heads, width // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(query, key, value)
        return self.proj(attended.transpose(1, 2).reshape(batch, length, width))


class SelfAttentionMixer(nn.Module):
    """`self_attention`: transformers' DeiT multi-head attention over the patch tokens (no norm, no residual)."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        config = DeiTConfig(hidden_size=width, num_attention_heads=num_heads, attn_implementation="sdpa")
        self.attention = DeiTAttention(config)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.attention(tokens)[0]


def build_mixer(head_type: str, width: int, num_heads: int) -> nn.Module:
    """The token mixer of a convolution or attention head type."""
    ratio = global_ratio(head_type)
    if ratio is not None:
        return GlobalAggregationMixer(width, ratio)
    if head_type == "conv_normal":
        return ConvNormalMixer(width)
    if head_type in ("conv1_1", "conv2_1"):
        return LocalPerceptionMixer(width, depthwise=head_type == "conv1_1")
    if head_type == "self_attention":
        return SelfAttentionMixer(width, num_heads)
    raise ValueError(f"{head_type!r} has no token mixer.")


class PoolerHead(nn.Module):
    """`linear` head of a one-prefix-token (ViT) backbone: tanh pooler on the cls token, then a classifier.

    Feature: the pooled vector (B, C).
    """

    def __init__(self, width: int, num_labels: int):
        super().__init__()
        self.pooler = nn.Linear(width, width)
        self.classifier = nn.Linear(width, num_labels)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = torch.tanh(self.pooler(hidden[:, 0]))
        return self.classifier(pooled), pooled


class PrefixTokenHead(nn.Module):
    """`linear` head of a multi-prefix-token (DeiT) backbone: LayerNorm, one classifier per prefix token, averaged.

    Feature: the normalised prefix tokens (B, T, C).
    """

    def __init__(self, width: int, num_labels: int, num_prefix_tokens: int, layer_norm_eps: float):
        super().__init__()
        self.layernorm = nn.LayerNorm(width, eps=layer_norm_eps)
        self.classifiers = nn.ModuleList(nn.Linear(width, num_labels) for _ in range(num_prefix_tokens))

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = self.layernorm(hidden[:, : len(self.classifiers)])
        logits = torch.stack([classifier(prefix[:, i]) for i, classifier in enumerate(self.classifiers)]).mean(0)
        return logits, prefix


class NormMeanHead(nn.Module):
    """`linear` head of a backbone without prefix tokens (Swin): LayerNorm, token mean, classifier.

    Feature: the pooled vector (B, C).
    """

    def __init__(self, width: int, num_labels: int, layer_norm_eps: float):
        super().__init__()
        self.layernorm = nn.LayerNorm(width, eps=layer_norm_eps)
        self.classifier = nn.Linear(width, num_labels)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.layernorm(hidden).mean(1)
        return self.classifier(pooled), pooled


def build_linear_head(layout: TokenLayout, num_labels: int, layer_norm_eps: float) -> nn.Module:
    """The `linear` head that matches the backbone's prefix tokens."""
    if layout.num_prefix_tokens == 0:
        return NormMeanHead(layout.width, num_labels, layer_norm_eps)
    if layout.num_prefix_tokens == 1:
        return PoolerHead(layout.width, num_labels)
    return PrefixTokenHead(layout.width, num_labels, layout.num_prefix_tokens, layer_norm_eps)


class MixerHead(nn.Module):
    """Convolution and attention heads: mix the patch tokens, average them, classify.

    With prefix tokens (ViT/DeiT): logits = mean over prefix tokens t of classifier_t(mean(mixed) + raw token t).
    Without (Swin): the `linear` head (LayerNorm, mean, classifier) on the mixed tokens.
    Feature: the mixed tokens (ViT/DeiT) or the pooled vector (Swin).
    """

    def __init__(self, head_type: str, layout: TokenLayout, num_labels: int, num_heads: int, layer_norm_eps: float):
        super().__init__()
        self.layout = layout
        self.mlp = build_mixer(head_type, layout.width, num_heads)
        if layout.num_prefix_tokens:
            self.classifiers = nn.ModuleList(nn.Linear(layout.width, num_labels)
                                             for _ in range(layout.num_prefix_tokens))
        else:
            self.readout = NormMeanHead(layout.width, num_labels, layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num_prefix = self.layout.num_prefix_tokens
        mixed = self.mlp(hidden[:, num_prefix:], self.layout.grid)
        if not num_prefix:
            return self.readout(mixed)
        pooled = mixed.mean(1)
        logits = torch.stack([classifier(pooled + hidden[:, i]) for i, classifier in enumerate(self.classifiers)])
        return logits.mean(0), mixed


class TransformerLayerHead(nn.Module):
    """`vit` (ViT-EE): one extra transformer layer (transformers' DeiT layer) on all tokens, then a `linear` head."""

    def __init__(self, layout: TokenLayout, num_labels: int, num_heads: int, intermediate_size: int,
                 layer_norm_eps: float):
        super().__init__()
        layer_config = DeiTConfig(hidden_size=layout.width, num_attention_heads=num_heads,
                                  intermediate_size=intermediate_size, layer_norm_eps=layer_norm_eps,
                                  attn_implementation="sdpa")
        self.layer = DeiTLayer(layer_config)
        self.classifier = build_linear_head(layout, num_labels, layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier(self.layer(hidden))


def build_exit_head(head_type: str, layout: TokenLayout, num_labels: int, num_heads: int, intermediate_size: int,
                    layer_norm_eps: float) -> nn.Module:
    """Build one exit head.

    Args:
        head_type: a single head type (not `LGViT`; expand it with `exit_head_types` first).
        layout: tokens the head reads at its exit.
        num_labels: number of classes K.
        num_heads: attention heads of `self_attention` and `vit` heads (global aggregation heads use 8).
        intermediate_size: MLP width of the `vit` head's transformer layer.
        layer_norm_eps: epsilon of the heads' LayerNorms.
    """
    if head_type == "linear":
        return build_linear_head(layout, num_labels, layer_norm_eps)
    if head_type == "vit":
        return TransformerLayerHead(layout, num_labels, num_heads, intermediate_size, layer_norm_eps)
    return MixerHead(head_type, layout, num_labels, num_heads, layer_norm_eps)
