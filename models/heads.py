"""Exit head modules ("highways" in the original code). Head types and layouts are parsed in `models.head_types`.

Every head maps the raw output of one backbone block, a token sequence (B, N, C), to `(logits, feature)`:
`logits` (B, K) are the exit's prediction and `feature` is what self-distillation compares (stage 2). Each head
says which kind of feature it hands out in `feature_kind`, so the stage-2 loss follows from the heads:
- `tokens`: token-level features (B, N', C) of the convolution and attention heads on ViT/DeiT;
- `pooled`: one vector per sample (B, C) (Swin heads, the ViT `linear` head);
- `prefix`: the normalised prefix tokens (B, T, C) of the DeiT `linear` head.
A head learns the token layout (prefix tokens, patch grid, width) from a `TokenLayout` given by the backbone,
never from hard-coded sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.deit.configuration_deit import DeiTConfig
from transformers.models.deit.modeling_deit import DeiTAttention, DeiTLayer

from .head_types import HeadSpec

TOKENS, POOLED, PREFIX = "tokens", "pooled", "prefix"


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


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) patch tokens -> (B, C, H, W) feature map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def map_to_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature map -> (B, H*W, C) tokens."""
    return feature_map.flatten(2).transpose(1, 2)


def sample_grid(tokens: torch.Tensor, grid: tuple[int, int], ratio: int) -> torch.Tensor:
    """Keep every `ratio`-th patch in both directions (the original's AvgPool2d(kernel 1, stride ratio)), picked by
    index so that an exported graph does it in one step."""
    if ratio == 1:
        return tokens
    kept = torch.arange(grid[0] * grid[1], device=tokens.device).reshape(grid)[::ratio, ::ratio].flatten()
    return tokens.index_select(1, kept)


def mean_of_classifiers(tokens: torch.Tensor, classifiers: nn.ModuleList) -> torch.Tensor:
    """The mean over t of `classifiers[t](tokens[:, t])` for tokens (B, T, C).

    A mean of linear maps is one linear map on the concatenated tokens, so this is a single matrix product.
    """
    weight = torch.cat([classifier.weight for classifier in classifiers], dim=1) / len(classifiers)
    bias = torch.stack([classifier.bias for classifier in classifiers]).mean(0)
    return F.linear(tokens.flatten(1), weight, bias)


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

    No residual and no norm, as in the paper's head. The scale is (C / heads) ** -0.5. The attention is written out:
    over this few tokens it is as fast as a fused kernel, and an exported graph holds two plain matrix products.
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
        head_width = width // self.num_heads
        # (B, L, 3 * heads, D) -> (B, 3 * heads, L, D) -> query, key and value, (B, heads, L, D) each
        query, key, value = (self.qkv(tokens).reshape(batch, length, 3 * self.num_heads, head_width)
                             .transpose(1, 2).chunk(3, dim=1))
        attended = (query @ key.transpose(-2, -1) * head_width**-0.5).softmax(-1) @ value
        return self.proj(attended.transpose(1, 2).reshape(batch, length, width))


class SelfAttentionMixer(nn.Module):
    """`self_attention`: transformers' DeiT multi-head attention over the patch tokens (no norm, no residual)."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        config = DeiTConfig(hidden_size=width, num_attention_heads=num_heads, attn_implementation="sdpa")
        self.attention = DeiTAttention(config)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.attention(tokens)[0]


def build_mixer(spec: HeadSpec, width: int, num_heads: int) -> nn.Module:
    """The token mixer of a convolution or attention head type."""
    if spec.family == "global":
        return GlobalAggregationMixer(width, spec.ratio)
    if spec.name == "conv_normal":
        return ConvNormalMixer(width)
    if spec.family == "local":
        return LocalPerceptionMixer(width, depthwise=spec.name == "conv1_1")
    if spec.family == "self_attention":
        return SelfAttentionMixer(width, num_heads)
    raise ValueError(f"{spec.name!r} has no token mixer.")


class PoolerHead(nn.Module):
    """`linear` head of a one-prefix-token (ViT) backbone: tanh pooler on the cls token, then a classifier.

    Feature: the pooled vector (B, C).
    """

    feature_kind = POOLED

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

    feature_kind = PREFIX

    def __init__(self, width: int, num_labels: int, num_prefix_tokens: int, layer_norm_eps: float):
        super().__init__()
        self.layernorm = nn.LayerNorm(width, eps=layer_norm_eps)
        self.classifiers = nn.ModuleList(nn.Linear(width, num_labels) for _ in range(num_prefix_tokens))

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = self.layernorm(hidden[:, : len(self.classifiers)])
        return mean_of_classifiers(prefix, self.classifiers), prefix


class NormMeanHead(nn.Module):
    """`linear` head of a backbone without prefix tokens (Swin): LayerNorm, token mean, classifier.

    Feature: the pooled vector (B, C).
    """

    feature_kind = POOLED

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

    def __init__(self, spec: HeadSpec, layout: TokenLayout, num_labels: int, num_heads: int, layer_norm_eps: float):
        super().__init__()
        self.layout = layout
        self.mlp = build_mixer(spec, layout.width, num_heads)
        if layout.num_prefix_tokens:
            self.feature_kind = TOKENS
            self.classifiers = nn.ModuleList(nn.Linear(layout.width, num_labels)
                                             for _ in range(layout.num_prefix_tokens))
        else:
            self.feature_kind = POOLED
            self.readout = NormMeanHead(layout.width, num_labels, layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num_prefix = self.layout.num_prefix_tokens
        mixed = self.mlp(hidden[:, num_prefix:], self.layout.grid)
        if not num_prefix:
            return self.readout(mixed)
        return mean_of_classifiers(hidden[:, :num_prefix] + mixed.mean(1, keepdim=True), self.classifiers), mixed


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
        self.feature_kind = self.classifier.feature_kind

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.classifier(self.layer(hidden))


def build_exit_head(spec: HeadSpec, layout: TokenLayout, num_labels: int, num_heads: int, intermediate_size: int,
                    layer_norm_eps: float) -> nn.Module:
    """Build one exit head.

    Args:
        spec: the head type (`models.head_types.parse_head_type`; `LGViT` is expanded into its layout first).
        layout: tokens the head reads at its exit.
        num_labels: number of classes K.
        num_heads: attention heads of `self_attention` and `vit` heads (global aggregation heads use 8).
        intermediate_size: MLP width of the `vit` head's transformer layer.
        layer_norm_eps: epsilon of the heads' LayerNorms.
    """
    if spec.family == "linear":
        return build_linear_head(layout, num_labels, layer_norm_eps)
    if spec.family == "vit":
        return TransformerLayerHead(layout, num_labels, num_heads, intermediate_size, layer_norm_eps)
    return MixerHead(spec, layout, num_labels, num_heads, layer_norm_eps)
