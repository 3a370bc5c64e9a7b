"""Reading what W&B wrote offline, and a W&B setup with no credentials, for the tests that log to W&B."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest


def without_wandb_credentials(mp: pytest.MonkeyPatch, home: Path, wandb_dir: Path) -> None:
    """No key, no mode, no project, no ~/.netrc; whatever the code under test sets is undone afterwards."""
    for name in [name for name in os.environ if name.startswith("WANDB_")]:
        mp.delenv(name)
    for name in ("WANDB_MODE", "WANDB_PROJECT", "WANDB_API_KEY"):
        mp.setenv(name, "")  # records the variable's prior state (unset), so teardown removes what main() adds
        mp.delenv(name)
    home.mkdir(parents=True, exist_ok=True)
    mp.setenv("HOME", str(home))
    mp.setenv("WANDB_DIR", str(wandb_dir))


def wandb_records(run_dir: Path, timeout: float = 30.0) -> list:
    """Every record of a finished offline run's `.wandb` file, as `wandb_internal_pb2.Record` messages.

    The file is a 7-byte header (":W&B", magic 0xBEE1, version 0) followed by LevelDB-log framing:
    32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first,
    3 middle, 4 last). wandb 0.31 ships no Python reader for it (its Go core writes it), and
    `wandb.finish()` returns before the core has flushed the file: wait for the run's exit record.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        records = _parse_wandb_log(run_dir)
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            return records
        assert time.monotonic() < deadline, f"{run_dir}: no exit record within {timeout} s (run not finished?)"
        time.sleep(0.1)


def _parse_wandb_log(run_dir: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("*.wandb")
    data = path.read_bytes()
    assert data[:7] == b":W&B" + struct.pack("<HB", 0xBEE1, 0), f"{path}: not a W&B record log"
    records, position, block, pending = [], 7, 32768, b""
    while position + 7 <= len(data):
        left_in_block = block - position % block
        if left_in_block < 7:  # a block's zero-filled trailer
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if position + 7 + length > len(data):  # still being written
            break
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records
