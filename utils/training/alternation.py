"""One alternation of the `alternating*` strategies per optimizer step, whatever the gradient accumulation.

The model flips its `alternation_phase` at every training forward (the original's per-forward counter). Under
gradient accumulation that would mix both losses inside one optimizer step, and the number of micro-batches per step
changes with the process count (1 GPU: 64 x 3, 3 GPUs: 64 x 1), so the recipe would change with the hardware. This
callback pins the phase to the parity of the optimizer step before every micro-batch: identical to the original when
there is no accumulation, the same on any number of processes, and kept by a resumed run (the Trainer restores its
step count).
"""

from __future__ import annotations

from transformers import TrainerCallback


class StepAlternation(TrainerCallback):
    """Sets `model.alternation_phase` to `global_step % 2` before every training micro-batch."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        model.alternation_phase = state.global_step % 2

    # After a micro-batch that was not its step's last, the forward flipped the phase: pin it again.
    on_substep_end = on_step_begin
