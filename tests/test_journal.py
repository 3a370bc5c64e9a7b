"""The per-call journal: replies of unfinished prompts replayed, never asked twice; records stay the truth."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from spri_sft.errors import UserError
from spri_sft.generate import journal as journal_module
from spri_sft.generate.journal import Journal, ReplayedCompletion
from spri_sft.llm.base import Completion

SETTINGS = {"model": "m", "temperature": 0.7}


class CountingBackend:
    """Answers every request with its position among all requests asked of it."""

    model = "m"

    def __init__(self):
        self.asked: list[list[dict]] = []

    async def chat(self, messages):
        self.asked.append(messages)
        return Completion(f"reply {len(self.asked)}", 3, 2, "stop")


def ask(journal: Journal, record_id: str, backend, *requests: str, settings=SETTINGS) -> list[Completion]:
    calls = journal.prompt(record_id).backend("base", backend, settings)

    async def run():
        return [await calls.chat([{"role": "user", "content": text}]) for text in requests]

    return asyncio.run(run())


def test_a_reopened_journal_replays_a_pending_prompts_replies_in_order_and_asks_only_past_them(tmp_path: Path):
    path = tmp_path / "journal.jsonl"
    first = CountingBackend()
    journal = Journal(path, {"p"})
    ask(journal, "p", first, "hello", "again", "hello")  # killed here: no record, no close

    second = CountingBackend()
    replies = ask(Journal(path, {"p"}), "p", second, "hello", "again", "hello", "hello")

    assert [r.text for r in replies] == ["reply 1", "reply 2", "reply 3", "reply 1"]
    assert all(isinstance(r, ReplayedCompletion) for r in replies[:3]) and not isinstance(
        replies[3], ReplayedCompletion
    )
    assert second.asked == [[{"role": "user", "content": "hello"}]], "only the third 'hello' is new"


def test_other_request_settings_are_other_requests(tmp_path: Path):
    path = tmp_path / "journal.jsonl"
    ask(Journal(path, {"p"}), "p", CountingBackend(), "hello")
    backend = CountingBackend()
    ask(Journal(path, {"p"}), "p", backend, "hello", settings={**SETTINGS, "temperature": 0.0})
    assert len(backend.asked) == 1


def test_opening_drops_the_entries_of_prompts_that_are_not_pending(tmp_path: Path):
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, {"done", "open"})
    ask(journal, "done", CountingBackend(), "a")
    ask(journal, "open", CountingBackend(), "b")

    reopened = Journal(path, {"open"})  # "done" got its record before the kill

    assert reopened.entries == 1
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["open"]


def test_a_torn_last_line_is_cut_off_and_the_rest_replayed(tmp_path: Path):
    path = tmp_path / "journal.jsonl"
    ask(Journal(path, {"p"}), "p", CountingBackend(), "a")
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"id": "p", "key": "12')

    journal = Journal(path, {"p"})

    assert journal.torn_bytes == len(b'{"id": "p", "key": "12') and path.read_bytes() == whole
    backend = CountingBackend()
    assert ask(journal, "p", backend, "a")[0].text == "reply 1" and backend.asked == []


def test_a_malformed_line_before_the_last_is_refused_with_its_line_number(tmp_path: Path):
    path = tmp_path / "journal.jsonl"
    ask(Journal(path, {"p"}), "p", CountingBackend(), "a", "b")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(["not json", *lines]) + "\n")
    with pytest.raises(UserError, match=r"journal\.jsonl:1: not a valid journal line"):
        Journal(path, {"p"})


def test_forgotten_prompts_are_rewritten_away_once_they_outweigh_the_live_ones(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(journal_module, "COMPACT_AFTER_BYTES", 0)
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, {"a", "b"})
    ask(journal, "a", CountingBackend(), "x", "y")
    ask(journal, "b", CountingBackend(), "z")

    journal.forget("a")  # a's record is written

    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["b"]
    ask(journal, "b", CountingBackend(), "w")  # appends still land after the rewrite
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["b", "b"]


def test_closing_removes_an_empty_journal_and_keeps_what_unfinished_prompts_need(tmp_path: Path):
    finished, stopped = tmp_path / "finished.jsonl", tmp_path / "stopped.jsonl"
    journal = Journal(finished, {"a"})
    ask(journal, "a", CountingBackend(), "x")
    journal.forget("a")
    journal.close()

    journal = Journal(stopped, {"a", "b"})
    ask(journal, "a", CountingBackend(), "x")
    ask(journal, "b", CountingBackend(), "y")
    journal.forget("a")
    journal.close()  # b was cancelled by the token budget: its reply waits for the next run

    assert not finished.exists()
    assert [json.loads(line)["id"] for line in stopped.read_text().splitlines()] == ["b"]
