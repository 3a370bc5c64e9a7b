"""Generation against a real local OpenAI-compatible HTTP server that injects faults.

Every test runs `spri_sft.generate.run.generate` (or the CLI) end to end: the official
`openai` client, its timeouts and error classes, the backend's retry loop and the record
store are all the real ones; only the model is replaced by `FakeOpenAIServer`.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import yaml
from support.canned_http_server import CannedHTTPServer
from support.fake_openai_server import FAULT_KINDS, FakeOpenAIServer, FaultPlan, message_text

from spri_sft.errors import UserError
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.engine import LoopSettings
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.prompts import PromptSet
from spri_sft.generate.run import generate
from spri_sft.llm import openai_http
from spri_sft.llm.base import EndpointConfig

pytestmark = pytest.mark.timeout(120)

TEMPLATES = PromptSet()


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    """Retries back off for about a millisecond instead of seconds."""
    monkeypatch.setattr(openai_http, "BACKOFF_BASE", 0.001)
    monkeypatch.setattr(openai_http, "BACKOFF_CAP", 0.005)


def write_prompts(directory: Path, count: int) -> tuple[Path, list[str]]:
    prompts = [f"Question {i}: how do tides work on planet number {i}?" for i in range(count)]
    path = directory / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path, prompts


def endpoint(urls: list[str], model: str = "fake-model", **overrides) -> EndpointConfig:
    settings = dict(backend="openai", model=model, base_url=list(urls), timeout=1.0, max_retries=20)
    settings.update(overrides)
    return EndpointConfig(**settings)


def make_config(
    tmp_path: Path, prompts_file: Path, base: EndpointConfig, critic: EndpointConfig, **overrides
) -> GenerateConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        prompts=PromptSource(path=str(prompts_file)),
        base=base,
        critic=critic,
        progress=False,
    )
    settings.update(overrides)
    return GenerateConfig(**settings)


def read_records(config: GenerateConfig) -> list[dict]:
    """Every line of records.jsonl, each required to be one complete JSON object."""
    lines = (Path(config.output_dir) / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) for r in records)
    return records


def read_summary(config: GenerateConfig) -> dict:
    return json.loads((Path(config.output_dir) / "summary.json").read_text())


def scores(record: dict, stage: str) -> list:
    return [r["score"] for r in record["rounds"] if r["stage"] == stage]


def total_calls(records: list[dict]) -> int:
    return sum(usage["calls"] for r in records for usage in r["usage"].values())


# -- a. a mix of every fault -------------------------------------------------------


def test_mixed_faults_are_retried_until_every_prompt_has_one_valid_record(tmp_path):
    prompts_file, prompts = write_prompts(tmp_path, 30)
    # Half of all requests fail, 10% each way; a slow reply outlives the 1 s client timeout
    # (and the test), so it only ever shows up as a timeout.
    faults = FaultPlan(
        rate_429=0.1, rate_500=0.1, rate_slow=0.1, rate_malformed=0.1, rate_empty_choices=0.1, slow_seconds=60
    )
    with FakeOpenAIServer(faults=faults, seed=1234) as server:
        config = make_config(tmp_path, prompts_file, endpoint([server.base_url]), endpoint([server.base_url]))
        summary = generate(config)
        stats = server.stats

    records = read_records(config)
    assert len(records) == len(prompts)
    assert sorted(r["prompt"] for r in records) == sorted(prompts)
    assert len({r["id"] for r in records}) == len(prompts)
    for record in records:
        # The default fake critic always scores 5, so no fault may turn into a lower status.
        assert record["status"] == "accepted", record.get("error")
        assert record["response"].strip() and record["principles"].strip()
        assert scores(record, "principles") == [5] and scores(record, "response") == [5]
        assert record["usage"]["base"]["calls"] == 2 and record["usage"]["critic"]["calls"] == 2

    # Every fault kind was really injected, so every retry path ran.
    for kind in FAULT_KINDS:
        assert stats[kind] > 0, (kind, stats)
    assert stats["bad_request"] == stats["reply_fn_error"] == 0
    # Exactly the successful completions reached the engine, and every request is accounted for.
    assert stats["ok"] == total_calls(records) == 4 * len(prompts)
    assert stats["requests"] == stats["ok"] + sum(stats[kind] for kind in FAULT_KINDS)

    on_disk = read_summary(config)
    assert on_disk == json.loads(json.dumps(summary))  # the file says what generate() returned
    assert summary["records"] == len(prompts) and summary["missing"] == 0
    assert summary["status"] == {"accepted": len(prompts)}
    assert summary["stopped_by_budget"] is False
    assert summary["this_run"]["records"] == len(prompts)
    assert summary["this_run"]["calls"] == stats["ok"]
    assert summary["usage"]["base:fake-model"]["calls"] == 2 * len(prompts)
    assert summary["usage"]["critic:fake-model"]["calls"] == 2 * len(prompts)


# -- b. a server that always fails --------------------------------------------------


def test_a_server_that_always_fails_gives_failed_records_and_one_error_not_a_crash(tmp_path):
    prompts_file, prompts = write_prompts(tmp_path, 8)
    with FakeOpenAIServer(faults=FaultPlan(rate_500=1.0)) as server:
        ep = endpoint([server.base_url], max_retries=1)
        config = make_config(tmp_path, prompts_file, ep, ep)
        with pytest.raises(UserError, match="InternalServerError"):
            generate(config)
        stats = server.stats
    summary = read_summary(config)  # written before the error was raised

    records = read_records(config)
    assert sorted(r["prompt"] for r in records) == sorted(prompts)
    for record in records:
        assert record["status"] == "failed"
        assert record["error"].startswith("InternalServerError:"), record["error"]
        assert "500" in record["error"]
        assert record["response"] is None and record["rounds"] == [] and record["usage"] == {}
    # The first call of each prompt: one try plus max_retries=1 retry, then it gives up.
    assert stats["requests"] == stats["500"] == 2 * len(prompts)
    assert summary["status"] == {"failed": len(prompts)} and summary["missing"] == 0


# -- c. replicas --------------------------------------------------------------------


def test_requests_are_spread_over_replicas(tmp_path):
    prompts_file, prompts = write_prompts(tmp_path, 24)
    with FakeOpenAIServer(latency=0.02, seed=1) as a, FakeOpenAIServer(latency=0.02, seed=2) as b:
        urls = [a.base_url, b.base_url]
        config = make_config(tmp_path, prompts_file, endpoint(urls), endpoint(urls))
        summary = generate(config)
        served = {"a": a.stats["requests"], "b": b.stats["requests"]}
        peak = {"a": a.max_in_flight, "b": b.max_in_flight}

    assert summary["status"] == {"accepted": len(prompts)}
    total = served["a"] + served["b"]
    assert total == 4 * len(prompts)
    for name, count in served.items():
        assert count >= 0.35 * total, served
        assert peak[name] > 1, peak  # each replica had concurrent requests, not a trickle


# -- d. a critic that accepts only revisions ------------------------------------------


def section(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


class Scripted:
    """Base and critic replies by request kind; the critic likes only revised text."""

    def __init__(self):
        self.kinds: Counter = Counter()
        self._lock = threading.Lock()

    def _count(self, kind: str) -> None:
        with self._lock:
            self.kinds[kind] += 1

    def __call__(self, messages, body) -> str:
        last = message_text(messages[-1])
        system = message_text(messages[0]) if messages[0].get("role") == "system" else ""
        if "[RESULT]" in last:
            if "### Principles to evaluate" in last:
                kind, critiqued = "critique-principles", section(last, "### Principles to evaluate\n", "\n\n### Rubric")
            else:
                kind, critiqued = "critique-response", section(last, "### Response to evaluate\n", "\n\n### Principles")
            self._count(kind)
            if "REVISED" in critiqued:
                return "Feedback: Now it is specific and complete. [RESULT] 5"
            return "Feedback: Too generic; name the forces involved. [RESULT] 2"
        if "Rewrite the principles" in last:
            self._count("revise-principles")
            return "1. REVISED principle: explain the Moon's pull.\n2. Mention spring and neap tides."
        if "Rewrite the response" in last:
            self._count("revise-response")
            return "REVISED answer: the Moon's gravity pulls the oceans into two bulges."
        if system.startswith("You write guiding principles"):
            self._count("draft-principles")
            return "1. Be accurate.\n2. Be clear."
        if system.startswith("Answer the user's request. Follow these principles"):
            self._count("draft-response")
            return "Draft answer: the Moon does it."
        self._count("unknown")
        return "?"


def test_critic_scores_drive_one_revision_per_stage(tmp_path):
    prompts_file, prompts = write_prompts(tmp_path, 6)
    script = Scripted()
    with (
        FakeOpenAIServer(reply_fn=script) as base_server,
        FakeOpenAIServer(reply_fn=script, model="critic-model") as critic_server,
    ):
        config = make_config(
            tmp_path,
            prompts_file,
            endpoint([base_server.base_url]),
            endpoint([critic_server.base_url], model="critic-model"),
        )
        summary = generate(config)
        base_requests, critic_requests = base_server.stats["requests"], critic_server.stats["requests"]

    n = len(prompts)
    assert script.kinds == {
        "draft-principles": n,
        "critique-principles": 2 * n,
        "revise-principles": n,
        "draft-response": n,
        "critique-response": 2 * n,
        "revise-response": n,
    }
    assert base_requests == 4 * n and critic_requests == 4 * n
    records = read_records(config)
    assert len(records) == n
    for record in records:
        assert record["status"] == "accepted"
        assert scores(record, "principles") == [2, 5] and scores(record, "response") == [2, 5]
        assert [r["round"] for r in record["rounds"]] == [1, 2, 1, 2]
        principles_rounds = [r for r in record["rounds"] if r["stage"] == "principles"]
        assert principles_rounds[0]["text"] == "1. Be accurate.\n2. Be clear."
        assert principles_rounds[0]["critique"] == "Too generic; name the forces involved."
        assert record["principles"].startswith("1. REVISED principle")
        assert record["response"].startswith("REVISED answer")
        assert record["usage"]["base"]["model"] == "fake-model"
        assert record["usage"]["base"]["calls"] == 4
        assert record["usage"]["critic"]["model"] == "critic-model"
        assert record["usage"]["critic"]["calls"] == 4
    assert summary["usage"]["base:fake-model"]["calls"] == 4 * n
    assert summary["usage"]["critic:critic-model"]["calls"] == 4 * n
    assert read_summary(config)["rounds_histogram"] == {"principles": {"2": n}, "response": {"2": n}}


# -- e. a critic that never scores -----------------------------------------------------


def test_a_critic_without_scores_is_reminded_then_recorded_unscored(tmp_path):
    prompts_file, prompts = write_prompts(tmp_path, 5)
    reminders = Counter()

    def no_score(messages, body):
        text = message_text(messages[-1])
        reminders[text == TEMPLATES.score_reminder] += 1
        return "Feedback: It reads fine but could be clearer about the causes."

    loop = LoopSettings(max_rounds=3, score_retries=2)
    with FakeOpenAIServer() as base_server, FakeOpenAIServer(reply_fn=no_score) as critic_server:
        config = make_config(
            tmp_path, prompts_file, endpoint([base_server.base_url]), endpoint([critic_server.base_url]), loop=loop
        )
        summary = generate(config)
        critic_requests = critic_server.stats["requests"]

    n, per_stage = len(prompts), loop.max_rounds * (1 + loop.score_retries)
    records = read_records(config)
    assert len(records) == n
    for record in records:
        assert record["status"] == "max_rounds"
        assert scores(record, "principles") == [None] * loop.max_rounds
        assert scores(record, "response") == [None] * loop.max_rounds
        assert all(r["critique"] == "It reads fine but could be clearer about the causes." for r in record["rounds"])
        assert record["usage"]["critic"]["calls"] == 2 * per_stage
        # Per stage: one draft, then a revision after every failing critique but the last.
        assert record["usage"]["base"]["calls"] == 2 * loop.max_rounds
    assert critic_requests == n * 2 * per_stage
    # Each critique: one first ask, then score_retries reminders.
    assert reminders == {False: n * 2 * loop.max_rounds, True: n * 2 * loop.max_rounds * loop.score_retries}
    assert summary["unscored_rounds"] == n * 2 * loop.max_rounds
    assert summary["status"] == {"max_rounds": n}


# -- f. token budget, then resume --------------------------------------------------------


def test_token_budget_stops_cleanly_and_a_rerun_finishes_the_rest(tmp_path):
    prompts_file, prompts = write_prompts(tmp_path, 16)
    with FakeOpenAIServer(latency=0.01) as server:
        ep = endpoint([server.base_url])
        # One prompt costs roughly 800 tokens with the default fake replies.
        config = make_config(tmp_path, prompts_file, ep, ep, max_concurrent_prompts=2, token_budget=3000)
        first = generate(config)
        first_records = read_records(config)

        assert first["stopped_by_budget"] is True
        assert first["this_run"]["tokens"] >= 3000
        assert 1 <= len(first_records) < len(prompts)
        assert first["records"] == len(first_records)
        assert first["missing"] == len(prompts) - len(first_records)
        assert len({r["id"] for r in first_records}) == len(first_records)
        for record in first_records:
            assert record["status"] == "accepted" and record["response"]
        assert read_summary(config)["stopped_by_budget"] is True

        config.token_budget = None
        second = generate(config)

    records = read_records(config)
    assert len(records) == len(prompts)
    assert sorted(r["prompt"] for r in records) == sorted(prompts)
    assert len({r["id"] for r in records}) == len(prompts)
    assert records[: len(first_records)] == first_records  # the first run's lines are kept as they were
    assert second["stopped_by_budget"] is False and second["missing"] == 0
    assert second["this_run"]["records"] == len(prompts) - len(first_records)
    assert second["status"] == {"accepted": len(prompts)}


def test_a_prompt_skipped_by_the_budget_counts_as_stopped_by_budget(tmp_path):
    # Prompt A alone, to learn its exact token cost (the fake server's counts are deterministic).
    (tmp_path / "a.jsonl").write_text(json.dumps({"prompt": "Question A"}) + "\n")
    (tmp_path / "ab.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ("Question A", "Question B")))
    with FakeOpenAIServer() as server:
        ep = endpoint([server.base_url])
        cost_of_a = generate(make_config(tmp_path / "probe", tmp_path / "a.jsonl", ep, ep))["this_run"]["tokens"]
        # A runs first and its very last call spends the budget, so B is skipped, never cancelled.
        config = make_config(tmp_path, tmp_path / "ab.jsonl", ep, ep, max_concurrent_prompts=1, token_budget=cost_of_a)
        summary = generate(config)

    assert summary["records"] == 1 and summary["missing"] == 1
    assert summary["stopped_by_budget"] is True


# -- g. the CLI, with no server --------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_cli_reports_an_unreachable_server_in_one_line(tmp_path):
    prompts_file, _ = write_prompts(tmp_path, 3)
    url = f"http://127.0.0.1:{closed_port()}/v1"
    ep = {"backend": "openai", "model": "fake-model", "base_url": [url], "timeout": 2.0}
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {"output_dir": str(tmp_path / "out"), "prompts": {"path": str(prompts_file)}, "base": ep, "critic": ep}
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "spri_sft.cli", "generate", "--config", str(config_file), "--progress", "false"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("spri-sft: error:")]
    assert len(errors) == 1, result.stderr
    assert re.fullmatch(
        rf"spri-sft: error: cannot reach {re.escape(url)} \((APIConnectionError|APITimeoutError)\).*", errors[0]
    ), errors
    assert not (tmp_path / "out" / "records.jsonl").exists() or not (tmp_path / "out" / "records.jsonl").read_text()


def _chat_once(base_url: str, max_retries: int = 0):
    import asyncio

    async def go():
        chat = openai_http.OpenAIChat(
            EndpointConfig(backend="openai", model="m", base_url=[base_url], max_retries=max_retries)
        )
        try:
            return await chat.chat([{"role": "user", "content": "Hi"}])
        finally:
            await chat.close()

    return asyncio.run(go())


def test_a_json_reply_labelled_text_plain_is_still_read():
    reply = {"choices": [{"message": {"role": "assistant", "content": " Hello. "}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": 7, "completion_tokens": 2}}  # fmt: skip
    with CannedHTTPServer(json.dumps(reply), content_type="text/plain") as server:  # as some proxies relabel it
        completion = _chat_once(f"{server.address}/v1")
    assert (completion.text, completion.prompt_tokens, completion.completion_tokens) == ("Hello.", 7, 2)


def test_a_reply_that_is_not_json_is_a_malformed_reply_naming_the_server():
    with CannedHTTPServer("<html>bad gateway</html>", content_type="text/plain") as server:
        base_url = f"{server.address}/v1"
        with pytest.raises(openai_http.MalformedReply, match=rf"{re.escape(base_url)} sent a body that is not JSON"):
            _chat_once(base_url)


# -- h. a base URL without /v1 ---------------------------------------------------------------


def test_a_base_url_without_v1_is_refused_before_any_prompt_naming_the_base_url_to_set(tmp_path):
    prompts_file, _ = write_prompts(tmp_path, 3)
    with FakeOpenAIServer() as server:
        root = f"http://127.0.0.1:{server.port}"  # as one might copy it from `vllm serve`'s banner
        config = make_config(tmp_path, prompts_file, endpoint([root]), endpoint([root]))
        with pytest.raises(UserError) as raised:
            generate(config)
        completions = [r for r in server.received if r.path.endswith("completions")]
    assert str(raised.value) == (
        f"404 Not Found at {root}/models: OpenAI-compatible servers serve under /v1 — set base_url to {root}/v1"
    )
    assert completions == []


def test_a_completion_404_at_a_base_url_without_v1_says_to_add_it():
    with FakeOpenAIServer() as server:  # a server without /models reaches the first completion: the same hint there
        root = f"http://127.0.0.1:{server.port}/"
        with pytest.raises(openai_http.openai.NotFoundError) as raised:
            _chat_once(root)
    assert str(raised.value) == (
        f"404 Not Found at {root.rstrip('/')}/chat/completions: OpenAI-compatible servers serve under /v1 — "
        f"set base_url to {root.rstrip('/')}/v1"
    )


def test_a_404_at_a_base_url_ending_in_v1_keeps_the_servers_own_message():
    with FakeOpenAIServer() as server:
        with pytest.raises(openai_http.openai.NotFoundError) as raised:
            _chat_once(f"http://127.0.0.1:{server.port}/api/v1")  # a wrong prefix, but /v1 is there
    assert str(raised.value).startswith("Error code: 404") and "serve under /v1" not in str(raised.value)
