"""Generation end to end with the in-process transformers backend on a real (tiny) model."""

from __future__ import annotations

import asyncio
import json
import shutil

import pytest
from conftest import build_tiny_model

from spri_sft.errors import UserError
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.run import generate
from spri_sft.llm.base import EndpointConfig
from spri_sft.llm.transformers_local import TransformersChat


def tiny_endpoint(model_dir, **overrides) -> EndpointConfig:
    return EndpointConfig(model=str(model_dir), max_new_tokens=12, device="cpu", **overrides)


def test_generate_writes_complete_records(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question number {i}?"}) + "\n" for i in range(4)))
    config = GenerateConfig(output_dir=str(tmp_path / "out"), progress=False)
    config.prompts.path = str(prompts)
    config.base = tiny_endpoint(tiny_model_dir)
    config.critic = tiny_endpoint(tiny_model_dir, temperature=0.0)
    config.loop.max_rounds = 2
    config.loop.score_retries = 1

    summary = generate(config)

    lines = (tmp_path / "out/records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 4 and len({r["id"] for r in records}) == 4
    for record in records:
        assert record["status"] in ("accepted", "max_rounds")
        assert record["principles"] is not None and record["response"] is not None
        assert {r["stage"] for r in record["rounds"]} == {"principles", "response"}
        base, critic = record["usage"]["base"], record["usage"]["critic"]
        assert base["model"] == str(tiny_model_dir)
        assert base["calls"] >= 2 and critic["calls"] >= 2
        assert base["prompt_tokens"] > 0 and base["completion_tokens"] > 0
    assert summary["records"] == 4 and sum(summary["status"].values()) == 4
    assert (tmp_path / "out/config.yaml").exists() and (tmp_path / "out/summary.json").exists()


def test_concurrent_requests_share_one_generate_batch(tiny_model_dir):
    async def main():
        backend = TransformersChat(tiny_endpoint(tiny_model_dir, max_concurrency=8, batch_wait_ms=200))
        await backend.start()
        prompts = [[{"role": "user", "content": "word " * (i + 1)}] for i in range(6)]
        replies = await asyncio.gather(*(backend.chat(p) for p in prompts))
        await backend.close()
        return backend._local.batch_sizes, replies

    batch_sizes, replies = asyncio.run(main())
    assert batch_sizes == [6]
    # Left padding: each row's prompt token count is its own length, not the padded width.
    assert len({r.prompt_tokens for r in replies}) == 6
    assert all(r.finish_reason in ("stop", "length") for r in replies)
    assert all(r.completion_tokens <= 12 for r in replies)


def test_batched_greedy_output_equals_unbatched(tiny_model_dir):
    config = tiny_endpoint(tiny_model_dir, temperature=0.0, batch_wait_ms=200)
    prompts = [[{"role": "user", "content": text}] for text in ("short", "a much longer question here")]

    async def one_by_one():
        backend = TransformersChat(config)
        return [await backend.chat(p) for p in prompts]

    async def together():
        backend = TransformersChat(config)
        return await asyncio.gather(*(backend.chat(p) for p in prompts))

    alone, batched = asyncio.run(one_by_one()), asyncio.run(together())
    assert all(r.completion_tokens > 1 for r in alone)
    assert [r.text for r in alone] == [r.text for r in batched]


def test_prompts_sharing_a_long_prefix_run_it_once_and_reply_as_alone(tiny_model_dir):
    config = tiny_endpoint(tiny_model_dir, temperature=0.0, batch_wait_ms=200)
    template = "Answer the question below as the principles say. " * 8  # one stage's shared instructions
    prompts = [[{"role": "user", "content": template + q}] for q in ("short", "a much longer question here", "why?")]

    async def one_by_one():
        backend = TransformersChat(config)
        return [await backend.chat(p) for p in prompts], backend._local.shared_prefix_tokens

    async def together():
        backend = TransformersChat(config)
        return await asyncio.gather(*(backend.chat(p) for p in prompts)), backend._local

    (alone, shared_alone), (batched, local) = asyncio.run(one_by_one()), asyncio.run(together())
    assert shared_alone == [] and local.batch_sizes == [3]
    assert len(local.shared_prefix_tokens) == 1 and local.shared_prefix_tokens[0] >= 32  # ran once for the batch
    assert all(r.completion_tokens > 1 for r in alone) and len({r.text for r in alone}) == 3  # rows can't be mixed up
    assert [r.text for r in alone] == [r.text for r in batched]
    assert [r.prompt_tokens for r in alone] == [r.prompt_tokens for r in batched]


def test_a_sliding_window_model_gets_a_left_padded_batch_not_a_shared_prefix(tiny_model_dir, tmp_path):
    # Middle padding would take cache slots of a sliding window, so such a model never shares a prefix.
    model_dir = tmp_path / "sliding"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config.update(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=16)
    (model_dir / "config.json").write_text(json.dumps(config))
    template = "Answer the question below as the principles say. " * 8
    prompts = [[{"role": "user", "content": template + q}] for q in ("short", "why?")]

    async def together():
        backend = TransformersChat(tiny_endpoint(model_dir, temperature=0.0, batch_wait_ms=200))
        replies = await asyncio.gather(*(backend.chat(p) for p in prompts))
        return replies, backend._local

    replies, local = asyncio.run(together())
    assert local.batch_sizes == [2] and local.shared_prefix_tokens == []
    assert all(r.completion_tokens >= 1 for r in replies)


def test_base_and_critic_on_one_local_model_load_it_once(tiny_model_dir):
    from spri_sft.llm import build_backends

    base, critic = build_backends(tiny_endpoint(tiny_model_dir), tiny_endpoint(tiny_model_dir, temperature=0.0))
    assert base is not critic and base._local is critic._local


def test_tokenizer_without_chat_template_is_refused(tmp_path):
    model_dir = build_tiny_model(tmp_path / "no-template", chat_template=None)

    async def main():
        await TransformersChat(tiny_endpoint(model_dir)).start()

    with pytest.raises(UserError, match="has no chat template"):
        asyncio.run(main())
