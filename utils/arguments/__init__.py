"""The command-line arguments of `run_classification.py`, in four groups (model, data, analysis, training) that the
layers above read, and their parsing. This package sits below `utils.data`, `utils.training` and `utils.analysis`,
so each of them can read its own group without importing another layer.

The names below load on first use, so the launchers' light helpers (`files`, `precision`, `batch_split`, `workers`)
import without transformers.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "AnalysisArguments": "utils.arguments.analysis",
    "DataTrainingArguments": "utils.arguments.data",
    "ModelArguments": "utils.arguments.model",
    "MODEL_CONFIG_FIELDS": "utils.arguments.model",
    "parse_literal": "utils.arguments.model",
    "ARGUMENT_CLASSES": "utils.arguments.parsing",
    "parse_arguments": "utils.arguments.parsing",
    "argument_files": "utils.arguments.files",
    "read_argument_file": "utils.arguments.files",
    "TrainingArguments": "utils.arguments.training",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'utils.arguments' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
