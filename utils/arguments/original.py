"""The original LGViT scripts' arguments that this project renamed or no longer needs.

Every flag the original scripts passed is accepted. A renamed one is passed on under its new name, a meaningless one
is dropped, each with a one-line warning that says so; docs/original-scripts.md lists them. This happens before parsing,
so a renamed flag takes part in the usual checks (e.g. `--evaluation_strategy epoch` with
`--load_best_model_at_end`).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

RENAMED = {
    "evaluation_strategy": "eval_strategy",  # transformers' own rename
    "homo_loss_coefficient": "homo_coefficient",  # the original's configuration used these names
    "hete_loss_coefficient": "hete_coefficient",
}
IGNORED = {
    "train_highway": "the exit heads always train with the model (the original ignored this flag too)",
    "output_hidden_states": "the exits read the blocks' outputs themselves; no other use needs them",
    "use_auth_token": "the stored Hugging Face login is used by default; give another token with --token",
    "encoder_ensemble": "the original never used this field",
    "feature_loss_coefficient": "the original never defined this field; the feature losses use --homo_coefficient "
                                "and --hete_coefficient",
}


def _note(name: str) -> None:
    if name in RENAMED:
        logger.warning("--%s is the original's name of --%s; using it as such.", name, RENAMED[name])
    else:
        logger.warning("--%s is ignored: %s.", name, IGNORED[name])


def translate_arguments(argv: list[str]) -> list[str]:
    """A command line with the original's renamed flags renamed and its ignored flags (and their values) dropped."""
    translated, index = [], 0
    while index < len(argv):
        token = argv[index]
        index += 1
        name, equals, value = token[2:].partition("=") if token.startswith("--") else ("", "", "")
        if name in RENAMED:
            _note(name)
            translated.append(f"--{RENAMED[name]}{equals}{value}")
        elif name in IGNORED:
            _note(name)
            if not equals and index < len(argv) and not argv[index].startswith("--"):
                index += 1  # the flag's value
        else:
            translated.append(token)
    return translated


def translate_values(values: dict[str, Any]) -> dict[str, Any]:
    """The same for a mapping of argument names to values (argument files, dicts)."""
    translated = {}
    for name, value in values.items():
        if name in RENAMED or name in IGNORED:
            _note(name)
        if name in RENAMED:
            translated[RENAMED[name]] = value
        elif name not in IGNORED:
            translated[name] = value
    return translated
