"""Logging set-up and the wandb fallback to offline mode when no API key is configured."""

from __future__ import annotations

import logging
import netrc
import os
import sys
from urllib.parse import urlparse

import datasets
import transformers

logger = logging.getLogger(__name__)

OWN_LOGGERS = ("__main__", "run_classification", "utils", "models")


def setup_logging(training_args: transformers.TrainingArguments) -> None:
    """Our messages at INFO on the main process; transformers and datasets at `--log_level` (default: warnings)."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    library_level = training_args.get_process_log_level()
    own_level = logging.INFO if training_args.should_log else library_level
    if training_args.log_level != "passive":
        own_level = library_level
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(own_level)
    transformers.utils.logging.set_verbosity(library_level)
    datasets.utils.logging.set_verbosity(library_level)


def has_wandb_credentials() -> bool:
    """Whether wandb can log in: WANDB_API_KEY, or a ~/.netrc (NETRC) entry for the wandb host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def configure_wandb(report_to: list[str] | str | None) -> None:
    """With wandb reporting, no credentials and no WANDB_MODE, log offline instead of stopping the run."""
    targets = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if not ({"wandb", "all"} & set(targets)) or os.environ.get("WANDB_MODE") or has_wandb_credentials():
        return
    os.environ["WANDB_MODE"] = "offline"
    run_root = os.path.join(os.environ.get("WANDB_DIR", os.getcwd()), "wandb")
    logger.warning(
        "No wandb API key found (WANDB_API_KEY or ~/.netrc): logging offline to %s. Upload later with "
        "`wandb sync %s/offline-run-*`, or pass --report_to none (REPORT_TO=none in the scripts) to turn wandb off.",
        run_root, run_root,
    )
