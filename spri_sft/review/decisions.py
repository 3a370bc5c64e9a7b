"""`<review dir>/decisions.jsonl`: a reviewer's "exclude" and "keep" decisions, which `spri-sft format` obeys.

One JSON object per line: `{"id", "mode", "decision": "exclude"|"keep", "reason", "who", "when"}`. The file is
append-only, so it is its own trail: a changed mind is a new line, and the last decision per record id wins.
Each line is one `write` of a complete line, flushed and synced, under an exclusive `flock` (the viewer's
threads, or two viewers of one run, never interleave), so a kill leaves at most one torn last line: readers
ignore it and count it, and the next append cuts it off before writing (it was never a decision). A complete
line that is not a valid decision is a hand edit gone wrong, not ours to guess about: it is an error naming
FILE:LINE and the field.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from spri_sft.errors import UserError

REVIEW_DIR = "review"
DECISIONS_FILE = "decisions.jsonl"
DECISIONS = ("exclude", "keep")

# flock serializes processes; within one process (the viewer's request threads) this lock does, since flock
# locks held through two handles of one process would not exclude each other's truncate-then-write.
_APPEND_LOCK = threading.Lock()


class Decisions(dict):
    """The last decision per record id (`{id: decision line}`), and how many torn bytes the file ended with."""

    def __init__(self, path: Path, decisions: dict[str, dict], torn_bytes: int = 0):
        super().__init__(decisions)
        self.path = path
        self.torn_bytes = torn_bytes

    def count(self, decision: str) -> int:
        return sum(1 for line in self.values() if line["decision"] == decision)


def review_dir_of(path: str | Path | list[str | Path]) -> Path:
    """Where the review of PATH lives: `<dir>/review/` for a pipeline output dir or a generate output dir,
    `review/` beside the first file for records files."""
    first = Path(path[0] if isinstance(path, (list, tuple)) else path)
    return (first if first.is_dir() else first.parent) / REVIEW_DIR


def default_reviewer() -> str:
    """Who a decision is recorded as when the reviewer gives no name: the login name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment or the password database (some containers)
        return "unknown"


def append_decision(path: str | Path, id: str, mode: str, decision: str, reason: str | None, who: str) -> dict:
    """Append one decision to the file at `path` (made with its directory when missing); returns the line written."""
    line = {
        "id": id,
        "mode": mode,
        "decision": decision,
        "reason": reason or None,  # an empty reason is no reason
        "who": who,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    problem = _problem(line)
    if problem:
        raise UserError(f"decision for record {id!r}: {problem}")
    data = (json.dumps(line, ensure_ascii=False) + "\n").encode()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _APPEND_LOCK:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)  # released by the close below
            _end_last_line(descriptor)
            os.write(descriptor, data)  # one write of the whole line: a kill leaves it whole or torn
            os.fsync(descriptor)  # a decision is a person's work: it survives a machine crash too
        finally:
            os.close(descriptor)
    return line


def _end_last_line(descriptor: int) -> None:
    """Make the file end with a newline before appending: a complete decision left without one (a hand edit)
    gets it, a torn fragment is cut off."""
    size = os.fstat(descriptor).st_size
    if not size:
        return
    data = os.pread(descriptor, size, 0)
    if data.endswith(b"\n"):
        return
    end = data.rfind(b"\n") + 1
    if _parse(data[end:]) is not None:
        os.write(descriptor, b"\n")
    else:
        os.ftruncate(descriptor, end)


def read_decisions(path: str | Path) -> Decisions:
    """The last decision per record id in the file at `path` (none when it does not exist)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Decisions(path, {})
    except OSError as err:
        raise UserError(f"{path}: cannot read the review decisions ({err.strerror})") from None
    end = data.rfind(b"\n") + 1  # complete lines end here; after it, a torn fragment, a hand-written line or nothing
    lines = data[:end].split(b"\n")[:-1]
    tail = data[end:]
    torn_bytes = 0
    if tail.strip():
        if _parse(tail) is None:
            torn_bytes = len(tail)
        else:
            lines.append(tail)
    decisions: dict[str, dict] = {}
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        line = _parse(raw)
        if line is None:
            raise UserError(f"{path}:{number}: {_explain(raw)}; fix or remove the line (the viewer appends valid ones)")
        decisions[line["id"]] = line
    return Decisions(path, decisions, torn_bytes)


def excluded_ids(path: str | Path) -> dict[str, str | None]:
    """The record ids whose last decision is "exclude", with the reason given (None when none was)."""
    return {id: line["reason"] for id, line in read_decisions(path).items() if line["decision"] == "exclude"}


def _parse(raw: bytes) -> dict | None:
    """The decision a line holds, or None when it is not a valid one."""
    try:
        line = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return line if _problem(line) is None else None


def _explain(raw: bytes) -> str:
    try:
        line = json.loads(raw)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except json.JSONDecodeError as err:
        return f"malformed JSON line ({err.msg} at column {err.colno})"
    return _problem(line) or "not a valid decision"


def _problem(line: Any) -> str | None:
    """What makes `line` not a decision, naming the field, or None when it is one."""
    if not isinstance(line, dict):
        return f"expected a JSON object, got a JSON {type(line).__name__}"
    for field in ("id", "mode", "who", "when"):
        if not isinstance(line.get(field), str) or not line[field]:
            return f"field '{field}' must be a non-empty string (got {line.get(field)!r})"
    if line.get("decision") not in DECISIONS:
        return f"field 'decision' must be 'exclude' or 'keep' (got {line.get('decision')!r})"
    if not isinstance(line.get("reason"), (str, type(None))):
        return f"field 'reason' must be a string or null (got {line['reason']!r})"
    return None
