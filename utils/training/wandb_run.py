"""The wandb run of one `run_classification.py` stage, labelled so that one project page compares the methods.

- group `<backbone>-<dataset>-<method>` (the stages of one method together), job type the stage, and the tags
  backbone, dataset, method and stage;
- backbone: the configuration's (`ViT`, `DeiT`, `Swin`); dataset: the last part of `--dataset_name`, or the folder
  above `--train_dir` / `--validation_dir` (`data/flowers/train` -> `flowers`), as the launchers name it;
- method: the `configs/methods/` preset among the argument files; without one (stage 2, evaluation, a hand-made
  command line), the preset whose head type, exit criterion and training strategy the configuration has (a stage-2
  configuration holds its stage-2 strategy, so there the head type and the criterion decide); `no-exits` for a model
  without exits, `custom` when no preset or several fit;
- stage: `base` (training without exits), `stage1`, `stage2` (backbone frozen) or `eval` (no training);
- the run's config also holds `run_labels`, the settings of every argument file (`argument_files`) and the code
  version (`code_version`: git commit, and whether tracked files differ from it); the Trainer's wandb callback adds
  the training arguments and the model configuration.
The project is `WANDB_PROJECT` (the launchers set it), else `LGViT_<backbone>_<dataset>`, the launchers' default.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import PretrainedConfig

from utils.arguments import DataTrainingArguments, TrainingArguments, read_argument_file

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
METHODS_DIR = ROOT / "configs" / "methods"
# What the configuration says of a method; a stage-2 configuration holds the stage-2 strategy instead.
METHOD_FIELDS = ("highway_type", "exit_strategy", "train_strategy")


@dataclass(frozen=True)
class RunLabels:
    """What a run is: backbone, dataset, method and stage."""

    backbone: str
    dataset: str
    method: str
    stage: str

    @property
    def group(self) -> str:
        return f"{self.backbone}-{self.dataset}-{self.method}"

    @property
    def tags(self) -> list[str]:
        return [self.backbone, self.dataset, self.method, self.stage]


def dataset_label(data_args: DataTrainingArguments) -> str:
    """The dataset's short name: `Maysee/tiny-imagenet` -> `tiny-imagenet`, `data/flowers/train` -> `flowers`."""
    if data_args.dataset_name:
        return data_args.dataset_name.rstrip("/").split("/")[-1]
    folder = Path(data_args.train_dir or data_args.validation_dir).resolve()
    return folder.parent.name or folder.name


def stage_label(config: PretrainedConfig, training_args: TrainingArguments) -> str:
    if not training_args.do_train:
        return "eval"
    if not config.num_exits:
        return "base"
    return "stage2" if config.frozen_backbone else "stage1"


def method_label(config: PretrainedConfig, files: list[str]) -> str:
    """The method (see the module docstring)."""
    for path in files:
        if Path(path).resolve().is_relative_to(METHODS_DIR):
            return Path(path).stem
    if not config.num_exits:
        return "no-exits"
    fields = METHOD_FIELDS[:2] if config.frozen_backbone else METHOD_FIELDS
    matches = [path.stem for path in sorted(METHODS_DIR.glob("*.yaml"))
               if all(read_argument_file(path).get(name) == getattr(config, name) for name in fields)]
    return matches[0] if len(matches) == 1 else "custom"


def run_labels(config: PretrainedConfig, data_args: DataTrainingArguments, training_args: TrainingArguments,
               files: list[str]) -> RunLabels:
    """Backbone, dataset, method and stage of a run with this configuration, these arguments and argument files."""
    return RunLabels(config.backbone, dataset_label(data_args), method_label(config, files),
                     stage_label(config, training_args))


def code_version() -> dict[str, Any]:
    """{"commit": the checkout's git commit, "dirty": whether tracked files differ from it}; None values outside a
    git checkout."""
    try:
        commit = _git("rev-parse", "HEAD")
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def reports_to_wandb(training_args: TrainingArguments) -> bool:
    return "wandb" in (training_args.report_to or [])


@contextmanager
def wandb_run(labels: RunLabels, training_args: TrainingArguments, files: list[str]) -> Iterator[None]:
    """Within the block, the main process has an active wandb run with these labels (when the run reports to wandb);
    it is finished at the end, so a later run in the same process starts its own."""
    if not reports_to_wandb(training_args) or training_args.process_index != 0:
        yield
        return
    import wandb

    config = {"run_labels": asdict(labels), "code_version": code_version(),
              "argument_files": [{"file": _shown(path), "settings": read_argument_file(path)} for path in files]}
    init_run(project=os.environ.get("WANDB_PROJECT") or f"LGViT_{labels.backbone}_{labels.dataset}",
             name=training_args.run_name, group=labels.group, job_type=labels.stage, tags=labels.tags, config=config)
    logger.info("wandb run %s: group %s, tags %s.", wandb.run.name, labels.group, labels.tags)
    try:
        yield
    finally:
        wandb.finish()


def init_run(**fields: Any) -> Any:
    """`wandb.init(**fields)` in the directory and mode the environment names now (`WANDB_DIR`, `WANDB_MODE`, e.g.
    the offline fallback of `utils.training.logging_setup`): wandb reads them once per process otherwise, so a
    second run in the same process would follow the first one's."""
    import wandb

    environment = {"dir": os.environ.get("WANDB_DIR"), "mode": os.environ.get("WANDB_MODE")}
    return wandb.init(**{name: value for name, value in environment.items() if value}, **fields)


def _shown(path: str) -> str:
    """`path` relative to the repository when it lies inside it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path
