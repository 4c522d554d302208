"""Argument files: JSON or YAML mappings of argument names to values (the presets in `configs/`)."""

from __future__ import annotations

import json
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
