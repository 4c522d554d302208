"""Swin image classifiers with early exits, built on transformers' own Swin modules.

The backbone is transformers' `SwinModel` under the attribute `swin`, next to the final `classifier`, the names of
transformers' `SwinForImageClassification`: a plain Swin classification checkpoint (e.g.
microsoft/swin-base-patch4-window7-224) loads as backbone plus final classifier, and only the exit heads are new.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import SwinModel
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.models.swin.modeling_swin import SwinPreTrainedModel

from .configuration_highway_swin import SwinHighwayConfig
from .early_exit_model import EarlyExitMixin
from .heads import build_exit_head


class SwinHighwayPreTrainedModel(SwinPreTrainedModel):
    """transformers' Swin initialisation and loading settings, for `SwinHighwayConfig`."""

    config: SwinHighwayConfig
    config_class = SwinHighwayConfig
    # Checkpoints saved before the alternation phase left the state dict hold its old counter; it is not needed.
    _keys_to_ignore_on_load_unexpected = [r"^training_forwards$"]


class SwinHighwayForImageClassification(EarlyExitMixin, SwinHighwayPreTrainedModel):
    """Swin classifier with early-exit heads after chosen blocks.

    Differences from transformers' `SwinForImageClassification`:
    - blocks run one at a time (patch merging after a stage's last block) so exits can read each block's output
      before patch merging and samples can leave early (per sample, any batch size);
    - exit heads in `exits`, in layer order, each built for the width and grid of its stage;
    - exit layers count blocks over all stages, 1-based (Swin-B: 1..24).
    The final prediction is transformers' Swin head: `classifier` on the token mean of `swin.layernorm`'s output.
    """

    def __init__(self, config: SwinHighwayConfig):
        super().__init__(config)
        config.check()
        self.swin = SwinModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(self.swin.num_features, config.num_labels)
        self.exits = nn.ModuleList(
            build_exit_head(spec, layout, config.num_labels, config.num_heads[stage],
                            int(config.mlp_ratio * layout.width), config.layer_norm_eps)
            for spec, layout, stage in zip(config.head_specs(), config.exit_token_layouts(), config.exit_stages())
        )
        # Global block index -> (stage, block within the stage).
        self.block_index = [(stage, block) for stage, depth in enumerate(config.depths) for block in range(depth)]
        self.grids = config.stage_grids()
        self.post_init()
        self.apply_freezing()

    def frozen_modules(self) -> list[nn.Module]:
        return [self.swin, self.classifier]

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        embeddings = self.swin.embeddings
        hidden, grid = embeddings(pixel_values.to(embeddings.patch_embeddings.projection.weight.dtype))
        if tuple(grid) != self.grids[0]:
            raise ValueError(
                f"Images of {tuple(pixel_values.shape[-2:])} pixels give a {grid[0]}x{grid[1]} patch grid, but the "
                f"exit heads are built for `image_size`={self.config.image_size}; resize the images."
            )
        return hidden

    def run_layer(self, index: int, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run block `index`; after a stage's last block, the next input is the patch-merged output."""
        stage_index, block = self.block_index[index]
        stage, grid = self.swin.encoder.layers[stage_index], self.grids[stage_index]
        tapped = stage.blocks[block](hidden, grid)[0]
        if block == len(stage.blocks) - 1 and stage.downsample is not None:
            return tapped, stage.downsample(tapped, grid)
        return tapped, tapped

    def final_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """transformers' Swin head: final LayerNorm, token mean, classifier."""
        return self.classifier(self.swin.layernorm(hidden).mean(1))

    def teacher_tokens(self, hidden: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The last block's tokens after the final LayerNorm (their mean is what `classifier` reads) and grid."""
        return self.swin.layernorm(hidden), self.grids[-1]


# transformers maps the 4.x Swin names of saved checkpoints (attention.self.query, ...) to its 5.x modules by model
# type; this model type reuses that mapping, so plain Swin checkpoints load and saved ones keep the 4.x names.
register_checkpoint_conversion_mapping(SwinHighwayConfig.model_type, get_checkpoint_conversion_mapping("swin"),
                                       overwrite=True)
