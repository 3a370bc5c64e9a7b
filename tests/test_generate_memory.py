"""What `spri-sft generate` keeps in memory does not grow with the prompts' count: the record store keeps an index
of records.jsonl (tests/test_resume.py), and the prompts waiting their turn are a list, not a task each."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support.fake_openai_server import FakeOpenAIServer

from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.run import generate, run_records
from spri_sft.generate.store import RecordStore
from spri_sft.llm.base import EndpointConfig

pytestmark = pytest.mark.timeout(120)


def test_a_run_holds_a_task_per_prompt_in_flight_not_per_prompt(tmp_path: Path, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: why?"}) + "\n" for i in range(120)))
    tasks_seen = []
    append = RecordStore.append

    def counting_append(store, record):
        tasks_seen.append(len(asyncio.all_tasks()))  # as each record is written, mid-run
        append(store, record)

    monkeypatch.setattr(RecordStore, "append", counting_append)
    with FakeOpenAIServer() as server:
        endpoint = EndpointConfig(backend="openai", model="fake-model", base_url=[server.base_url], timeout=5.0)
        config = GenerateConfig(
            output_dir=str(tmp_path / "out"), mode="direct", prompts=PromptSource(path=str(prompts)), base=endpoint,
            critic=endpoint, max_concurrent_prompts=4, progress=False,
        )  # fmt: skip
        summary = generate(config)

    assert summary["records"] == 120 and len(tasks_seen) == 120
    # The 4 prompts' tasks, the run's own and the HTTP client's few: never one per prompt waiting.
    assert max(tasks_seen) < 20, f"up to {max(tasks_seen)} tasks alive for 4 prompts in flight"


def test_run_records_reads_this_runs_records_from_the_file_in_prompt_order(tmp_path: Path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: why?"}) + "\n" for i in range(6)))
    with FakeOpenAIServer() as server:
        endpoint = EndpointConfig(backend="openai", model="fake-model", base_url=[server.base_url], timeout=5.0)
        config = GenerateConfig(
            output_dir=str(tmp_path / "out"), mode="direct", prompts=PromptSource(path=str(prompts)), base=endpoint,
            critic=endpoint, max_concurrent_prompts=3, progress=False,
        )  # fmt: skip
        generate(config)
    path = tmp_path / "out" / "records.jsonl"
    written = {r["prompt"]: r for r in map(json.loads, path.read_text().splitlines())}
    foreign = {"id": "another-setting", "prompt": "Question 0: why?", "mode": "direct", "status": "accepted"}
    with path.open("a") as handle:
        handle.write(json.dumps(foreign) + "\n")

    records, others = run_records(config)

    assert others
    assert len(records) == 6
    assert list(records) == [written[f"Question {i}: why?"] for i in range(6)]
