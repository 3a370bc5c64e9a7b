"""The loop rules of every mode, driven by a scripted backend that replies from a queue."""

from __future__ import annotations

import asyncio
import json

import pytest

from spri_sft.errors import UserError
from spri_sft.generate.engine import (
    MODE_ROLES,
    MODES,
    TABLE4_MODES,
    Engine,
    LoopSettings,
    Session,
    canonical_mode,
    mode_identity,
)
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.prompts import SELF_INSTRUCT_DEMONSTRATIONS, PromptSet, self_instruct_prompt
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
    record, base, _ = run("spri", ["SECRET-PRINCIPLES", "R0", "R1"], ["[RESULT] 5", "[RESULT] 2", "[RESULT] 5"])
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


def test_self_refine_gives_feedback_on_the_latest_version_not_the_first_draft():
    # The released script scores the first draft every round; here each feedback sees the newest refinement.
    _, base, _ = run("self-refine", ["DRAFT-0", "[RESULT] 2", "REFINED-1", "[RESULT] 5"], [])
    second_feedback = base.requests[3][-1]["content"]
    assert "REFINED-1" in second_feedback and "DRAFT-0" not in second_feedback


def test_self_refine_refines_after_the_last_failing_feedback_and_keeps_that_refinement():
    record, base, _ = run("self-refine", ["R0", "[RESULT] 1", "R1", "[RESULT] 2", "R2"], [], max_rounds=2)
    assert record["response"] == "R2" and record["status"] == "max_rounds"
    assert scores(record, "response") == [1, 2, None]
    assert [r["text"] for r in record["rounds"]] == ["R0", "R1", "R2"]


def test_self_refine_refines_from_an_unscored_feedback_even_when_unscored_is_accept():
    record, _, _ = run(
        "self-refine", ["R0", "no score here", "R1", "[RESULT] 5"], [], score_retries=0, unscored="accept"
    )
    assert record["response"] == "R1" and scores(record, "response") == [None, 5]


def test_unscored_accept_keeps_the_current_version_and_ends_the_stage():
    record, base, critic = run(
        "spri", ["P0", "R0"], ["I cannot decide.", "[RESULT] 5"], score_retries=0, unscored="accept"
    )
    assert record["principles"] == "P0" and record["response"] == "R0"
    assert scores(record, "principles") == [None] and scores(record, "response") == [5]
    assert record["status"] == "max_rounds"
    assert len(base.requests) == 2 and len(critic.requests) == 2


@pytest.mark.parametrize(
    "mode, marker",
    [("seed-principles", "normal wear and tear"), ("self-align", "Be accurate"), ("constitution", "Be accurate")],
)
def test_fixed_rule_modes_answer_once_with_their_rules_in_the_system_prompt(mode, marker):
    record, base, critic = run(mode, ["R0"], [])
    assert base.requests[0][0]["role"] == "system" and marker in base.requests[0][0]["content"]
    assert base.requests[0][1] == {"role": "user", "content": "How do tides work?"}
    assert "128" not in base.requests[0][0]["content"]  # no word cap, as released
    assert record["response"] == "R0" and record["status"] == "accepted" and critic.requests == []
    assert record["principles"] is None and "critic" not in record["usage"]


def test_constitution_is_an_alias_of_self_align():
    assert Engine("constitution", PromptSet(), LoopSettings()).mode == "self-align"
    assert mode_identity("constitution", PromptSet(), LoopSettings()) == mode_identity(
        "self-align", PromptSet(), LoopSettings()
    )


@pytest.mark.parametrize(
    "mode, marker", [("seed-principles-critic", "normal wear and tear"), ("self-align-critic", "Be accurate")]
)
def test_critic_variants_of_the_fixed_rule_modes_score_the_answer_against_the_rules(mode, marker):
    record, base, critic = run(mode, ["R0", "R1"], ["[RESULT] 2", "[RESULT] 5"])
    assert marker in base.requests[0][0]["content"] and marker in critic.requests[0][0]["content"]
    assert record["response"] == "R1" and scores(record, "response") == [2, 5]
    assert marker in record["principles"]


def test_self_instruct_sends_the_eleven_demonstrations_and_a_task_turn():
    record, base, critic = run("self-instruct", ["An answer"], [])
    system, user = base.requests[0]
    assert system["content"] == self_instruct_prompt() and system["content"].count("\n\nTask: ") == 11
    assert system["content"].startswith("Come up with examples for the following tasks.")
    assert user == {"role": "user", "content": "Task: How do tides work?\nOutput:"}
    assert record["response"] == "An answer" and critic.requests == []


def test_self_instruct_demonstrations_are_in_the_released_order():
    data = json.loads(SELF_INSTRUCT_DEMONSTRATIONS.read_text())
    tasks = [d["task"] for d in data["demonstrations"]]
    assert tasks[0] == "Which exercises are best for reducing belly fat at home?"
    assert tasks[-1] == "Turn down a job offer by sending an email to a recruiter explaining the reason."
    assert len(tasks) == 11


def test_oracle_records_the_datasets_own_response_without_a_model_call():
    base, critic = ScriptedBackend("base-model", []), ScriptedBackend("critic-model", [])
    engine = Engine("oracle", PromptSet(), LoopSettings(), references={"How do tides work?": "The Moon's pull."})
    record = asyncio.run(engine.run("How do tides work?", Session(base, critic)))
    assert record["response"] == "The Moon's pull." and record["status"] == "accepted"
    assert base.requests == critic.requests == [] and record["usage"] == {}
    assert [r["stage"] for r in record["rounds"]] == ["response"]


def test_oracle_reads_the_response_column_of_the_prompt_file(tmp_path):
    path = tmp_path / "dolly.jsonl"
    path.write_text(json.dumps({"instruction": "How do tides work?", "response": "The Moon's pull."}) + "\n")
    source = PromptSource(path=str(path), prompt_column="instruction", response_column="response")
    engine = Engine("oracle", PromptSet(), LoopSettings(), source=source)
    assert engine.references == {"How do tides work?": "The Moon's pull."}


def test_oracle_without_the_response_column_is_one_line_naming_it(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"instruction": "How do tides work?"}) + "\n")
    source = PromptSource(path=str(path), prompt_column="instruction", response_column="output")
    with pytest.raises(UserError, match=r"prompts.jsonl:(line )?1: missing field 'output'"):
        Engine("oracle", PromptSet(), LoopSettings(), source=source)
    with pytest.raises(UserError, match="prompts.response_column"):
        Engine("oracle", PromptSet(), LoopSettings(), source=PromptSource(path=str(path), prompt_column="instruction"))


def test_constitution_has_sixteen_rules():
    assert len(PromptSet().constitution_text().splitlines()) == 16


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown mode"):
        Engine("best-of-n", PromptSet(), LoopSettings())


# -- what shapes a mode's records ------------------------------------------------------

SCRIPTS = {
    "spri": (["P0", "R0"], ["[RESULT] 5", "[RESULT] 5"]),
    "direct": (["R0"], []),
    "self-instruct": (["R0"], []),
    "self-refine": (["R0", "[RESULT] 5"], []),
    "seed-principles": (["R0"], []),
    "self-align": (["R0"], []),
    "seed-principles-critic": (["R0"], ["[RESULT] 5"]),
    "self-align-critic": (["R0"], ["[RESULT] 5"]),
    "constitution": (["R0"], []),
}


@pytest.mark.parametrize("mode", [m for m in MODES if m != "oracle"])
def test_mode_roles_name_exactly_the_roles_a_mode_calls(mode):
    record, base, critic = run(mode, *SCRIPTS[mode])
    called = tuple(role for role, backend in (("base", base), ("critic", critic)) if backend.requests)
    assert called == MODE_ROLES[mode]


def test_every_mode_has_roles_and_an_identity():
    assert set(MODE_ROLES) == set(MODES)
    assert set(TABLE4_MODES) <= set(MODES)
    for mode in MODES:
        assert mode_identity(mode, PromptSet(), LoopSettings())["mode"] == canonical_mode(mode)


def test_a_one_call_modes_identity_ignores_the_critique_loop_settings():
    loose, strict = LoopSettings(), LoopSettings(threshold=5, max_rounds=2, score_retries=0, unscored="accept")
    for mode in ("direct", "self-instruct", "seed-principles", "self-align", "oracle"):
        assert mode_identity(mode, PromptSet(), loose) == mode_identity(mode, PromptSet(), strict)
    assert mode_identity("spri", PromptSet(), loose) != mode_identity("spri", PromptSet(), strict)
    assert mode_identity("self-refine", PromptSet(), loose) != mode_identity("self-refine", PromptSet(), strict)


def test_the_templates_fingerprint_covers_only_the_texts_the_mode_sends():
    edited_critic = PromptSet(principles_critic=PromptSet().principles_critic + " Be strict.")
    edited_direct = PromptSet(direct_system="Answer in at most {max_words} words, plainly.")
    default, loop = PromptSet(), LoopSettings()
    assert mode_identity("direct", edited_critic, loop) == mode_identity("direct", default, loop)
    assert mode_identity("spri", edited_critic, loop) != mode_identity("spri", default, loop)
    assert mode_identity("direct", edited_direct, loop) != mode_identity("direct", default, loop)
    assert mode_identity("self-align", edited_direct, loop) == mode_identity("self-align", default, loop)


def test_the_oracle_identity_names_its_response_column():
    one = mode_identity("oracle", PromptSet(), LoopSettings(), response_column="response")
    other = mode_identity("oracle", PromptSet(), LoopSettings(), response_column="output")
    assert one != other
