"""`records.jsonl`: one JSON object per finished prompt, appended and synced as each finishes.

Opening the store reads what earlier runs finished, so a rerun skips those ids. A process
killed mid-write (even by SIGKILL) can leave at most one torn last line, because every record
is written with a single `write` of a complete line; that fragment is cut off before anything
is appended. A malformed line anywhere else is not ours to repair and stops the run with its
line number.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from spri_sft.errors import UserError

FSYNC_INTERVAL = 1.0  # seconds


class RecordStore:
    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        self.torn_bytes = 0
        self._synced = 0.0
        if path.exists():
            self._load()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a", encoding="utf-8")

    def _load(self) -> None:
        data = self.path.read_bytes()
        end = len(data)
        if data and not data.endswith(b"\n"):
            end = data.rfind(b"\n") + 1  # the torn fragment starts after the last full line
        lines = data[:end].split(b"\n")[:-1] if end else []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
                self.records[record["id"]] = record
            except (json.JSONDecodeError, KeyError, TypeError):
                if number == len(lines) and end == len(data):
                    # A complete but garbled last line: only a crash mid-write makes those.
                    end -= len(line) + 1
                    break
                raise UserError(f"{self.path}:{number}: not a valid record line; fix or remove it") from None
        if end < len(data):
            self.torn_bytes = len(data) - end
            with self.path.open("r+b") as handle:
                handle.truncate(end)

    def __contains__(self, record_id: str) -> bool:
        return record_id in self.records

    def append(self, record: dict) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        # flush() hands the line to the OS, which keeps it through a kill -9 of this process; fsync (for a
        # machine crash) costs milliseconds, so it runs at most once a second and at close.
        self._handle.flush()
        now = time.monotonic()
        if now - self._synced >= FSYNC_INTERVAL:
            os.fsync(self._handle.fileno())
            self._synced = now
        self.records[record["id"]] = record

    def drop(self, ids: set[str]) -> int:
        """Rewrite the file without the records of `ids` (failed ones, to retry their prompts); returns how many."""
        kept = [r for r in self.records.values() if r["id"] not in ids]
        dropped = len(self.records) - len(kept)
        if dropped:
            self._handle.close()
            staging = self.path.with_suffix(".jsonl.tmp")
            staging.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
            os.replace(staging, self.path)  # atomic: a crash leaves the old file or the new one
            self.records = {r["id"]: r for r in kept}
            self._handle = self.path.open("a", encoding="utf-8")
        return dropped

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
