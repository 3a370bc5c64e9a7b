"""The record (`spri_sft.generate.record`): `Record`, `Round` and `RoleUsage` name every field that
`spri-sft generate` writes, in every mode, and `check_record` accepts what it writes and refuses a
missing or mistyped field in one line naming the file, line and field."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

import pytest

from spri_sft.errors import UserError
from spri_sft.format.build import read_records
from spri_sft.generate import run
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.engine import LoopSettings
from spri_sft.generate.inputs import PromptPart, PromptSource
from spri_sft.generate.modes import MODE_SPECS
from spri_sft.generate.record import REQUIRED_FIELDS, Record, RoleUsage, Round, check_record
from spri_sft.llm.base import Completion

FAILING_PROMPT = "Why does this prompt fail?"


class ScriptedBackend:
    """A model that answers everything with a failing critique (score 2), so every critic-scored stage revises
    until max_rounds; under `score: expected` its critiques come as that backend's do (a score and a digit
    distribution); a request about FAILING_PROMPT raises, as a broken server would."""

    def __init__(self, model: str, score_setting: str):
        self.model, self.score_setting, self.score_mode = model, score_setting, score_setting

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def chat(self, messages):
        await asyncio.sleep(0)  # as a server's reply is awaited: a spent token budget can stop a prompt midway
        if any(FAILING_PROMPT in m["content"] for m in messages):
            raise ValueError("the server refused this prompt")
        return Completion(
            text="Feedback: vague. [RESULT] 2", prompt_tokens=7, completion_tokens=3, finish_reason="stop"
        )

    async def critique(self, messages):
        reply = await self.chat(messages)
        return Completion(
            text=reply.text, prompt_tokens=7, completion_tokens=3, finish_reason="stop", score=2,
            score_distribution={2: 0.75, 3: 0.25},
        )  # fmt: skip


def generated_records(tmp_path: Path, monkeypatch, mode: str, score_setting: str, **settings) -> list[dict]:
    """The records.jsonl lines of a `spri-sft generate` run of `mode`: two prompt sources (so records carry
    prompt_source, sft_split and source_id), one prompt of which fails, the other with a context (so its
    record carries its instruction)."""
    rows = [
        {"id": 1, "prompt": "How do tides work?", "context": "On the coast.", "answer": "The moon."},
        {"id": 2, "prompt": FAILING_PROMPT, "context": "", "answer": "It does not."},
    ]
    train, validation = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    train.write_text(json.dumps(rows[0]) + "\n")
    validation.write_text(json.dumps(rows[1]) + "\n")
    backends = (ScriptedBackend("base/model", score_setting), ScriptedBackend("critic/model", score_setting))
    monkeypatch.setattr(run, "build_backends", lambda base, critic: backends)
    prompts = PromptSource(
        id_column="id", response_column="answer", context_column="context",
        sources=[PromptPart(path=str(train), sft_split="train"), PromptPart(path=str(validation), sft_split="validation")],
    )  # fmt: skip
    config = GenerateConfig(
        mode=mode, output_dir=str(tmp_path / "out"), prompts=prompts, loop=LoopSettings(max_rounds=2),
        progress=False, max_failed_share=1.0, **settings,
    )  # fmt: skip
    run.generate(config)
    return [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]


def field_names(typed_dict) -> set[str]:
    return set(typed_dict.__required_keys__ | typed_dict.__optional_keys__)


@pytest.mark.parametrize("score_setting", ["parse", "expected"])
@pytest.mark.parametrize("mode", MODE_SPECS)
def test_check_record_accepts_every_record_generate_writes(tmp_path, monkeypatch, mode, score_setting):
    for number, record in enumerate(generated_records(tmp_path, monkeypatch, mode, score_setting), 1):
        assert check_record(record, f"records.jsonl:{number}") is record


@pytest.mark.parametrize("score_setting", ["parse", "expected"])
@pytest.mark.parametrize("mode", MODE_SPECS)
def test_the_types_name_every_field_generate_writes(tmp_path, monkeypatch, mode, score_setting):
    for record in generated_records(tmp_path, monkeypatch, mode, score_setting):
        assert set(record) <= field_names(Record)
        assert field_names(Round) >= {k for r in record["rounds"] for k in r}
        assert field_names(RoleUsage) >= {k for counts in record["usage"].values() for k in counts}


def test_a_run_with_a_failed_prompt_and_expected_scores_writes_the_optional_fields(tmp_path, monkeypatch):
    # So the test above sees each optional field at least once (an unseen one would go unchecked).
    records = generated_records(tmp_path, monkeypatch, "spri", "expected")
    written = {k for r in records for k in r}
    rounds = {k for r in records for round_ in r["rounds"] for k in round_}
    assert written == field_names(Record)
    assert rounds == field_names(Round)


def test_a_resumed_runs_record_names_the_calls_it_replayed_as_role_usage_says(tmp_path, monkeypatch):
    # A run stopped by its token budget midway through a prompt journals its replies; the rerun replays them.
    generated_records(tmp_path, monkeypatch, "spri", "parse", token_budget=25, max_concurrent_prompts=1)
    record = next(r for r in generated_records(tmp_path, monkeypatch, "spri", "parse") if r["status"] != "failed")
    assert check_record(record, "records.jsonl:1") is record
    assert {k for counts in record["usage"].values() for k in counts} == field_names(RoleUsage)


def test_the_fields_check_record_requires_are_the_records_required_fields():
    assert set(REQUIRED_FIELDS) == Record.__required_keys__


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict:
    """A record of mode spri, as generate writes it, with a critiqued response round at index 3."""
    monkeypatch = pytest.MonkeyPatch()
    try:
        records = generated_records(tmp_path_factory.mktemp("spri"), monkeypatch, "spri", "parse")
    finally:
        monkeypatch.undo()
    record = next(r for r in records if r["status"] != "failed")
    assert record["rounds"][3]["stage"] == "response"
    return record


def changed(record: dict, path: tuple, value) -> dict:
    """A copy of `record` with the field at `path` set to `value` (removed when value is KeyError)."""
    record = copy.deepcopy(record)
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    if value is KeyError:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return record


REQUIRED = ", ".join(REQUIRED_FIELDS)
REFUSED = {
    **{
        f"{name} missing": (
            (name,), KeyError,
            f"r.jsonl:4: record is missing '{name}' (a record has {REQUIRED}, as `spri-sft generate` writes them)",
        )
        for name in REQUIRED_FIELDS
    },
    "id not a string": (("id",), 7, "r.jsonl:4: field 'id' must be a string, got 7"),
    "prompt not a string": (("prompt",), ["q"], "r.jsonl:4: field 'prompt' must be a string, got ['q']"),
    "response not a string": (("response",), 5, "r.jsonl:4: field 'response' must be a string or null, got 5"),
    "rounds not a list": (("rounds",), {}, "r.jsonl:4: field 'rounds' must be a list, got {}"),
    "a round without its stage": (
        ("rounds", 3, "stage"), KeyError, "r.jsonl:4: every entry of 'rounds' must be an object with a 'stage'"
    ),
    "a round not an object": (("rounds", 3), "text", "r.jsonl:4: every entry of 'rounds' must be an object with a 'stage'"),
    "a round without its text": (("rounds", 3, "text"), KeyError, "r.jsonl:4: field 'rounds[3].text' must be a string, got None"),
    "a round's text not a string": (("rounds", 3, "text"), 5, "r.jsonl:4: field 'rounds[3].text' must be a string, got 5"),
    "a score not an integer": (
        ("rounds", 3, "score"), "4", "r.jsonl:4: field 'rounds[3].score' must be an integer or null, got '4'"
    ),
    "a fractional score": (
        ("rounds", 3, "score"), 2.5, "r.jsonl:4: field 'rounds[3].score' must be an integer or null, got 2.5"
    ),
    "a boolean score": (
        ("rounds", 3, "score"), True, "r.jsonl:4: field 'rounds[3].score' must be an integer or null, got True"
    ),
    "a score mean not a number": (
        ("rounds", 3, "score_mean"), "high", "r.jsonl:4: field 'rounds[3].score_mean' must be a number or null, got 'high'"
    ),
    "source_id not a string": (
        ("source_id",), 12, "r.jsonl:4: field 'source_id' must be a string or null, got 12"
    ),
    "instruction not a string": (
        ("instruction",), ["a"], "r.jsonl:4: field 'instruction' must be a string, got ['a']"
    ),
    "sft_split not a split": (
        ("sft_split",), "test", "r.jsonl:4: field 'sft_split' must be one of auto, train, validation, got 'test'"
    ),
    "usage not an object": (
        ("usage",), 3, "r.jsonl:4: field 'usage' must be an object (role -> its calls and tokens), got 3"
    ),
    "a role's usage not an object": (("usage", "base"), 3, "r.jsonl:4: field 'usage.base' must be an object, got 3"),
}  # fmt: skip


@pytest.mark.parametrize("case", REFUSED)
def test_check_record_refuses_a_missing_or_mistyped_field_in_one_line_naming_it(written, case):
    path, value, message = REFUSED[case]
    with pytest.raises(UserError) as refused:
        check_record(changed(written, path, value), "r.jsonl:4")
    assert str(refused.value) == message


def test_check_record_refuses_what_is_not_an_object():
    with pytest.raises(UserError) as refused:
        check_record(["id", "prompt"], "r.jsonl:1")
    assert str(refused.value) == "r.jsonl:1: a record must be a JSON object, got list"


def test_format_names_the_file_and_line_of_a_record_with_a_mistyped_score(tmp_path, written):
    # Before check_record looked inside the rounds, this was a ValueError traceback from the dataset's int32 cast.
    records = tmp_path / "records.jsonl"
    bad = changed(written, ("rounds", 3, "score"), "x")
    records.write_text(json.dumps(written) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(UserError) as refused:
        read_records([str(records)])
    assert str(refused.value) == f"{records}:2: field 'rounds[3].score' must be an integer or null, got 'x'"
