"""FLOPs counting: a transformer block against the analytic count, per-part profiles, per-sample costs."""

import pytest
import torch
import torch.nn.functional as F
from analysis_helpers import images, spread_confidence_thresholds, synthetic_profile, tiny_model
from torch.utils.flop_counter import FlopCounterMode
from transformers import DeiTConfig
from transformers.models.deit.modeling_deit import DeiTLayer

from utils.analysis.flops import count_flops, profile_flops


def analytic_block_flops(batch: int, tokens: int, width: int, intermediate: int) -> int:
    """qkv projections + the two attention matrix products + output projection + the two MLP layers."""
    b, n, c, i = batch, tokens, width, intermediate
    return 2 * b * n * c * 3 * c + 2 * 2 * b * n * n * c + 2 * b * n * c * c + 2 * 2 * b * n * c * i


def test_bare_counter_misses_cpu_sdpa_which_we_count():
    query = torch.randn(2, 4, 17, 8)
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(query, query, query)
    assert counter.get_total_flops() == 0  # torch 2.14 has no formula for the CPU kernel
    assert count_flops(F.scaled_dot_product_attention, query, query, query)[0] == 2 * 2 * 2 * 4 * 17 * 17 * 8


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_transformer_block_matches_the_analytic_count(attention):
    config = DeiTConfig(hidden_size=64, num_attention_heads=4, intermediate_size=96, attn_implementation=attention)
    block = DeiTLayer(config).eval()
    hidden = torch.randn(3, 17, 64)
    flops, _ = count_flops(block, hidden)
    assert flops == analytic_block_flops(3, 17, 64, 96)


def test_profile_parts_add_up_to_a_full_pass():
    model = tiny_model()
    profile = profile_flops(model)
    assert profile.num_blocks == 6 and len(profile.exits) == 6 and profile.exit_layers == (1, 2, 3, 4, 5, 6)
    tokens = 2 + 16  # cls and distillation tokens + a 4x4 patch grid
    assert profile.blocks == (analytic_block_flops(1, tokens, 32, 48),) * 6
    assert profile.embedding == 2 * 16 * 32 * (3 * 4 * 4)  # the patch convolution
    assert profile.final_head == 2 * 2 * 32 * 5  # two linear classifiers (cls and distillation)
    assert profile.head_parameters == sum(p.numel() for p in model.exits.parameters())
    everything, _ = count_flops(lambda x: model(x, early_exit=False), images(1))
    assert everything == profile.exit_costs()[-1]
    assert profile.full_model == everything - sum(profile.exits)


def test_per_sample_costs_equal_the_flops_of_an_early_exit_batch():
    model = tiny_model()
    pixel_values = images(16)
    model.config.exit_strategy = "confidence"
    model.config.threshold = spread_confidence_thresholds(model, pixel_values)
    profile = profile_flops(model)
    counted, outputs = count_flops(model, pixel_values)
    assert len(set(outputs.exit_layer.tolist())) > 2  # the samples spread over several exits
    assert profile.flops_at_layers(outputs.exit_layer).sum().item() == counted


def test_layer_helpers():
    profile = synthetic_profile(num_exits=3)  # 4 layers, exits on 1..3
    costs = profile.exit_costs().tolist()
    assert costs == [20 + 100 + 10, 20 + 200 + 20, 20 + 300 + 30, 20 + 400 + 30 + 5]
    assert profile.full_model == 20 + 400 + 5
    layers = torch.tensor([1, 4, 4, 2])
    assert profile.expected_flops(layers) == pytest.approx((130 + 455 + 455 + 240) / 4)
    assert profile.flops_speedup(layers) == pytest.approx(425 / ((130 + 455 + 455 + 240) / 4))
    with pytest.raises(ValueError, match="carry no exit"):
        profile.flops_at_layers(torch.tensor([0]))
