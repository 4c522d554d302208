"""Stopping a training run early on a signal, with a checkpoint to resume from.

A cluster that is about to end a job (a time limit, a pre-emption) warns it with a signal: SIGUSR1 or SIGTERM.
`StopOnSignal` then has the Trainer save a checkpoint at the end of an optimizer step and stop; the process exits
with `REQUEUE_EXIT_CODE`, which asks the launcher to run the same command again later (it resumes from that
checkpoint, see `utils.training.checkpoints`).

With several processes every one must stop after the same step, although each receives the signal at its own
point of a step (torchrun forwards SIGTERM to every worker; some may get none). They agree through the process
group's key-value store on the host (no device synchronisation): at every step end each process writes the step
it reached, and reads whether a stop was asked. The first process with a signal claims the stop and sets it one
step past the furthest step any process has reported; a process that found no claim had reported its step before
looking, so the stop step is still ahead of it, and it sees the claim at its next step end.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

logger = logging.getLogger(__name__)

# "Temporary failure, try again" (EX_TEMPFAIL): the run stopped on a signal after saving a checkpoint.
REQUEUE_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopOnSignal(TrainerCallback):
    """Save a checkpoint and stop training at an optimizer step end after SIGUSR1 or SIGTERM (see the module
    docstring). `stopped` tells whether training ended that way, before its last step; its signal handlers are
    installed from the start of training to its end only."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.stopped = False
        self.stop_step: int | None = None
        self._previous: dict[int, Any] = {}
        self._runs = 0

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum

    def install(self) -> None:
        """Catch the stop signals (from the main thread only, where Python delivers them)."""
        if threading.current_thread() is threading.main_thread() and not self._previous:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    def restore(self) -> None:
        """Give the stop signals back to the handlers they had before training."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        """A new training run: no signal yet, and the handlers installed."""
        self.received, self.stopped, self.stop_step = None, False, None
        self._runs += 1
        self.install()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        """Training ended: the handlers given back."""
        self.restore()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        """Save and stop once this step is the one the processes agreed to stop after."""
        if self.stop_step is None:
            self.stop_step = self._agreed_stop_step(args, state.global_step)
        if self.stop_step is None or state.global_step < self.stop_step:
            return
        control.should_save = True
        control.should_training_stop = True
        self.stopped = state.global_step < state.max_steps
        if self.stopped:
            cause = signal.Signals(self.received).name if self.received else "another process's"
            logger.warning("Stopping after step %d on a signal (%s): saving a checkpoint to resume from.",
                           state.global_step, cause)

    def _agreed_stop_step(self, args: TrainingArguments, step: int) -> int | None:
        """The step every process stops after, once a process received a signal; None while none did."""
        store = _shared_store(args)
        if store is None:
            return step if self.received is not None else None
        prefix = f"lgvit_stop/{self._runs}"
        store.set(f"{prefix}/at/{args.process_index}", str(step))
        if self.received is not None and store.add(f"{prefix}/claims", 1) == 1:
            furthest = max(int(store.get(f"{prefix}/at/{rank}")) for rank in range(args.world_size))
            store.set(f"{prefix}/stop", str(furthest + 1))
        if not store.check([f"{prefix}/claims"]):
            return None
        return int(store.get(f"{prefix}/stop"))  # waits the moment the claiming process needs to set it


def _shared_store(args: TrainingArguments) -> Any:
    """The process group's key-value store on the host, or None in a single-process run."""
    if args.world_size == 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    return torch.distributed.distributed_c10d._get_default_store()
