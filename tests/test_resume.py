"""Resuming `spri-sft generate` after a crash.

The generate command runs as a real subprocess against the fake OpenAI-compatible server and
is killed with SIGKILL (no cleanup, no `finally`) at several points, then restarted with the
same command. However often that happens, `records.jsonl` must end with exactly one valid
JSON line per prompt, carrying the same ids as an uninterrupted run. A torn last line, which
is what a kill in the middle of a write leaves, is cut off before anything is appended.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from support.fake_openai_server import FakeOpenAIServer

from spri_sft.errors import UserError
from spri_sft.generate.store import RecordStore

PROMPT_COUNT = 40
RUN_TIMEOUT = 60.0  # seconds any one generate run (or wait on one) may take before the test fails
PLAN_LINE = re.compile(r"(\d+) prompts, (\d+) already done, (\d+) to generate")


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> FakeOpenAIServer:
    # The server lives in this process; every generate run is a separate process talking HTTP. Its
    # replies depend on the request alone, so a rerun asks and is answered exactly as before.
    with FakeOpenAIServer(latency=0.04) as running:
        yield running


@pytest.fixture(scope="module")
def server_url(server: FakeOpenAIServer) -> str:
    return server.base_url


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "".join(
            json.dumps({"prompt": f"Prompt {i}: explain topic number {i * 7} briefly."}) + "\n"
            for i in range(PROMPT_COUNT)
        )
    )
    return path


class Generate:
    """Builds and runs `spri-sft generate` commands against the fake server."""

    def __init__(self, server_url: str, prompts_file: Path, workdir: Path):
        self.server_url = server_url
        self.prompts_file = prompts_file
        self.workdir = workdir
        self.runs = 0

    def argv(self, output_dir: Path, *extra: str) -> list[str]:
        endpoint = ["--backend", "openai", "--model", "fake-model", "--base_url", self.server_url]
        return [
            sys.executable, "-m", "spri_sft.cli", "generate",
            "--output_dir", str(output_dir),
            "--prompts.path", str(self.prompts_file),
            *[f"--base.{a[2:]}" if a.startswith("--") else a for a in endpoint],
            *[f"--critic.{a[2:]}" if a.startswith("--") else a for a in endpoint],
            "--max_concurrent_prompts", "4",
            "--progress", "false",
            *extra,
        ]  # fmt: skip

    def start(self, output_dir: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
        """Start a run; its stdout and stderr go to one log file, returned with the process."""
        self.runs += 1
        log = self.workdir / f"run-{self.runs}.log"
        with log.open("wb") as handle:
            process = subprocess.Popen(
                self.argv(output_dir, *extra), stdout=handle, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        return process, log

    def run(self, output_dir: Path, *extra: str) -> str:
        """Run to completion; returns the output, failing the test if the command failed."""
        process, log = self.start(output_dir, *extra)
        try:
            returncode = process.wait(timeout=RUN_TIMEOUT)
        finally:
            _reap(process)
        output = log.read_text()
        assert returncode == 0, f"generate exited with {returncode}:\n{output[-4000:]}"
        return output


def _reap(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


def _wait_until(condition, what: str, process: subprocess.Popen, log: Path) -> None:
    """Poll `condition` until true; fail (never hang) on timeout or if the process exits first."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"generate exited ({process.returncode}) before {what}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.005)


def _line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=10) == -signal.SIGKILL


def _read_records(path: Path) -> list[dict]:
    """Every line of `path` as JSON; fails on an unterminated or unparsable line."""
    data = path.read_text(encoding="utf-8")
    assert data.endswith("\n"), f"{path} does not end with a newline: {data[-200:]!r}"
    records = []
    for number, line in enumerate(data.splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            pytest.fail(f"{path}:{number} is not valid JSON ({err}): {line[:200]!r}")
    return records


def _plan(output: str) -> tuple[int, int, int]:
    """(prompts, already done, to generate) from the plan line a run prints first."""
    match = PLAN_LINE.search(output)
    assert match, f"no plan line in the output:\n{output[-4000:]}"
    return tuple(int(n) for n in match.groups())


@pytest.fixture
def generate(server_url: str, prompts_file: Path, tmp_path: Path) -> Generate:
    return Generate(server_url, prompts_file, tmp_path)


@pytest.fixture
def reference(generate: Generate, tmp_path: Path) -> list[dict]:
    """The records of one uninterrupted run."""
    output_dir = tmp_path / "uninterrupted"
    generate.run(output_dir)
    records = _read_records(output_dir / "records.jsonl")
    assert len(records) == PROMPT_COUNT
    return records


# -- resuming after SIGKILL -----------------------------------------------------------------


def test_runs_killed_at_several_points_end_with_one_record_per_prompt_as_an_uninterrupted_run(
    generate: Generate, reference: list[dict], tmp_path: Path
):
    output_dir = tmp_path / "killed"
    records_path = output_dir / "records.jsonl"

    # 1. Killed as soon as the run has announced its plan, before its first record can be written.
    process, log = generate.start(output_dir)
    try:
        _wait_until(lambda: "already done" in log.read_text(), "the plan line", process, log)
        _kill(process)
    finally:
        _reap(process)
    assert _line_count(records_path) < 3

    # 2.-4. Killed mid-run once the file holds at least this many records (counting earlier runs').
    for threshold in (3, 12, 25):
        process, log = generate.start(output_dir)
        try:
            _wait_until(
                lambda threshold=threshold: _line_count(records_path) >= threshold, f"{threshold} records", process, log
            )
            _kill(process)
        finally:
            _reap(process)
        assert _line_count(records_path) < PROMPT_COUNT, "the kill came too late to interrupt anything"

    # 5. The same command once more, left to finish.
    done_before = _line_count(records_path)  # complete lines; a torn one would be cut off
    output = generate.run(output_dir)
    assert _plan(output) == (PROMPT_COUNT, done_before, PROMPT_COUNT - done_before)

    records = _read_records(records_path)
    ids = [r["id"] for r in records]
    assert len(records) == PROMPT_COUNT
    assert len(set(ids)) == len(ids), "a prompt was recorded twice"
    assert set(ids) == {r["id"] for r in reference}
    assert {r["id"]: r["prompt"] for r in records} == {r["id"]: r["prompt"] for r in reference}


def test_a_killed_and_resumed_run_asks_again_only_the_calls_in_flight_at_the_kills(
    generate: Generate, server: FakeOpenAIServer, tmp_path: Path
):
    before = server.stats["requests"]
    generate.run(tmp_path / "uninterrupted")
    uninterrupted = server.stats["requests"] - before
    reference = {r["id"]: r for r in _read_records(tmp_path / "uninterrupted" / "records.jsonl")}

    output_dir = tmp_path / "killed"
    records_path, journal_path = output_dir / "records.jsonl", output_dir / "journal.jsonl"
    before = server.stats["requests"]
    kills = 0
    logs = []
    # Killed once replies are journaled but before any record, then at four record counts.
    points = [
        lambda: _line_count(journal_path) >= 3,
        *[lambda n=n: _line_count(records_path) >= n for n in (3, 12, 20, 30)],
    ]
    for reached in points:
        process, log = generate.start(output_dir)
        logs.append(log)
        try:
            _wait_until(reached, "the kill point", process, log)
            _kill(process)
            kills += 1
        finally:
            _reap(process)
    output = generate.run(output_dir)
    resumed = server.stats["requests"] - before

    # Each prompt has at most one call in flight, so at most max_concurrent_prompts (4) per kill are lost.
    assert uninterrupted <= resumed <= uninterrupted + 4 * kills
    # The run after the first kill (replies journaled, no record yet) always finds replies to replay;
    # whether a later kill leaves any depends on how fast the server answered.
    resumed_output = "".join(log.read_text() for log in logs[1:]) + output
    assert "replayed, not asked again" in resumed_output
    records = _read_records(records_path)
    assert {r["id"]: r["response"] for r in records} == {i: r["response"] for i, r in reference.items()}
    assert sum(u["calls"] for r in records for u in r["usage"].values()) == uninterrupted
    assert not journal_path.exists(), "a finished run leaves no journal"


def test_rerunning_a_finished_run_generates_nothing(generate: Generate, tmp_path: Path):
    output_dir = tmp_path / "finished"
    generate.run(output_dir)
    before = (output_dir / "records.jsonl").read_bytes()

    output = generate.run(output_dir)

    assert _plan(output) == (PROMPT_COUNT, PROMPT_COUNT, 0)
    assert (output_dir / "records.jsonl").read_bytes() == before


# -- a torn last line -------------------------------------------------------------------------


def test_a_torn_last_line_is_cut_off_before_the_rerun_appends(generate: Generate, tmp_path: Path):
    output_dir = tmp_path / "torn"
    records_path = output_dir / "records.jsonl"
    generate.run(output_dir, "--prompts.limit", "30")
    complete = records_path.read_bytes()
    fragment = b'{"id": "0123456789abcdef", "prompt": "Prompt 99: half writ'
    records_path.write_bytes(complete + fragment)  # what a kill in the middle of a write leaves

    output = generate.run(output_dir)

    assert _plan(output) == (PROMPT_COUNT, 30, PROMPT_COUNT - 30)
    assert "torn last line" in output
    after = records_path.read_bytes()
    assert after.startswith(complete), "the records before the torn line must be kept as they were"
    assert fragment not in after
    records = _read_records(records_path)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == PROMPT_COUNT


def test_record_store_cuts_off_a_torn_fragment_when_opened(tmp_path: Path):
    path = tmp_path / "records.jsonl"
    lines = [json.dumps({"id": "a", "status": "accepted"}), json.dumps({"id": "b", "status": "failed"})]
    fragment = '{"id": "c", "stat'
    path.write_text("\n".join(lines) + "\n" + fragment)

    store = RecordStore(path)
    assert store.torn_bytes == len(fragment)
    assert set(store.ids) == {"a", "b"}
    assert path.read_text() == "\n".join(lines) + "\n"

    store.append({"id": "c", "status": "accepted"})
    store.close()
    assert path.read_text().splitlines() == [*lines, json.dumps({"id": "c", "status": "accepted"})]


def test_record_store_cuts_off_a_complete_but_garbled_last_line(tmp_path: Path):
    path = tmp_path / "records.jsonl"
    good = json.dumps({"id": "a", "status": "accepted"})
    garbled = '{"id": "b", "sta\x00\x00\x00'
    path.write_text(good + "\n" + garbled + "\n")

    store = RecordStore(path)
    store.close()

    assert store.torn_bytes == len(garbled) + 1
    assert set(store.ids) == {"a"}
    assert path.read_text() == good + "\n"


def test_record_store_refuses_a_malformed_line_before_the_last(tmp_path: Path):
    path = tmp_path / "records.jsonl"
    original = json.dumps({"id": "a"}) + "\nnot json\n" + json.dumps({"id": "b"}) + "\n"
    path.write_text(original)

    with pytest.raises(UserError, match=r"records\.jsonl:2:"):
        RecordStore(path)
    assert path.read_text() == original, "a file the store refuses must be left untouched"


def test_record_store_keeps_an_index_not_the_records(tmp_path: Path):
    path = tmp_path / "records.jsonl"
    text = "a long response, " * 1200  # about 20 kB a record
    path.write_text(
        "".join(json.dumps({"id": f"r{i}", "status": "accepted", "response": text}) + "\n" for i in range(200))
    )

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = RecordStore(path)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    store.close()

    assert len(store) == 200
    assert held < path.stat().st_size / 50, f"the open store holds {held} bytes of a {path.stat().st_size}-byte file"


def test_record_store_reads_back_each_record_it_wrote_or_found(tmp_path: Path):
    path = tmp_path / "records.jsonl"
    found = {"id": "a", "mode": "spri", "status": "accepted", "response": "première"}
    path.write_text(json.dumps(found, ensure_ascii=False) + "\n")
    written = {"id": "b", "mode": "spri", "status": "failed", "response": None}

    store = RecordStore(path)
    store.append(written)

    assert store.get("a") == found
    assert store.get("b") == written
    assert list(store.read()) == [found, written]
    assert list(store.read({"b"})) == [written]
    assert store.failed == {"b"}
    assert store.modes == {"spri": 2}
    store.close()


def test_record_store_drop_removes_every_line_of_an_id_written_twice(tmp_path: Path):
    path = tmp_path / "records.jsonl"
    lines = [
        {"id": "a", "mode": "spri", "status": "failed", "error": "first try"},
        {"id": "b", "mode": "spri", "status": "accepted"},
        {"id": "a", "mode": "spri", "status": "failed", "error": "second try"},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    store = RecordStore(path)
    assert store.drop({"a"}) == 1
    store.append({"id": "c", "mode": "spri", "status": "accepted"})
    store.close()

    reopened = RecordStore(path)
    assert list(reopened.ids) == ["b", "c"], "an older line of a dropped id must not come back"
    assert reopened.failed == set() and reopened.modes == {"spri": 2}
    assert reopened.get("c")["status"] == "accepted"
    reopened.close()


def test_record_store_drop_rewrites_the_file_and_reads_the_others_where_they_moved(tmp_path: Path):
    path = tmp_path / "records.jsonl"
    records = [{"id": f"r{i}", "mode": "spri", "status": "failed" if i % 2 else "accepted", "n": i} for i in range(6)]
    store = RecordStore(path)
    for record in records:
        store.append(record)

    assert store.drop({"r1", "r3", "missing"}) == 2
    store.append({"id": "r6", "mode": "spri", "status": "accepted", "n": 6})

    kept = [r for r in records if r["id"] not in {"r1", "r3"}] + [
        {"id": "r6", "mode": "spri", "status": "accepted", "n": 6}
    ]
    assert [store.get(r["id"]) for r in kept] == kept
    assert store.failed == {"r5"}
    assert store.modes == {"spri": 5}
    store.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == kept
    reopened = RecordStore(path)
    assert list(reopened.read()) == kept
    reopened.close()


# -- changed settings -----------------------------------------------------------------------


def test_changed_generation_settings_generate_new_records_instead_of_reusing_old_ones(
    generate: Generate, reference: list[dict], tmp_path: Path
):
    output_dir = tmp_path / "uninterrupted"  # where `reference` was generated
    old_ids = {r["id"] for r in reference}

    output = generate.run(output_dir, "--base.temperature", "0.5")

    assert _plan(output) == (PROMPT_COUNT, 0, PROMPT_COUNT)
    records = _read_records(output_dir / "records.jsonl")
    new_ids = {r["id"] for r in records} - old_ids
    assert len(records) == 2 * PROMPT_COUNT
    assert len(new_ids) == PROMPT_COUNT
    # Going back to the old settings finds the old records again.
    assert _plan(generate.run(output_dir)) == (PROMPT_COUNT, PROMPT_COUNT, 0)
