"""GRPO's reward (`spri_sft.train.grpo_reward.PrincipleReward`): the critic's Stage II verdict on each completion
against its prompt's principles, scaled to [0, 1]; unscored and unanswered critiques are None and counted.

The critic is the fake OpenAI server scripted by `word_critic`: it scores a response by how often it says the
word its principles name, so every expected reward is known in advance.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from support.fake_openai_server import FakeOpenAIServer, FaultPlan

from spri_sft.generate.engine import LoopSettings, PackageRequests
from spri_sft.generate.prompts import PromptSet
from spri_sft.generate.scoring import Verdict
from spri_sft.llm.base import Completion, EndpointConfig
from spri_sft.llm.openai_http import OpenAIChat
from spri_sft.train.grpo_reward import PrincipleReward, reward_of

PRINCIPLES = "Name the word cedar in the answer."
PROMPT = [{"role": "user", "content": "Which wood smells best?"}]


def named_word(principles: str) -> str:
    return re.search(r"the word (\w+)", principles).group(1)


def word_critic(messages, body) -> str:
    """1 + how often the response says the word its principles name (at most 5); the package's Stage II layout."""
    text = messages[-1]["content"]
    response = text.split("### Response to evaluate\n", 1)[1].split("\n\n### Principles", 1)[0]
    principles = text.split("### Principles (the rubric)\n", 1)[1].split("\n\n### Scores", 1)[0]
    score = 1 + min(4, response.lower().split().count(named_word(principles)))
    return f"Feedback: counted. [RESULT] {score}"


def critic_on(server: FakeOpenAIServer, **overrides) -> OpenAIChat:
    settings = dict(backend="openai", model="fake-model", base_url=[server.base_url], timeout=5.0, max_retries=0)
    return OpenAIChat(EndpointConfig(**(settings | overrides)))


def rewarded(reward: PrincipleReward, completions: list[str], **columns) -> list[float | None]:
    async def ask():
        try:
            return await reward(
                prompts=[PROMPT] * len(completions),
                completions=[[{"role": "assistant", "content": c}] for c in completions],
                principles=[PRINCIPLES] * len(completions),
                **columns,
            )
        finally:
            await reward.close()

    return asyncio.run(ask())


def test_each_completion_is_rewarded_by_the_critics_score_against_its_principles_scaled_to_0_1():
    with FakeOpenAIServer(reply_fn=word_critic) as server:
        reward = PrincipleReward(critic_on(server))
        rewards = rewarded(reward, ["pine", "cedar", "cedar and cedar", "cedar " * 9])
    assert rewards == [0.0, 0.25, 0.5, 1.0]
    assert reward.totals["scored"] == 4 and reward.totals["calls"] == 4


def test_the_critic_gets_the_stage_two_critique_request_of_the_package_prompt_set():
    with FakeOpenAIServer(reply_fn=word_critic) as server:
        rewarded(PrincipleReward(critic_on(server)), ["cedar"])
        sent = server.received[-1].body["messages"]
    expected = PackageRequests(PromptSet(), LoopSettings()).response_critique(PROMPT[0]["content"], PRINCIPLES, "cedar")
    assert sent == expected


def test_under_score_expected_the_reward_is_the_mean_of_the_digit_distribution():
    verdict = Verdict("ok", 4, distribution={1: 0.0, 2: 0.0, 3: 0.5, 4: 0.5, 5: 0.0})
    assert reward_of(verdict) == pytest.approx((3.5 - 1) / 4)
    assert reward_of(Verdict("ok", 2)) == 0.25
    assert reward_of(Verdict("no score", None)) is None


def test_a_reply_without_a_score_is_asked_again_then_rewarded_none_and_counted():
    with FakeOpenAIServer(reply_fn=lambda messages, body: "No opinion.") as server:
        reward = PrincipleReward(critic_on(server), loop=LoopSettings(score_retries=2))
        rewards = rewarded(reward, ["cedar"])
        asked = server.stats["ok"]
    assert rewards == [None]
    assert asked == 3  # the critique and its two reminders
    assert reward.totals["unscored"] == 1 and reward.totals["scored"] == 0


def test_a_critic_outage_is_retried_by_the_backend_then_the_completion_scores():
    outage = FaultPlan(fail_first_n=2, fail_first_status=503)
    with FakeOpenAIServer(reply_fn=word_critic, faults=outage) as server:
        reward = PrincipleReward(critic_on(server, max_retries=2))
        rewards = rewarded(reward, ["cedar"])
    assert rewards == [0.25]
    assert reward.totals["failed"] == 0


def test_a_critic_outage_outlasting_the_retries_is_a_none_reward_counted_as_failed_not_a_crash():
    metrics: dict[str, list[float]] = {}
    outage = FaultPlan(fail_first_n=100, fail_first_status=503)
    with FakeOpenAIServer(reply_fn=word_critic, faults=outage) as server:
        reward = PrincipleReward(critic_on(server, max_retries=1))
        rewards = rewarded(reward, ["cedar", "pine"], log_metric=lambda k, v: metrics.setdefault(k, []).append(v))
        attempts = server.stats["requests"]
    assert rewards == [None, None]
    assert attempts == 4  # each critique tried twice: once and one retry
    assert reward.totals["failed"] == 2
    assert metrics["critic/failed"] == [1.0]


class FailingCritic:
    """A backend whose critique raises an error that is no outage: a fault in the code, which must surface."""

    model, score_setting, score_mode = "broken", "parse", "parse"

    async def start(self):
        pass

    async def chat(self, messages) -> Completion:
        raise KeyError("a bug")

    async def close(self):
        pass


def test_an_error_that_is_no_outage_raises():
    with pytest.raises(KeyError):
        rewarded(PrincipleReward(FailingCritic()), ["cedar"])
