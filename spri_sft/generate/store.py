"""`records.jsonl`: one JSON object per finished prompt, appended and synced as each finishes.

Opening the store reads what earlier runs finished, so a rerun skips those ids. A process
killed mid-write (even by SIGKILL) can leave at most one torn last line, because every record
is written with a single `write` of a complete line; that fragment is cut off before anything
is appended. A malformed line anywhere else is not ours to repair and stops the run with its
line number.

Only an index stays in memory: per record id, where its line starts in the file, and the ids of
the failed records (what a rerun retries), with a count of the modes found. That is what resume and
the refusal of a second mode need; a whole record is read back from the file when one is asked
for (`get`, `read`), so a run's memory does not grow with its records' text (measured in
docs/benchmarks.md, "Memory").
"""

from __future__ import annotations

import bisect
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from spri_sft.errors import UserError

FSYNC_INTERVAL = 1.0  # seconds


class RecordStore:
    def __init__(self, path: Path):
        self.path = path
        self._offsets: dict[str, int] = {}  # record id -> the byte offset of its line
        self._repeated: set[str] = set()  # ids with more than one line in the file (the index points at the last)
        self.failed: set[str] = set()  # ids of records whose status is "failed"
        self.modes: Counter[str | None] = Counter()  # each record's `mode`, as written, counted
        self.torn_bytes = 0
        self._synced = 0.0
        self._size = 0  # bytes of complete lines: where the next record goes
        self._reader = None  # opened on the first `get`
        if path.exists():
            self._load()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("ab")

    def _load(self) -> None:
        offset = 0
        garbled = None  # (line number, offset) of a complete line that did not parse: an error unless it is the last
        with self.path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                if garbled is not None:
                    raise UserError(f"{self.path}:{garbled[0]}: not a valid record line; fix or remove it")
                if not line.endswith(b"\n"):
                    break  # a torn fragment: only the last line can lack its newline
                try:
                    record = json.loads(line)
                    self._index(record["id"], record, offset)
                except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                    garbled = (number, offset)  # a crash mid-write makes those, but only as the last line
                offset += len(line)
            end = garbled[1] if garbled is not None else offset
            size = handle.seek(0, os.SEEK_END)
        if end < size:
            self.torn_bytes = size - end
            with self.path.open("r+b") as handle:
                handle.truncate(end)
        self._size = end

    def _index(self, record_id: str, record: dict, offset: int) -> None:
        if not isinstance(record_id, str):
            raise TypeError("a record id is a string")
        if record_id in self._offsets:
            self._forget(record_id)
            self._repeated.add(record_id)
        self._offsets[record_id] = offset
        self.modes[record.get("mode")] += 1
        if record.get("status") == "failed":
            self.failed.add(record_id)

    def _forget(self, record_id: str) -> None:
        """Take a record out of the counts (its line is being dropped, or a later line of the same id replaces it)."""
        self.modes[self.get(record_id).get("mode")] -= 1
        self.modes += Counter()  # drops the modes counted down to zero
        self.failed.discard(record_id)

    def __contains__(self, record_id: str) -> bool:
        return record_id in self._offsets

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def ids(self) -> Iterable[str]:
        """Every record id in the file, in the order their records were written."""
        return self._offsets.keys()

    def get(self, record_id: str) -> dict:
        """The record of `record_id`, read from the file."""
        if self._reader is None:
            self._reader = self.path.open("rb")
        self._reader.seek(self._offsets[record_id])
        return json.loads(self._reader.readline())

    def read(self, ids: Iterable[str] | None = None) -> Iterator[dict]:
        """The records (of `ids` only, when given), one at a time, in the order their ids were first written."""
        wanted = None if ids is None else set(ids)
        with self.path.open("rb") as handle:
            for record_id, offset in self._offsets.items():
                if wanted is None or record_id in wanted:
                    handle.seek(offset)
                    yield json.loads(handle.readline())

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        self._handle.write(line)
        # flush() hands the line to the OS, which keeps it through a kill -9 of this process; fsync (for a
        # machine crash) costs milliseconds, so it runs at most once a second and at close.
        self._handle.flush()
        now = time.monotonic()
        if now - self._synced >= FSYNC_INTERVAL:
            os.fsync(self._handle.fileno())
            self._synced = now
        self._index(record["id"], record, self._size)
        self._size += len(line)

    def drop(self, ids: set[str]) -> int:
        """Rewrite the file without the records of `ids` (failed ones, to retry their prompts); returns how many."""
        gone = sorted((self._offsets[i], i) for i in ids if i in self._offsets)
        if not gone:
            return 0
        if self._repeated & ids:
            return self._drop_every_line_of(ids, len(gone))
        self._handle.close()
        staging = self.path.with_suffix(".jsonl.tmp")
        cuts = []  # (offset, length) of each dropped line, in file order
        with self.path.open("rb") as source, staging.open("wb") as target:
            position = 0
            for offset, record_id in gone:
                self._forget(record_id)
                _copy(source, target, offset - position)
                length = len(source.readline())
                cuts.append((offset, length))
                position = offset + length
            shutil.copyfileobj(source, target)
        os.replace(staging, self.path)  # atomic: a crash leaves the old file or the new one
        starts = [offset for offset, _ in cuts]
        removed = [0]  # bytes removed before each cut, and after the last
        for _, length in cuts:
            removed.append(removed[-1] + length)
        for _, record_id in gone:
            del self._offsets[record_id]
        self._offsets = {i: o - removed[bisect.bisect_left(starts, o)] for i, o in self._offsets.items()}
        self._size -= removed[-1]
        self._close_reader()  # it reads the replaced file
        self._handle = self.path.open("ab")
        return len(gone)

    def _drop_every_line_of(self, ids: set[str], count: int) -> int:
        """`drop` where an id has older lines too, whose offsets the index does not keep: the file is copied line by
        line without any line of `ids`, and indexed anew."""
        self._handle.close()
        self._close_reader()
        staging = self.path.with_suffix(".jsonl.tmp")
        with self.path.open("rb") as source, staging.open("wb") as target:
            for line in source:
                if json.loads(line)["id"] not in ids:
                    target.write(line)
        os.replace(staging, self.path)  # atomic: a crash leaves the old file or the new one
        self._offsets, self._repeated, self.failed, self.modes = {}, set(), set(), Counter()
        self._load()
        self._handle = self.path.open("ab")
        return count

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        self._close_reader()

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def _copy(source, target, size: int) -> None:
    """Copy `size` bytes from `source`'s position to `target`, a block at a time."""
    while size > 0:
        block = source.read(min(size, 1 << 20))
        if not block:
            break
        target.write(block)
        size -= len(block)
