"""`journal.jsonl`: every model reply of a prompt still in flight, so a resumed run never pays for it twice.

A prompt's record is written when the prompt finishes; a kill before that would lose every call
the prompt had made. So each completed call is appended (one `write` of a complete line, then
flushed, which survives a SIGKILL) with its prompt's record id and a hash of its full request:
the role's request settings (model, sampling) and the messages. A resumed prompt replays, for
the n-th request with a given hash, the n-th reply journaled for it, and calls the model only
past the journal. A deterministic model makes the prompt send exactly the requests it sent
before, so only the calls that were in flight at the kill are made again; a sampling one
continues the conversation it had started.

Records stay the one source of truth: a prompt's entries are dropped once its record is
written (and, on opening, those of any prompt that is not pending), and the file is rewritten
without them once they make up most of it, so it holds about one line per call in flight.
A torn last line (a kill mid-write) is cut off, as in the record store.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from spri_sft.errors import UserError
from spri_sft.llm.base import ChatBackend, Completion

COMPACT_AFTER_BYTES = 1 << 20  # dropped entries are rewritten away only once they outweigh this and the live ones


@dataclass
class ReplayedCompletion(Completion):
    """A reply read back from the journal: its tokens were paid by an earlier run."""


def request_key(settings: dict, messages: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps([settings, messages], sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class Journal:
    def __init__(self, path: Path, pending: set[str]):
        """Open `path`, keeping the entries of the `pending` record ids only."""
        self.path = path
        self.torn_bytes = 0
        self._lines: dict[str, list[str]] = defaultdict(list)  # record id -> its journal lines, in order
        self._live = self._dead = 0  # bytes of lines still wanted / of lines dropped since the last rewrite
        if path.exists():
            self._load(pending)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = path.open("a", encoding="utf-8")

    def _load(self, pending: set[str]) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # complete lines end here; after it, a torn fragment or nothing
        lines = data[:end].split(b"\n")[:-1]
        for number, raw in enumerate(lines, 1):
            try:
                entry = json.loads(raw)
                record_id, _ = entry["id"], entry["key"]
                Completion(**entry["reply"])
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
                if number == len(lines) and end == len(data):
                    end -= len(raw) + 1  # a complete but garbled last line: only a crash mid-write makes those
                    break
                raise UserError(
                    f"{self.path}:{number}: not a valid journal line; delete the file (it only saves repeated calls)"
                ) from None
            if record_id in pending:
                self._lines[record_id].append(raw.decode() + "\n")
        self.torn_bytes = len(data) - end
        self._live = sum(len(line.encode()) for lines in self._lines.values() for line in lines)
        if self._live < end:
            self._write_live()  # entries of finished or other prompts: gone before anything is added
        elif self.torn_bytes:
            with self.path.open("r+b") as handle:
                handle.truncate(end)

    @property
    def entries(self) -> int:
        return sum(len(lines) for lines in self._lines.values())

    def prompt(self, record_id: str) -> PromptJournal:
        """The journal of one prompt: its earlier replies to replay, and where its new ones go."""
        replies: dict[str, list[Completion]] = defaultdict(list)
        for line in self._lines.get(record_id, []):
            entry = json.loads(line)
            replies[entry["key"]].append(ReplayedCompletion(**entry["reply"]))
        return PromptJournal(self, record_id, replies)

    def append(self, record_id: str, key: str, completion: Completion) -> None:
        reply = asdict(completion)
        line = json.dumps({"id": record_id, "key": key, "reply": reply}, ensure_ascii=False) + "\n"
        self._handle.write(line)  # one write of a whole line: a kill leaves it whole or torn, never interleaved
        self._handle.flush()
        self._lines[record_id].append(line)
        self._live += len(line.encode())

    def forget(self, record_id: str) -> None:
        """The prompt's record is written: its entries are no longer needed."""
        size = sum(len(line.encode()) for line in self._lines.pop(record_id, []))
        self._live -= size
        self._dead += size
        if self._dead > max(self._live, COMPACT_AFTER_BYTES):
            self._rewrite()

    def _rewrite(self) -> None:
        self._handle.close()
        self._write_live()
        self._handle = self.path.open("a", encoding="utf-8")

    def _write_live(self) -> None:
        staging = self.path.with_suffix(".jsonl.tmp")
        staging.write_text("".join(line for lines in self._lines.values() for line in lines), encoding="utf-8")
        os.replace(staging, self.path)  # atomic: a crash leaves the old file or the new one
        self._dead = 0

    def close(self) -> None:
        """Keep only the entries of prompts that did not finish (a stopped run); no file when there are none."""
        if self._handle.closed:
            return
        self._handle.close()
        if not self._lines:
            self.path.unlink(missing_ok=True)
        elif self._dead:
            self._write_live()


class PromptJournal:
    """One prompt's journal; `backend(...)` wraps a role's backend so that its calls go through it."""

    def __init__(self, journal: Journal, record_id: str, replies: dict[str, list[Completion]]):
        self.journal, self.record_id = journal, record_id
        self._replies = replies
        self._sent: dict[str, int] = defaultdict(int)  # requests of each key asked so far by this prompt
        self.replayed: dict[str, int] = defaultdict(int)  # per role

    def backend(self, role: str, backend: ChatBackend, settings: dict) -> ChatBackend:
        return _JournaledBackend(self, role, backend, settings)

    async def chat(
        self, role: str, backend: ChatBackend, settings: dict, messages: list[dict[str, str]], scored: bool = False
    ) -> Completion:
        # A critique in the critic format (`backend.critique`) is another request than a chat of the same messages.
        key = request_key({**settings, "critique": True} if scored else settings, messages)
        nth = self._sent[key]
        self._sent[key] += 1
        earlier = self._replies.get(key, [])
        if nth < len(earlier):
            self.replayed[role] += 1
            return earlier[nth]
        completion = await (backend.critique(messages) if scored else backend.chat(messages))
        self.journal.append(self.record_id, key, completion)
        return completion


class _JournaledBackend:
    def __init__(self, journal: PromptJournal, role: str, backend: ChatBackend, settings: dict):
        self.model = backend.model
        self.score_setting = getattr(backend, "score_setting", "parse")
        self._journal, self._role, self._backend, self._settings = journal, role, backend, settings

    @property
    def score_mode(self) -> str:
        return getattr(self._backend, "score_mode", "parse")  # read live: the backend's probe may change it

    async def chat(self, messages: list[dict[str, str]]) -> Completion:
        return await self._journal.chat(self._role, self._backend, self._settings, messages)

    async def critique(self, messages: list[dict[str, str]]) -> Completion:
        return await self._journal.chat(self._role, self._backend, self._settings, messages, scored=True)
