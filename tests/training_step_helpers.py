"""Training runs of tiny models through `ExitTrainer`, watched step by step: the host reads and the tensors made
from host data in chosen optimizer steps (a `TorchDispatchMode` that sees every operator), and the weights."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import TrainerCallback

from utils.arguments import DataTrainingArguments, TrainingArguments
from utils.data.image_dataset import ImageDataset, collate_fn
from utils.data.loading import load_datasets
from utils.data.transforms import Normalization, build_transforms
from utils.training.trainer import ExitTrainer

# What `.item()`, `int()`, `float()` and `bool()` of a tensor call, and what boolean-mask indexing calls (its result's
# size is known only once the device has counted): on a GPU, the host waits for the device.
HOST_READS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default}
INDEXING = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default}
# What `torch.tensor(<Python data>)` and `new_tensor` call: data made on the host (on a GPU, a copy to the device).
FROM_HOST = {torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default}


class HostTraffic(TorchDispatchMode):
    """Records where each host read and each tensor made from host data happens (the innermost project frame)."""

    def __init__(self, exempt: set[int]) -> None:
        super().__init__()
        self.exempt = exempt
        self.reads: list[str] = []
        self.from_host: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if (func in HOST_READS and id(args[0]) not in self.exempt) or (func in INDEXING and masked(args[1])):
            self.reads.append(caller())
        elif func in FROM_HOST:
            self.from_host.append(caller())
        return func(*args, **(kwargs or {}))


def masked(indices: list) -> bool:
    """Whether an indexing operator's indices hold a boolean mask (on the CPU it needs no `nonzero` operator)."""
    return any(index is not None and index.dtype == torch.bool for index in indices)


def caller() -> str:
    """The innermost frame outside torch itself (the project's or transformers' line that asked), as file:line."""
    frames = [frame for frame in traceback.extract_stack()
              if "/torch/" not in frame.filename and frame.filename != __file__]
    return f"{frames[-1].filename}:{frames[-1].lineno}"


class WatchSteps(TrainerCallback):
    """Watches the host traffic of the optimizer steps in `steps` (0-based), from the start of their first
    micro-batch to the end of their optimizer update: forward, backward, clipping, optimizer and scheduler. The
    optimizer's own step counters are exempt: on a GPU torch keeps them on the host on purpose."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps
        self.modes: list[HostTraffic] = []

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step in self.steps:
            counters = {id(value) for entry in optimizer.state.values() for name, value in entry.items()
                        if name == "step"}
            self.modes.append(HostTraffic(counters))
            self.modes[-1].__enter__()

    def on_step_end(self, args, state, control, **kwargs):
        if self.modes and state.global_step - 1 in self.steps:
            self.modes[-1].__exit__(None, None, None)


def digits_images(image_size: int, samples: int) -> ImageDataset:
    data = load_datasets(DataTrainingArguments(dataset_name="digits", max_train_samples=samples), seed=777)
    train_transform, _ = build_transforms(image_size, horizontal_flip=False, min_crop_scale=0.8)
    return ImageDataset(data["train"], train_transform, Normalization([0.5] * 3, [0.5] * 3), seed=777)


def train(model: torch.nn.Module, output_dir: Path, samples: int = 48, callbacks: tuple = (),
          **arguments: Any) -> ExitTrainer:
    """Train `model` on `samples` digits with the project's TrainingArguments (`arguments` override the short
    defaults here) and return the Trainer."""
    settings = dict(output_dir=str(output_dir), per_device_train_batch_size=8, learning_rate=1e-3, max_steps=4,
                    logging_steps=100, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
                    seed=777, dataloader_num_workers=0)
    settings.update(arguments)
    trainer = ExitTrainer(model=model, args=TrainingArguments(**settings),
                          train_dataset=digits_images(model.config.image_size, samples), data_collator=collate_fn,
                          normalization=Normalization([0.5] * 3, [0.5] * 3), callbacks=list(callbacks))
    trainer.train()
    return trainer
