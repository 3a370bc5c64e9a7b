"""`prompt_format: raw` and `min_new_tokens`, through both backends.

A raw role's messages become one plain-text prompt in the SPRI authors' Prometheus layout
(`render_raw`), sent as a text completion: to `/v1/completions` of the real fake server, or
straight through the tokenizer of a tiny local model (no chat template).
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from conftest import build_tiny_model
from support.fake_openai_server import (
    CHAT_PATH,
    COMPLETIONS_PATH,
    CRITIC_REPLY,
    FakeOpenAIServer,
    FaultPlan,
)

from spri_sft.llm import build_backends, render_raw
from spri_sft.llm.base import EndpointConfig
from spri_sft.llm.openai_http import OpenAIChat
from spri_sft.llm.transformers_local import TransformersChat

pytestmark = pytest.mark.timeout(120)

USER = [{"role": "user", "content": "Rate this answer. [RESULT]"}]
SYSTEM_USER = [{"role": "system", "content": "You are a fair judge."}, *USER]
REMINDER = [
    *USER,
    {"role": "assistant", "content": "Feedback: good."},
    {"role": "user", "content": "Please end with [RESULT] and a score."},
]


# -- the layout ------------------------------------------------------------------------------


def test_one_user_message_renders_as_the_authors_prometheus_prompt():
    assert render_raw(USER) == "User: Rate this answer. [RESULT] \n\nAssistant: "


def test_a_system_message_comes_first_then_a_blank_line():
    assert render_raw(SYSTEM_USER) == "You are a fair judge.\n\nUser: Rate this answer. [RESULT] \n\nAssistant: "


def test_a_history_continues_the_same_layout():
    assert render_raw([SYSTEM_USER[0], *REMINDER]) == (
        "You are a fair judge.\n\n"
        "User: Rate this answer. [RESULT] \n\nAssistant: Feedback: good.\n\n"
        "User: Please end with [RESULT] and a score. \n\nAssistant: "
    )


@pytest.mark.parametrize(
    "roles",
    [[], ["system"], ["assistant"], ["user", "assistant"], ["user", "user"], ["user", "system", "user"]],
)
def test_shapes_the_layout_cannot_express_are_refused(roles):
    with pytest.raises(ValueError, match="render_raw"):
        render_raw([{"role": role, "content": "x"} for role in roles])


# -- what enters record ids --------------------------------------------------------------------


def test_default_settings_leave_the_decoding_identity_as_it_was():
    assert set(EndpointConfig().decoding()) == {"model", "temperature", "top_p", "top_k", "max_new_tokens"}


def test_raw_format_and_min_new_tokens_change_the_decoding_identity():
    decoding = EndpointConfig(prompt_format="raw", min_new_tokens=30).decoding()
    assert decoding["prompt_format"] == "raw" and decoding["min_new_tokens"] == 30
    assert decoding == EndpointConfig(prompt_format="raw", min_new_tokens=30).decoding()


# -- over HTTP ---------------------------------------------------------------------------------


def http_endpoint(url: str, **overrides) -> EndpointConfig:
    settings = dict(backend="openai", model="fake-model", base_url=[url], timeout=5.0, max_retries=3)
    settings.update(overrides)
    return EndpointConfig(**settings)


def in_loop(make):
    """Build a backend inside a running loop (its HTTP client needs one) and return a runner."""

    async def main(conversations):
        backend = make()
        try:
            return [await backend.chat(messages) for messages in conversations]
        finally:
            await backend.close()

    return lambda conversations: asyncio.run(main(conversations))


def test_a_raw_role_posts_the_rendered_prompt_as_a_text_completion():
    with FakeOpenAIServer() as server:
        run = in_loop(lambda: OpenAIChat(http_endpoint(server.base_url, prompt_format="raw")))
        [reply] = run([SYSTEM_USER])
        [request] = server.received

    assert request.path == COMPLETIONS_PATH
    assert request.body["prompt"] == render_raw(SYSTEM_USER)
    assert "messages" not in request.body
    assert reply.text == CRITIC_REPLY and reply.finish_reason == "stop" and reply.prompt_tokens > 0


def test_base_and_critic_on_one_server_each_keep_their_prompt_format():
    with FakeOpenAIServer() as server:

        async def main():
            base, critic = build_backends(
                http_endpoint(server.base_url), http_endpoint(server.base_url, prompt_format="raw")
            )
            try:
                await base.chat(USER)
                await critic.chat(USER)
            finally:
                await base.close()
            return base, critic

        base, critic = asyncio.run(main())
        paths = [r.path for r in server.received]

    assert base.pool is critic.pool
    assert paths == [CHAT_PATH, COMPLETIONS_PATH]


def test_text_completions_get_the_same_faults_and_retries():
    faults = FaultPlan(fail_first_n=2)
    with FakeOpenAIServer(faults=faults) as server:
        run = in_loop(lambda: OpenAIChat(http_endpoint(server.base_url, prompt_format="raw")))
        [reply] = run([USER])
        prompts = [r.body["prompt"] for r in server.received]

    assert reply.text == CRITIC_REPLY
    assert server.stats["429"] == 2 and prompts == [render_raw(USER)] * 3


@pytest.mark.parametrize("fault", ["rate_malformed", "rate_empty_choices"])
def test_malformed_text_completions_fail_as_malformed(fault):
    with FakeOpenAIServer(faults=FaultPlan(**{fault: 1.0})) as server:
        run = in_loop(lambda: OpenAIChat(http_endpoint(server.base_url, prompt_format="raw", max_retries=1)))
        with pytest.raises(Exception, match="not JSON|without choices"):
            run([USER])
        assert server.stats["requests"] == 2  # one try and one retry


def test_min_new_tokens_is_sent_as_min_tokens():
    with FakeOpenAIServer() as server:
        run = in_loop(lambda: OpenAIChat(http_endpoint(server.base_url, min_new_tokens=30)))
        run([USER])
        unset = in_loop(lambda: OpenAIChat(http_endpoint(server.base_url)))
        unset([USER])
        bodies = [r.body for r in server.received]

    assert bodies[0]["min_tokens"] == 30
    assert "min_tokens" not in bodies[1]


def test_a_server_refusing_min_tokens_is_said_once_then_sent_requests_without_it(caplog):
    with FakeOpenAIServer(unknown_fields={"min_tokens"}) as server:
        url = server.base_url
        run = in_loop(lambda: OpenAIChat(http_endpoint(server.base_url, min_new_tokens=30, max_retries=0)))
        with caplog.at_level(logging.WARNING, logger="spri_sft.llm.openai_http"):
            replies = run([USER, USER, USER])
        bodies = [r.body for r in server.received]

    assert all(r.text == CRITIC_REPLY for r in replies)  # the refusal cost no retry
    assert ["min_tokens" in b for b in bodies] == [True, False, False, False]
    assert server.stats["bad_request"] == 1
    notes = [r.getMessage() for r in caplog.records if "min_tokens" in r.getMessage()]
    assert len(notes) == 1 and url in notes[0]


def test_a_bad_request_about_another_field_is_still_an_error():
    with FakeOpenAIServer(unknown_fields={"top_k"}) as server:
        run = in_loop(lambda: OpenAIChat(http_endpoint(server.base_url, min_new_tokens=30)))
        with pytest.raises(Exception, match="top_k"):
            run([USER])
        assert server.stats["requests"] == 1


# -- in process ---------------------------------------------------------------------------------


def local_endpoint(model_dir, **overrides) -> EndpointConfig:
    settings = dict(model=str(model_dir), max_new_tokens=8, device="cpu", temperature=0.0)
    settings.update(overrides)
    return EndpointConfig(**settings)


def local_chat(config: EndpointConfig, conversations) -> list:
    async def main():
        backend = TransformersChat(config)
        await backend.start()
        try:
            return await asyncio.gather(*(backend.chat(c) for c in conversations))
        finally:
            await backend.close()

    return asyncio.run(main())


def encoded_length(model_dir, text: str) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"])


def test_a_raw_local_prompt_is_the_rendered_text_without_a_chat_template(tiny_model_dir):
    raw = local_chat(local_endpoint(tiny_model_dir, prompt_format="raw"), [SYSTEM_USER])[0]
    chat = local_chat(local_endpoint(tiny_model_dir), [SYSTEM_USER])[0]
    assert raw.prompt_tokens == encoded_length(tiny_model_dir, render_raw(SYSTEM_USER))
    assert raw.prompt_tokens != chat.prompt_tokens


def test_a_raw_local_prompt_gets_bos_when_the_tokenizer_adds_it(tiny_model_dir, tmp_path):
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    bos = tokenizer.bos_token
    tokenizer._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    with_bos = tmp_path / "with-bos"
    tokenizer.save_pretrained(with_bos)
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(with_bos)

    plain = local_chat(local_endpoint(tiny_model_dir, prompt_format="raw"), [USER])[0]
    bos_first = local_chat(local_endpoint(with_bos, prompt_format="raw"), [USER])[0]
    assert bos_first.prompt_tokens == plain.prompt_tokens + 1


def test_raw_format_needs_no_chat_template(tmp_path):
    model_dir = build_tiny_model(tmp_path / "no-template", chat_template=None)
    [reply] = local_chat(local_endpoint(model_dir, prompt_format="raw"), [USER])
    assert reply.prompt_tokens == encoded_length(model_dir, render_raw(USER))


def test_roles_on_one_local_model_keep_their_prompt_formats(tiny_model_dir):
    async def main():
        base, critic = build_backends(
            local_endpoint(tiny_model_dir), local_endpoint(tiny_model_dir, prompt_format="raw")
        )
        await base.start()
        await critic.start()
        try:
            return await asyncio.gather(base.chat(USER), critic.chat(USER))
        finally:
            await base.close()

    chat, raw = asyncio.run(main())
    assert raw.prompt_tokens == encoded_length(tiny_model_dir, render_raw(USER))
    assert chat.prompt_tokens != raw.prompt_tokens


def eager_to_stop(model_dir, directory):
    """The tiny model with its last norm zeroed: every logit is 0, so greedy decoding picks token 0,
    made an end-of-sequence token here - the model stops at once unless told to go on."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.generation_config.eos_token_id = [0, model.config.eos_token_id]
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(directory)
    return directory


def test_min_new_tokens_holds_back_the_end_of_the_reply(tiny_model_dir, tmp_path):
    model_dir = eager_to_stop(tiny_model_dir, tmp_path / "eager")
    [at_once] = local_chat(local_endpoint(model_dir, max_new_tokens=10), [USER])
    [held] = local_chat(local_endpoint(model_dir, max_new_tokens=10, min_new_tokens=5), [USER])

    assert at_once.completion_tokens == 1 and at_once.finish_reason == "stop"
    assert held.completion_tokens == 6 and held.finish_reason == "stop"  # five tokens, then the stop


# -- a whole run ----------------------------------------------------------------------------------


def test_a_run_with_a_raw_critic_scores_every_round_through_text_completions(tmp_path):
    import json

    from spri_sft.generate.config import GenerateConfig
    from spri_sft.generate.inputs import PromptSource
    from spri_sft.generate.run import generate

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"How do tides work, take {i}?"}) + "\n" for i in range(3)))
    with FakeOpenAIServer() as base_server, FakeOpenAIServer() as critic_server:
        config = GenerateConfig(
            output_dir=str(tmp_path / "out"),
            prompts=PromptSource(path=str(prompts)),
            base=http_endpoint(base_server.base_url),
            critic=http_endpoint(critic_server.base_url, prompt_format="raw", min_new_tokens=30),
            progress=False,
        )
        summary = generate(config)
        base_paths = {r.path for r in base_server.received}
        critic_bodies = [r.body for r in critic_server.received]

    assert summary["status"] == {"accepted": 3}
    assert base_paths == {CHAT_PATH}
    assert len(critic_bodies) == 2 * 3  # one critique of the principles and one of the response per prompt
    for body in critic_bodies:
        assert "messages" not in body and body["min_tokens"] == 30
        assert body["prompt"].startswith("User: ") and body["prompt"].endswith(" \n\nAssistant: ")
