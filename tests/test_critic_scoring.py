"""A critic reply that always has a score: `score: parse | constrained | expected` per role.

`constrained` makes the reply "Feedback: ... [RESULT] n" (the server's structured outputs, or the
local model's digit logits); `expected` also reads the probability of each digit after "[RESULT] "
and accepts on their mean. A server that cannot do it is said in one line and scored by parsing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re

import pytest
from support.fake_openai_server import COMPLETIONS_PATH, FakeOpenAIServer

from spri_sft.generate.scoring import Verdict
from spri_sft.llm.base import EndpointConfig
from spri_sft.llm.critic_format import (
    CRITIC_REGEX,
    digit_distribution,
    likeliest,
    mean_score,
    score_prefix,
    scored_digit,
)
from spri_sft.llm.openai_http import OpenAIChat

CRITIQUE = [{"role": "user", "content": "Score this answer 1-5 and end with [RESULT] <score>."}]
UNSCORED_REPLY = "The answer is vague and cites nothing."  # what a weak critic writes: no score at all
# The fake server's default digit log-probabilities, renormalised over the digits (its "\n" left out).
FAKE_DISTRIBUTION = {1: 0.0, 2: 0.0, 3: 0.09 / 0.9, 4: 0.144 / 0.9, 5: 0.666 / 0.9}


def unscored(messages, body):
    return UNSCORED_REPLY


def http_critic(url: str, **overrides) -> EndpointConfig:
    settings = dict(backend="openai", model="fake-model", base_url=[url], timeout=5.0, max_retries=0)
    settings.update(overrides)
    return EndpointConfig(**settings)


def critique_with(config: EndpointConfig, messages=CRITIQUE):
    """Start the role (its probe included), ask one critique, return (backend, reply)."""

    async def main():
        backend = OpenAIChat(config)
        try:
            await backend.start()
            reply = await backend.critique(messages) if backend.score_mode != "parse" else await backend.chat(messages)
            return backend, reply
        finally:
            await backend.close()

    return asyncio.run(main())


# -- the format and the statistic ------------------------------------------------------------------


def test_digit_tokens_with_or_without_a_space_count_and_other_tokens_are_left_out():
    distribution = digit_distribution(
        {" 4": math.log(0.3), "4": math.log(0.1), "5": math.log(0.4), "\n": math.log(0.2)}
    )
    assert distribution == pytest.approx({1: 0.0, 2: 0.0, 3: 0.0, 4: 0.5, 5: 0.5})


def test_no_digit_among_the_top_tokens_gives_no_distribution():
    assert digit_distribution({"\n": -0.1, "The": -2.0, "10": -3.0}) is None


def test_the_mean_and_the_likeliest_digit():
    distribution = {1: 0.0, 2: 0.1, 3: 0.2, 4: 0.4, 5: 0.3}
    assert mean_score(distribution) == pytest.approx(3.9)
    assert likeliest(distribution) == 4


def test_expected_accepts_on_the_mean_not_on_the_likeliest_digit():
    verdict = Verdict("fine", 4, distribution={1: 0.0, 2: 0.1, 3: 0.2, 4: 0.4, 5: 0.3}, mode="expected")
    assert not verdict.passes(4)  # likeliest digit 4, but the mean is 3.9
    assert verdict.passes(3.9)


def test_an_expected_round_records_its_distribution_mean_and_mode():
    fields = Verdict("fine", 5, distribution={1: 0.0, 2: 0.0, 3: 0.0, 4: 0.25, 5: 0.75}, mode="expected").round_fields()
    assert fields == {
        "critique": "fine", "score": 5, "score_mode": "expected",
        "score_distribution": {"1": 0.0, "2": 0.0, "3": 0.0, "4": 0.25, "5": 0.75}, "score_mean": 4.75,
    }  # fmt: skip


def test_a_parsed_round_keeps_its_old_fields():
    assert Verdict("fine", 3).round_fields() == {"critique": "fine", "score": 3}


def test_a_reply_cut_before_its_marker_is_continued_from_what_it_has():
    assert score_prefix("Feedback: it rambles and") == "Feedback: it rambles and [RESULT] "
    assert score_prefix("Feedback: short. [RESULT] 4") == "Feedback: short. [RESULT] "
    assert scored_digit("Feedback: short. [RESULT] 4") == 4 and scored_digit("Feedback: cut") is None


def test_the_score_mode_enters_the_decoding_identity_only_when_not_parse():
    assert "score" not in EndpointConfig().decoding()
    assert EndpointConfig(score="expected").decoding()["score"] == "expected"


# -- the openai backend against the fake server ----------------------------------------------------


def test_constrained_sends_the_critic_regex_and_the_reply_always_has_a_score():
    with FakeOpenAIServer(reply_fn=unscored) as server:
        backend, reply = critique_with(http_critic(server.base_url, score="constrained"))
        critique_body = server.received[-1].body

    assert backend.score_mode == "constrained"
    assert critique_body["structured_outputs"] == {"regex": CRITIC_REGEX}
    assert re.fullmatch(CRITIC_REGEX, reply.text) and reply.score == scored_digit(reply.text)
    assert reply.score_distribution is None


def test_a_constrained_reply_cut_by_max_tokens_gets_its_digit_in_one_more_request():
    with FakeOpenAIServer(reply_fn=unscored) as server:
        _, reply = critique_with(http_critic(server.base_url, score="constrained", max_new_tokens=3))
        digit_body = server.received[-1].body

    assert reply.text.endswith("[RESULT] 5") and reply.score == 5
    assert digit_body["max_tokens"] == 1 and digit_body["messages"][-1]["content"].endswith("[RESULT] ")


def test_expected_reads_the_digit_distribution_after_the_result_marker():
    with FakeOpenAIServer(reply_fn=unscored) as server:
        _, reply = critique_with(http_critic(server.base_url, score="expected", min_new_tokens=30))
        digit_body = server.received[-1].body

    assert reply.score_distribution == pytest.approx(FAKE_DISTRIBUTION, abs=1e-6)
    assert reply.score == 5 and reply.text.endswith("[RESULT] 5")
    assert digit_body["continue_final_message"] is True and digit_body["add_generation_prompt"] is False
    assert digit_body["logprobs"] is True and digit_body["top_logprobs"] == 20
    assert "min_tokens" not in digit_body and digit_body["max_tokens"] == 1
    assert digit_body["messages"][:-1] == CRITIQUE and digit_body["messages"][-1]["role"] == "assistant"


def test_expected_with_a_raw_critic_continues_the_text_prompt():
    with FakeOpenAIServer(reply_fn=unscored) as server:
        _, reply = critique_with(http_critic(server.base_url, score="expected", prompt_format="raw"))
        digit_request = server.received[-1]

    assert digit_request.path == COMPLETIONS_PATH
    assert digit_request.body["prompt"].endswith("\n\nAssistant: Feedback: " + UNSCORED_REPLY + " [RESULT] ")
    assert digit_request.body["logprobs"] == 20
    assert reply.score_distribution == pytest.approx(FAKE_DISTRIBUTION, abs=1e-6)


def notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "critic score" in r.getMessage()]


@pytest.mark.parametrize(
    "server_settings, said",
    [
        (dict(structured_outputs="ignore"), "ignored"),
        (dict(unknown_fields=("structured_outputs",)), "refused (HTTP 400)"),
    ],
)
def test_a_server_without_structured_outputs_is_said_in_one_line_and_falls_back_to_parse(caplog, server_settings, said):
    caplog.set_level(logging.WARNING, logger="spri_sft")
    with FakeOpenAIServer(reply_fn=unscored, **server_settings) as server:
        backend, reply = critique_with(http_critic(server.base_url, score="constrained"))
        last_body = server.received[-1].body

    [notice] = notices(caplog)
    assert said in notice and "score: parse" in notice and "\n" not in notice
    assert backend.score_mode == "parse" and backend.score_setting == "constrained"
    assert "structured_outputs" not in last_body and reply.text == UNSCORED_REPLY


def test_expected_on_a_server_without_logprobs_falls_back_to_parse(caplog):
    caplog.set_level(logging.WARNING, logger="spri_sft")
    with FakeOpenAIServer(reply_fn=unscored, logprobs=False) as server:
        backend, _ = critique_with(http_critic(server.base_url, score="expected"))

    [notice] = notices(caplog)
    assert "logprobs" in notice and "did not send" in notice
    assert backend.score_mode == "parse"


def test_parse_sends_no_probe_and_no_constraint():
    with FakeOpenAIServer(reply_fn=unscored) as server:
        _, reply = critique_with(http_critic(server.base_url))
        bodies = [r.body for r in server.received]

    assert len(bodies) == 1 and "structured_outputs" not in bodies[0] and reply.score is None


# -- a whole run -------------------------------------------------------------------------------------


def run_generate(tmp_path, critic: EndpointConfig, base_url: str) -> tuple[dict, list[dict]]:
    from spri_sft.generate.config import GenerateConfig
    from spri_sft.generate.inputs import PromptSource
    from spri_sft.generate.run import generate

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Why is the sky blue, take {i}?"}) + "\n" for i in range(3)))
    config = GenerateConfig(
        output_dir=str(tmp_path / "out"),
        prompts=PromptSource(path=str(prompts)),
        base=http_critic(base_url),
        critic=critic,
        progress=False,
    )
    summary = generate(config)
    records = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    return summary, records


def test_a_spri_run_with_an_expected_critic_leaves_no_round_unscored(tmp_path):
    with FakeOpenAIServer(reply_fn=unscored) as critic_server, FakeOpenAIServer() as base_server:
        summary, records = run_generate(
            tmp_path, http_critic(critic_server.base_url, score="expected"), base_server.base_url
        )

    assert summary["unscored_rounds"] == 0
    assert summary["unscored_rate"] == {"principles": 0.0, "response": 0.0}
    assert summary["status"] == {"accepted": 3}  # mean 4.64 >= threshold 4
    for round_ in (r for record in records for r in record["rounds"]):
        assert round_["score_mode"] == "expected" and round_["score"] == 5
        assert round_["score_mean"] == pytest.approx(mean_score(FAKE_DISTRIBUTION), abs=1e-4)
        assert round_["critique"] == UNSCORED_REPLY  # the feedback the refiner gets: no label, no marker


def test_the_same_run_scored_by_parsing_leaves_every_round_unscored(tmp_path):
    with FakeOpenAIServer(reply_fn=unscored) as critic_server, FakeOpenAIServer() as base_server:
        summary, records = run_generate(tmp_path, http_critic(critic_server.base_url), base_server.base_url)

    assert summary["unscored_rate"] == {"principles": 1.0, "response": 1.0}
    assert all("score_mode" not in r for record in records for r in record["rounds"])


def test_a_run_on_a_server_that_ignores_the_constraint_records_the_mode_it_really_used(tmp_path):
    with FakeOpenAIServer(reply_fn=unscored, structured_outputs="ignore") as critic_server, FakeOpenAIServer() as base:
        _, records = run_generate(tmp_path, http_critic(critic_server.base_url, score="constrained"), base.base_url)

    assert {r["score_mode"] for record in records for r in record["rounds"] if r["critique"] is not None} == {"parse"}


# -- the transformers backend on the tiny model ----------------------------------------------------


def local_critique(model_dir, score: str, prompt_format: str = "chat", conversations=(CRITIQUE, CRITIQUE[:])):
    from spri_sft.llm.transformers_local import TransformersChat

    config = EndpointConfig(model=str(model_dir), device="cpu", max_new_tokens=12, temperature=0.0, score=score,
                            prompt_format=prompt_format)  # fmt: skip

    async def main():
        backend = TransformersChat(config)
        try:
            await backend.start()
            replies = await asyncio.gather(*(backend.critique(list(c)) for c in conversations))
            return backend, replies
        finally:
            await backend.close()

    return asyncio.run(main())


def test_a_local_constrained_critique_is_in_the_critic_format(tiny_model_dir):
    _, replies = local_critique(tiny_model_dir, "constrained")
    for reply in replies:
        assert re.fullmatch(CRITIC_REGEX, reply.text), reply.text
        assert reply.score == scored_digit(reply.text) and reply.score_distribution is None


@pytest.mark.parametrize("prompt_format", ["chat", "raw"])
def test_a_local_expected_critique_is_the_softmax_of_the_five_digits(tiny_model_dir, prompt_format):
    backend, [reply, _] = local_critique(tiny_model_dir, "expected", prompt_format)
    distribution = reply.score_distribution

    assert sorted(distribution) == [1, 2, 3, 4, 5] and sum(distribution.values()) == pytest.approx(1.0)
    assert reply.score == likeliest(distribution) and reply.text.endswith(f"[RESULT] {reply.score}")
    # The one-pass reading equals each continuation's own log-probability, renormalised.
    local = backend._local
    text = reply.text.rsplit(" ", 1)[0]  # "... [RESULT]"
    if prompt_format == "raw":
        from spri_sft.llm import render_raw

        prefix = render_raw(CRITIQUE) + text
    else:
        prefix = local.tokenizer.apply_chat_template(CRITIQUE, tokenize=False, add_generation_prompt=True) + text
    candidates = [
        local.tokenizer(f"{prefix} {d}", add_special_tokens=prompt_format == "raw")["input_ids"] for d in range(1, 6)
    ]
    shared = min(len(c) for c in candidates) - 1
    by_sequence = local._sequence_logprobs(candidates, shared)
    total = sum(math.exp(x) for x in by_sequence)
    assert [distribution[d] for d in range(1, 6)] == pytest.approx([math.exp(x) / total for x in by_sequence], rel=1e-4)


def test_batched_local_critiques_score_each_row_as_alone(tiny_model_dir):
    longer = [{"role": "user", "content": "A much longer critique request, so that the batch is left-padded. " * 3}]
    _, [short_in_batch, _] = local_critique(tiny_model_dir, "expected", conversations=(CRITIQUE, longer))
    _, [short_alone] = local_critique(tiny_model_dir, "expected", conversations=(CRITIQUE,))
    assert short_in_batch.text == short_alone.text
    assert [short_in_batch.score_distribution[d] for d in range(1, 6)] == pytest.approx(
        [short_alone.score_distribution[d] for d in range(1, 6)], abs=1e-4
    )


# -- summary.json and the report ----------------------------------------------------------------------


def test_the_report_shows_each_stages_unscored_rate(tmp_path):
    from test_report import BASE_MC1, report_of, table_row

    from spri_sft.config import from_dict
    from spri_sft.pipeline.config import PipelineConfig
    from spri_sft.pipeline.report import COMPARISON_COLUMNS, build_report, comparison_rows, write_report

    report_of(tmp_path, {"spri": (BASE_MC1, [0.5] * 40)})  # the stages' files, by hand
    summary_file = tmp_path / "generate" / "spri" / "summary.json"
    summary = json.loads(summary_file.read_text())
    summary_file.write_text(json.dumps({**summary, "unscored_rate": {"principles": 0.25, "response": 0.0}}))
    config = from_dict(PipelineConfig, {"output_dir": str(tmp_path), "modes": ["spri"]})
    report = build_report(config, tmp_path, "run", "student", {"file": "tqa.json", "source": "tqa.json"})

    assert table_row(write_report(report, tmp_path), "SFT on spri")[4] == "25% / 0%"
    rows = comparison_rows(report)
    assert all(len(row) == len(COMPARISON_COLUMNS) for row in rows)
    assert dict(zip(COMPARISON_COLUMNS, rows[1]))["principles_unscored_rate"] == 0.25


@pytest.mark.slow
def test_the_embedded_default_critic_leaves_no_reply_unscored(tmp_path):
    from pathlib import Path

    from spri_sft.config import load_config
    from spri_sft.generate.config import GenerateConfig
    from spri_sft.generate.run import generate

    recipe = Path(__file__).resolve().parents[1] / "recipes/smollm2-135m-instruct/generate/spri.yaml"
    config = load_config(GenerateConfig, [
        "--config", str(recipe), "--output_dir", str(tmp_path), "--prompts.limit", "2",
        "--base.max_new_tokens", "48", "--critic.max_new_tokens", "48", "--progress", "false",
    ])  # fmt: skip
    summary = generate(config)

    assert config.critic.score == "expected"
    assert summary["unscored_rounds"] == 0 and set(summary["unscored_rate"].values()) == {0.0}
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    for round_ in (r for record in records for r in record["rounds"]):
        assert sum(round_["score_distribution"].values()) == pytest.approx(1.0, abs=1e-3)
