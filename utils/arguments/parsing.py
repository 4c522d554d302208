"""Parsing the four argument groups from a command line (optionally starting with JSON/YAML files) or a dict."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

from transformers import HfArgumentParser

from utils.arguments.analysis import AnalysisArguments
from utils.arguments.data import DataTrainingArguments
from utils.arguments.files import argument_files, read_argument_file
from utils.arguments.model import ModelArguments
from utils.arguments.original import translate_arguments, translate_values
from utils.arguments.training import TrainingArguments

ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, AnalysisArguments, TrainingArguments)


def parse_arguments(
    args: list[str] | dict[str, Any] | None = None,
) -> tuple[ModelArguments, DataTrainingArguments, AnalysisArguments, TrainingArguments]:
    """Parse the arguments from a dict, or from a command line that may start with JSON/YAML files.

    Later files override earlier ones and command-line flags override the files:
    `run_classification.py configs/digits/stage1.yaml configs/methods/PABEE.yaml --seed 1`. The original scripts'
    renamed and retired flags are accepted (`utils.arguments.original`).
    """
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    if isinstance(args, dict):
        return parser.parse_dict(translate_values(args))
    files = argument_files(args)
    argv = translate_arguments(list(sys.argv[1:] if args is None else args)[len(files):])
    defaults: dict[str, Any] = {}
    known = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls) if f.init}
    for path in files:
        values = translate_values(read_argument_file(path))
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown arguments in {path}: {unknown}")
        defaults.update(values)
    # argparse does not apply `type` to defaults, so file values keep their JSON/YAML types.
    parser.set_defaults(**defaults)
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
