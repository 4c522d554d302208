"""Head types parsed once into specs, the LGViT layouts, the Swin per-stage layout as pure functions, and the kind of
feature each head hands to stage-2 distillation."""

import pytest
import torch

from models.head_types import HeadSpec, expand_head_types, lgvit_layout, parse_head_type, swin_lgvit_layout
from models.heads import POOLED, PREFIX, TOKENS, TokenLayout, build_exit_head
from models.swin_layout import default_stage_positions, exit_stages, global_layers, stage_grids, stage_widths


@pytest.mark.parametrize("name, family, ratio", [
    ("linear", "linear", None), ("conv_normal", "local", None), ("conv1_1", "local", None),
    ("conv2_1", "local", None), ("attention_r1", "global", 1), ("attention_r12", "global", 12),
    ("self_attention", "self_attention", None), ("vit", "vit", None),
])
def test_head_types_parse_into_specs(name, family, ratio):
    spec = parse_head_type(name)
    assert spec == HeadSpec(name, family, ratio)
    assert spec.distillation_group == (family if family in ("local", "global") else None)


@pytest.mark.parametrize("name", ["attention", "attention_r0", "conv3_1", "LGViT", "Linear"])
def test_other_names_are_refused_with_the_allowed_ones(name):
    with pytest.raises(ValueError, match="allowed values: linear, conv_normal"):
        parse_head_type(name)


def test_lgvit_expands_into_its_layout_per_backbone():
    assert [s.name for s in expand_head_types("LGViT", 4)] == ["conv1_1", "conv2_1", "attention_r2", "attention_r3"]
    assert [s.name for s in expand_head_types("LGViT", 4, swin=True)] == ["conv1_1", "conv2_1", "attention_r1",
                                                                          "attention_r2"]
    assert expand_head_types("conv1_1", 3) == [HeadSpec("conv1_1", "local")] * 3
    assert swin_lgvit_layout(8) == ["conv1_1", "conv1_1", "conv2_1", "conv2_1", "attention_r1", "attention_r1",
                                    "attention_r2", "attention_r2"]
    assert lgvit_layout(5) == ["conv1_1", "conv2_1", "attention_r2", "attention_r2", "attention_r3"]


@pytest.mark.parametrize("prefix, head, kind, shape", [
    (1, "linear", POOLED, (2, 16)), (2, "linear", PREFIX, (2, 2, 16)), (0, "linear", POOLED, (2, 16)),
    (1, "conv1_1", TOKENS, (2, 16, 16)), (2, "attention_r2", TOKENS, (2, 4, 16)), (0, "conv2_1", POOLED, (2, 16)),
    (0, "attention_r1", POOLED, (2, 16)), (1, "vit", POOLED, (2, 16)), (2, "vit", PREFIX, (2, 2, 16)),
    (2, "self_attention", TOKENS, (2, 16, 16)),
])
def test_every_head_says_which_feature_it_hands_out(prefix, head, kind, shape):
    module = build_exit_head(parse_head_type(head), TokenLayout(16, prefix, (4, 4)), num_labels=3, num_heads=2,
                             intermediate_size=32, layer_norm_eps=1e-6)
    logits, feature = module(torch.randn(2, prefix + 16, 16))
    assert module.feature_kind == kind and logits.shape == (2, 3) and tuple(feature.shape) == shape


def test_swin_b_default_layout_is_the_papers():
    positions = default_stage_positions([0, 1, 6, 1], [2, 2, 18, 2])
    assert positions == [[], [2], [3, 6, 9, 12, 15, 18], [1]]
    assert global_layers(positions, [2, 2, 18, 2]) == [4, 7, 10, 13, 16, 19, 22, 23]
    assert exit_stages([0, 1, 6, 1]) == [1, 2, 2, 2, 2, 2, 2, 3]


@pytest.mark.parametrize("counts, depths, positions", [
    ([1, 2, 1], [2, 3, 2], [[2], [2, 3], [1]]),  # the last stage keeps its last block for the final classifier
    ([0, 3, 0], [2, 6, 2], [[], [2, 4, 6], []]),
    ([2, 0, 2], [4, 2, 5], [[2, 4], [], [2, 4]]),
])
def test_default_positions_spread_each_stage(counts, depths, positions):
    assert default_stage_positions(counts, depths) == positions
    layers = global_layers(positions, depths)
    assert layers == sorted(layers) and len(layers) == sum(counts)


def test_stage_grids_and_widths():
    assert stage_grids((224, 224), (4, 4), 4) == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert stage_grids((30, 18), (4, 4), 3) == [(8, 5), (4, 3), (2, 2)]  # padding rounds up, as transformers' Swin
    assert stage_widths(128, 4) == [128, 256, 512, 1024]
