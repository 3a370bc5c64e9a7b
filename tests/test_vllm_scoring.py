"""`score: constrained | expected` against the real vLLM (the CPU build in .venv-vllm, serving SmolLM2).

vLLM's request fields have been renamed before (`guided_regex` was removed in 0.12 for
`structured_outputs`), so this is the test that notices the next rename: the probe must pass,
and the replies must follow the critic format. Skipped without `.venv-vllm`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from spri_sft.llm.base import EndpointConfig
from spri_sft.llm.critic_format import CRITIC_REGEX, scored_digit
from spri_sft.llm.openai_http import OpenAIChat

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1200)]
SERVED = "smollm2-under-test"
CRITIQUE = [{"role": "user", "content": (
    "Rate this answer to 'What is 2 + 2?' from 1 to 5. Answer: '4, because two pairs make four.'\n"
    "Write 'Feedback: ' and your reasons, then '[RESULT] ' and the score."
)}]  # fmt: skip


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory):
    if not (REPO / ".venv-vllm" / "bin" / "python").exists():
        pytest.skip("no .venv-vllm (build it with `bash scripts/setup.sh --vllm`)")
    from spri_sft.models import DEFAULT_MODEL, resolve_model
    from spri_sft.serve import ManagedServers, VLLMServer

    server = VLLMServer(
        model=resolve_model(DEFAULT_MODEL), served_model_name=SERVED, dtype="bfloat16", max_model_len=2048,
        env={"VLLM_CPU_KVCACHE_SPACE": "1"}, startup_timeout=900,
    )  # fmt: skip
    with ManagedServers([server], log_dir=tmp_path_factory.mktemp("vllm-logs")) as servers:
        yield servers.base_urls[0][0]


def critiques(url: str, score: str, prompt_format: str, count: int = 3):
    config = EndpointConfig(backend="openai", model=SERVED, base_url=[url], score=score, prompt_format=prompt_format,
                            max_new_tokens=48, timeout=300.0, max_retries=1)  # fmt: skip

    async def main():
        backend = OpenAIChat(config)
        try:
            await backend.start()
            replies = await asyncio.gather(*(backend.critique(CRITIQUE) for _ in range(count)))
            return backend.score_mode, replies
        finally:
            await backend.close()

    return asyncio.run(main())


@pytest.mark.parametrize("score, prompt_format", [("constrained", "chat"), ("expected", "chat"), ("expected", "raw")])
def test_real_vllm_scores_every_critique_in_the_critic_format(vllm_url, caplog, score, prompt_format):
    caplog.set_level(logging.WARNING, logger="spri_sft")
    mode, replies = critiques(vllm_url, score, prompt_format)

    assert mode == score, caplog.text  # the probe passed: no fallback notice
    for reply in replies:
        assert reply.text.startswith("Feedback: ") and reply.score == scored_digit(reply.text)
        if reply.finish_reason != "length":  # a cut feedback is continued from its text: no full regex match
            assert re.fullmatch(CRITIC_REGEX, reply.text), reply.text
        if score == "expected":
            assert sorted(reply.score_distribution) == [1, 2, 3, 4, 5]
            assert sum(reply.score_distribution.values()) == pytest.approx(1.0)
