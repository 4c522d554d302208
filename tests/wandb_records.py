"""Reading an offline wandb run directory back: the records of its `.wandb` file and the tables it wrote.

A `.wandb` file is a 7-byte header (":W&B", 0xBEE1, version 0) followed by protobuf `Record`s framed as a LevelDB
log: 32 KiB blocks of chunks, each with a 7-byte header (CRC32, length, type: 1 full, 2 first, 3 middle, 4 last); a
block's tail shorter than a chunk header is padding.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), path
    found, pending, position = [], b"", 7
    while position + HEADER.size <= len(data):
        if BLOCK - position % BLOCK < HEADER.size:
            position += BLOCK - position % BLOCK
            continue
        _, length, kind = HEADER.unpack_from(data, position)
        position += HEADER.size
        pending += data[position:position + length]
        position += length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            found.append(record)
            pending = b""
        elif kind not in (FIRST, MIDDLE):
            pending = b""  # zero padding at the end of a block
    return found


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    """What an offline run directory holds: the run's labels and config, its history rows, its files."""

    directory: Path
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def values(self, key: str) -> list[Any]:
        """Every logged value of `key`, in order."""
        return [row[key] for row in self.history if key in row]

    def table(self, key: str) -> dict[str, Any]:
        """The last table logged under `key`, read from its media file: {"columns": [...], "data": [[...], ...]}."""
        return json.loads((self.directory / "files" / self.values(f"{key}/path")[-1]).read_text())


def read_offline_run(directory: Path) -> OfflineRun:
    run = OfflineRun(directory)
    for record in records(next(directory.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.group, run.job_type, run.name = record.run.run_group, record.run.job_type, record.run.display_name
            run.tags = list(record.run.tags)
            run.config.update({_key(item): json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            run.config.update({_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            run.history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
    return run


def offline_runs(wandb_dir: Path) -> dict[str, OfflineRun]:
    """Every offline run under `wandb_dir`/wandb, by run name."""
    runs = [read_offline_run(directory) for directory in sorted((wandb_dir / "wandb").glob("offline-run-*"))]
    return {run.name: run for run in runs}
