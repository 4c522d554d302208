"""The command-line arguments of `run_classification.py`, in four groups (model, data, analysis, training) that the
layers above read, and their parsing. This package sits below `utils.data`, `utils.training` and `utils.analysis`,
so each of them can read its own group without importing another layer."""

from utils.arguments.analysis import AnalysisArguments
from utils.arguments.data import DataTrainingArguments
from utils.arguments.model import MODEL_CONFIG_FIELDS, ModelArguments, parse_literal
from utils.arguments.parsing import ARGUMENT_CLASSES, argument_files, parse_arguments, read_argument_file
from utils.arguments.training import TrainingArguments

__all__ = [
    "ARGUMENT_CLASSES", "MODEL_CONFIG_FIELDS", "AnalysisArguments", "DataTrainingArguments", "ModelArguments",
    "TrainingArguments", "argument_files", "parse_arguments", "parse_literal", "read_argument_file",
]
