"""The loop rules of every mode, driven by a scripted backend that replies from a queue."""

from __future__ import annotations

import asyncio

import pytest

from spri_sft.generate.engine import Engine, LoopSettings, Session
from spri_sft.generate.prompts import PromptSet
from spri_sft.llm.base import Completion


class ScriptedBackend:
    """Replies with the next scripted text and keeps every request it received."""

    def __init__(self, model: str, replies: list[str]):
        self.model = model
        self.replies = list(replies)
        self.requests: list[list[dict]] = []

    async def chat(self, messages):
        self.requests.append(messages)
        text = self.replies.pop(0)
        return Completion(text=text, prompt_tokens=10, completion_tokens=len(text.split()), finish_reason="stop")


def run(mode, base_replies, critic_replies, **loop):
    base = ScriptedBackend("base-model", base_replies)
    critic = ScriptedBackend("critic-model", critic_replies)
    engine = Engine(mode, PromptSet(), LoopSettings(**loop))
    record = asyncio.run(engine.run("How do tides work?", Session(base, critic)))
    assert not base.replies and not critic.replies, "every scripted reply should have been used"
    return record, base, critic


def scores(record, stage):
    return [r["score"] for r in record["rounds"] if r["stage"] == stage]


def test_spri_accepts_both_stages_at_round_one():
    record, base, critic = run("spri", ["P0", "R0"], ["ok [RESULT] 5", "ok [RESULT] 4"])
    assert record["status"] == "accepted"
    assert (record["principles"], record["response"]) == ("P0", "R0")
    assert scores(record, "principles") == [5] and scores(record, "response") == [4]
    assert record["usage"]["base"]["calls"] == 2 and record["usage"]["critic"]["calls"] == 2


def test_spri_accepts_after_revisions_and_keeps_every_version():
    record, _, _ = run(
        "spri",
        ["P0", "P1", "P2", "R0", "R1"],
        ["weak [RESULT] 2", "better [RESULT] 3", "good [RESULT] 4", "off-topic [RESULT] 1", "fine [RESULT] 5"],
    )
    assert record["status"] == "accepted"
    assert record["principles"] == "P2" and record["response"] == "R1"
    assert [r["text"] for r in record["rounds"]] == ["P0", "P1", "P2", "R0", "R1"]
    assert scores(record, "principles") == [2, 3, 4] and scores(record, "response") == [1, 5]
    assert record["rounds"][0]["critique"] == "weak"


def test_exhausted_stage_keeps_the_last_revision():
    record, base, critic = run(
        "spri",
        ["P0", "P1", "P2", "R0"],
        ["[RESULT] 1", "[RESULT] 2", "[RESULT] 3", "[RESULT] 5"],
        max_rounds=3,
    )
    assert record["status"] == "max_rounds"
    assert record["principles"] == "P2"
    assert scores(record, "principles") == [1, 2, 3]
    # max_rounds critiques, max_rounds - 1 revisions, then Stage II starts from the last revision.
    assert "P2" in base.requests[3][0]["content"]


def test_threshold_is_inclusive():
    record, _, _ = run("spri", ["P0", "R0", "R1"], ["[RESULT] 3", "[RESULT] 2", "[RESULT] 3"], threshold=3)
    assert scores(record, "principles") == [3] and scores(record, "response") == [2, 3]
    assert record["status"] == "accepted"


def test_unparseable_score_is_asked_again_then_scored():
    record, _, critic = run("spri", ["P0", "R0"], ["Looks fine to me.", "Feedback: fine [RESULT] 4", "[RESULT] 5"])
    assert scores(record, "principles") == [4]
    retry = critic.requests[1]
    assert retry[-2] == {"role": "assistant", "content": "Looks fine to me."}
    assert "[RESULT]" in retry[-1]["content"]


def test_round_stays_unscored_after_retries_and_counts_as_failing():
    record, base, critic = run(
        "spri",
        ["P0", "P1", "R0"],
        ["no score", "still none", "[RESULT] 5", "[RESULT] 5"],
        score_retries=1,
    )
    assert scores(record, "principles") == [None, 5]
    assert record["rounds"][0]["critique"] == "still none"
    assert record["principles"] == "P1"
    # The revision request carries the unscored round's feedback.
    assert "still none" in base.requests[1][0]["content"]


def test_response_refiner_does_not_see_the_principles():
    record, base, _ = run(
        "spri", ["SECRET-PRINCIPLES", "R0", "R1"], ["[RESULT] 5", "[RESULT] 2", "[RESULT] 5"]
    )
    answer_request, refine_request = base.requests[1], base.requests[2]
    assert "SECRET-PRINCIPLES" in answer_request[0]["content"]
    assert all("SECRET-PRINCIPLES" not in m["content"] for m in refine_request)


def test_response_critic_gets_the_principles_as_rubric():
    _, _, critic = run("spri", ["RUBRIC-TEXT", "R0"], ["[RESULT] 5", "[RESULT] 5"])
    assert "RUBRIC-TEXT" in critic.requests[1][0]["content"]


def test_few_shot_principles_prompt_carries_the_seed_pairs():
    _, base, _ = run("spri", ["P0", "R0"], ["[RESULT] 5", "[RESULT] 5"])
    roles = [m["role"] for m in base.requests[0]]
    assert roles == ["system"] + ["user", "assistant"] * 6 + ["user"]


def test_zero_shot_principles_prompt_has_no_examples():
    _, base, _ = run("spri", ["P0", "R0"], ["[RESULT] 5", "[RESULT] 5"], few_shot=False)
    assert [m["role"] for m in base.requests[0]] == ["system", "user"]


def test_direct_mode_answers_once_without_a_critic():
    record, _, critic = run("direct", ["Answer"], [])
    assert record["response"] == "Answer" and record["principles"] is None
    assert record["status"] == "accepted" and scores(record, "response") == [None]
    assert critic.requests == [] and "critic" not in record["usage"]


def test_self_refine_mode_uses_the_base_model_as_its_own_critic():
    record, base, critic = run("self-refine", ["R0", "[RESULT] 2", "R1", "[RESULT] 4"], [])
    assert record["response"] == "R1" and scores(record, "response") == [2, 4]
    assert critic.requests == [] and record["usage"]["base"]["calls"] == 4


@pytest.mark.parametrize("mode, marker", [("seed-principles", "normal wear and tear"), ("constitution", "Be honest")])
def test_fixed_principle_modes_put_their_rules_in_the_system_prompt(mode, marker):
    record, base, critic = run(mode, ["R0"], ["[RESULT] 5"])
    assert marker in base.requests[0][0]["content"] and base.requests[0][0]["role"] == "system"
    assert marker in critic.requests[0][0]["content"]
    assert record["principles"] and marker in record["principles"]
    assert [r["stage"] for r in record["rounds"]] == ["response"]


def test_constitution_has_sixteen_rules():
    assert len(PromptSet().constitution_text().splitlines()) == 16


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown mode"):
        Engine("best-of-n", PromptSet(), LoopSettings())
