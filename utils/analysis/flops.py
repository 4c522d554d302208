"""FLOPs of a classifier with exits, per part, counted by torch's own `FlopCounterMode`.

The parts are the adapter's steps (`embed`, each `run_layer`, each exit head, `final_logits`), counted once at
batch size 1 on the model's input size. Every part here is linear in the batch size (attention is quadratic in the
tokens of one image, not in the batch), so the cost of a batch is the sum of its samples' costs.

What is counted: `FlopCounterMode` counts matrix products and convolutions only (2 FLOPs per multiply-add);
softmax, normalisation, activations, pooling and element-wise ops count 0. On CPU, `scaled_dot_product_attention`
dispatches to `aten._scaled_dot_product_flash_attention_for_cpu`, which torch 2.14's counter does not know (it
would count 0); `flop_counter()` maps it to torch's own SDPA formula (`sdpa_flop_count`: 2 matrix products,
4*B*heads*N_q*N_k*d), so eager and SDPA attention count the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from models.early_exit_config import as_pair


def _cpu_sdpa_flops(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: Any,
                    out_val: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(tuple(query.shape), tuple(key.shape), tuple(value.shape))


_cpu_sdpa_flops._get_raw = True  # FlopCounterMode passes the tensors themselves, not their shapes
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def flop_counter() -> FlopCounterMode:
    """A silent `FlopCounterMode` that also counts CPU SDPA attention."""
    return FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)


def count_flops(function: Callable[..., Any], *args: Any) -> tuple[int, Any]:
    """(FLOPs, result) of `function(*args)` under `flop_counter()`, without autograd."""
    with torch.no_grad(), flop_counter() as counter:
        result = function(*args)
    return counter.get_total_flops(), result


@dataclass(frozen=True)
class FlopsProfile:
    """Per-sample FLOPs of each part of a classifier with exits.

    Attributes:
        embedding: patch embedding (and position/prefix tokens).
        blocks: one entry per backbone block, in order (a Swin stage's last block includes its patch merging).
        exits: one entry per exit head, in position order.
        final_head: the final classifier (final norm and classifier(s)).
        exit_layers: 1-based layer each exit reads.
        exit_parameters: parameter count of each exit head.
    """

    embedding: int
    blocks: tuple[int, ...]
    exits: tuple[int, ...]
    final_head: int
    exit_layers: tuple[int, ...]
    exit_parameters: tuple[int, ...]

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def full_model(self) -> int:
        """The backbone with its final classifier only (no exit heads): the reference of every FLOPs speed-up."""
        return self.embedding + sum(self.blocks) + self.final_head

    @property
    def head_parameters(self) -> int:
        return sum(self.exit_parameters)

    def exit_costs(self) -> torch.Tensor:
        """(E + 1,) float64: FLOPs of a sample that leaves at exit k (entry k), or answers at the final head (E).

        Leaving at exit k costs the embedding, the blocks up to its layer and the heads of exits 0..k; reaching the
        end costs everything: all blocks, all exit heads and the final head.
        """
        blocks = torch.tensor((0,) + self.blocks, dtype=torch.float64).cumsum(0)
        heads = torch.tensor(self.exits, dtype=torch.float64).cumsum(0)
        at_exit = self.embedding + blocks[list(self.exit_layers)] + heads
        total = self.embedding + blocks[-1] + heads[-1:].sum() + self.final_head
        return torch.cat([at_exit, total.reshape(1)])

    def flops_at_exits(self, exit_index: torch.Tensor) -> torch.Tensor:
        """Per-sample FLOPs from the index each sample left at: 0..E-1 an exit, E the final classifier."""
        return self.exit_costs()[exit_index.long().cpu()]

    def flops_at_layers(self, exit_layer: torch.Tensor) -> torch.Tensor:
        """Per-sample FLOPs from the 1-based exit layers a model reports.

        The full depth means the final classifier answered (the models' convention), so a sample that left at an
        exit on the very last layer is charged the final head too (a few FLOPs too many). Any other layer must
        carry an exit.
        """
        layer_to_index = torch.full((self.num_blocks + 1,), -1, dtype=torch.long)
        layer_to_index[list(self.exit_layers)] = torch.arange(len(self.exit_layers))
        layer_to_index[self.num_blocks] = len(self.exit_layers)
        index = layer_to_index[exit_layer.long().cpu()]
        if (index < 0).any():
            raise ValueError(f"Exit layers {sorted(set(exit_layer[index < 0].tolist()))} carry no exit; exits are at "
                             f"layers {list(self.exit_layers)} (and {self.num_blocks} for the final classifier).")
        return self.flops_at_exits(index)

    def expected_flops(self, exit_layer: torch.Tensor) -> float:
        """Average per-sample FLOPs of samples that left at `exit_layer` (1-based, as `flops_at_layers`)."""
        return float(self.flops_at_layers(exit_layer).mean())

    def flops_speedup(self, exit_layer: torch.Tensor) -> float:
        """Full-model FLOPs / average per-sample FLOPs at these exit layers."""
        return self.full_model / self.expected_flops(exit_layer)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values.update(full_model=self.full_model, head_parameters=self.head_parameters)
        return values


def input_shape(config: Any) -> tuple[int, int, int]:
    """(channels, height, width) of the model's images, from `num_channels` and `image_size`."""
    height, width = as_pair(config.image_size)
    return getattr(config, "num_channels", 3), int(height), int(width)


def profile_flops(model: nn.Module) -> FlopsProfile:
    """Count every part of `model` (any backbone with the adapter methods) at batch size 1.

    The model runs in eval mode on one random image of its configured size and is put back in its former mode.
    """
    was_training = model.training
    model.eval()
    try:
        parameter = next(model.parameters())
        image = torch.randn(1, *input_shape(model.config), device=parameter.device)
        exit_after = model.exit_after_layer()
        embedding, hidden = count_flops(model.embed, image)
        blocks, exits = [], [0] * len(model.exits)
        for index in range(model.config.num_blocks):
            flops, (tapped, hidden) = count_flops(model.run_layer, index, hidden)
            blocks.append(flops)
            if index in exit_after:
                exits[exit_after[index]] = count_flops(model.exits[exit_after[index]], tapped)[0]
        final_head = count_flops(model.final_logits, hidden)[0]
    finally:
        model.train(was_training)
    layers = sorted(exit_after, key=exit_after.get)
    return FlopsProfile(
        embedding=embedding,
        blocks=tuple(blocks),
        exits=tuple(exits),
        final_head=final_head,
        exit_layers=tuple(layer + 1 for layer in layers),
        exit_parameters=tuple(sum(p.numel() for p in head.parameters()) for head in model.exits),
    )
