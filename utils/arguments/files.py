"""Argument files: JSON or YAML mappings of argument names to values (the presets in `configs/`)."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ARGUMENT_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def read_argument_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML file of arguments into a dict."""
    text = Path(path).read_text(encoding="utf-8")
    values = yaml.safe_load(text) if str(path).endswith((".yaml", ".yml")) else json.loads(text)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values.")
    return values


def argument_files(args: list[str] | dict[str, Any] | None = None) -> list[str]:
    """The JSON/YAML files a command line starts with (`parse_arguments` reads them); none for a dict."""
    if isinstance(args, dict):
        return []
    argv = list(sys.argv[1:] if args is None else args)
    return list(itertools.takewhile(lambda argument: argument.endswith(ARGUMENT_FILE_SUFFIXES), argv))
