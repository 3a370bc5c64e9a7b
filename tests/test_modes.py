"""The modes' table (`spri_sft.generate.modes.MODE_SPECS`) is what the engine, the call bounds, the
dataset card, the report's Table 4 and the docs' mode table say about each mode."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from spri_sft.format.build import build_dataset
from spri_sft.format.config import FormatConfig
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.engine import Engine, LoopSettings, Session
from spri_sft.generate.identity import generation_identity, record_id
from spri_sft.generate.modes import MODE_SPECS, MODES, TABLE4_MODES, ModeSpec
from spri_sft.generate.plan import call_bounds
from spri_sft.generate.prompts import PromptSet
from spri_sft.llm.base import Completion
from spri_sft.pipeline.report import PAPER_ROWS, load_paper_table4

REPO = Path(__file__).resolve().parents[1]
PROMPT = "How do tides work?"
PASSING = "Feedback: clear and correct. [RESULT] 5"
NEVER_SCORED = "Feedback: it could be clearer."  # no score: asked again, then unscored, so revised
LOOP = {"max_rounds": 3, "score_retries": 1}


class SameReplyBackend:
    """Replies the same text to every request: an answer, a principle list and a critique all at once."""

    def __init__(self, model: str, reply: str):
        self.model, self.reply = model, reply

    async def chat(self, messages):
        return Completion(text=self.reply, prompt_tokens=10, completion_tokens=5, finish_reason="stop")


def run_mode(mode: str, reply: str) -> dict:
    """One prompt through `mode`, every model replying `reply`; returns the record as generate writes it."""
    prompts, loop = PromptSet(), LoopSettings(**LOOP)
    engine = Engine(mode, prompts, loop, references={PROMPT: "The dataset's own answer."})
    session = Session(SameReplyBackend("base/model", reply), SameReplyBackend("critic/model", reply))
    fields = asyncio.run(engine.run(PROMPT, session))
    identity = generation_identity(GenerateConfig(mode=mode, loop=loop), prompts)
    return {"id": record_id(PROMPT, identity), "prompt": PROMPT, "mode": engine.mode, **fields}


def calls(record: dict) -> dict[str, int]:
    return {role: record["usage"].get(role, {}).get("calls", 0) for role in ("base", "critic")}


@pytest.mark.parametrize("mode", MODE_SPECS)
def test_a_run_whose_every_critique_passes_takes_the_fewest_calls_the_spec_bounds(mode):
    bounds = MODE_SPECS[mode].calls_per_prompt(LOOP["max_rounds"], LOOP["score_retries"])
    record = run_mode(mode, PASSING)
    assert calls(record) == {role: fewest for role, (fewest, _) in bounds.items()}
    assert (
        sum(calls(record).values()) == call_bounds(GenerateConfig(mode=mode, loop=LoopSettings(**LOOP)), 1)["calls_min"]
    )


@pytest.mark.parametrize("mode", MODE_SPECS)
def test_a_run_whose_critiques_are_never_scored_takes_the_most_calls_the_spec_bounds(mode):
    bounds = MODE_SPECS[mode].calls_per_prompt(LOOP["max_rounds"], LOOP["score_retries"])
    record = run_mode(mode, NEVER_SCORED)
    assert calls(record) == {role: most for role, (_, most) in bounds.items()}
    assert (
        sum(calls(record).values()) == call_bounds(GenerateConfig(mode=mode, loop=LoopSettings(**LOOP)), 1)["calls_max"]
    )


@pytest.mark.parametrize("mode", MODE_SPECS)
def test_a_mode_calls_exactly_the_roles_its_spec_names(mode):
    called = tuple(role for role, count in calls(run_mode(mode, NEVER_SCORED)).items() if count)
    assert called == MODE_SPECS[mode].roles


@pytest.fixture(scope="module", params=list(MODE_SPECS))
def card_line(request, tmp_path_factory) -> tuple[ModeSpec, str]:
    """The Method line the dataset card writes for one mode's records (a run whose critiques pass)."""
    spec = MODE_SPECS[request.param]
    directory = tmp_path_factory.mktemp(spec.name)
    records = directory / "records.jsonl"
    records.write_text(json.dumps(run_mode(spec.name, PASSING)) + "\n")
    output = directory / "dataset"
    build_dataset(FormatConfig(records=[str(records)], output_dir=str(output), validation_fraction=0.0))
    lines = [line for line in (output / "README.md").read_text().splitlines() if line.startswith("- **")]
    assert len(lines) == 1, lines
    return spec, lines[0]


def test_the_card_describes_each_mode_with_its_specs_sentence(card_line):
    spec, line = card_line
    assert line.startswith(f"- **{spec.title or spec.name}** (") and line.endswith(spec.description)


def test_the_card_mentions_a_critic_iff_the_mode_calls_one(card_line):
    spec, line = card_line
    assert bool(re.search(r"\bcritic\b", line)) == ("critic" in spec.roles)


def test_the_card_names_the_papers_row_or_says_there_is_none(card_line):
    spec, line = card_line
    place = f"the paper's Table 4 row `{spec.paper_row.label}`" if spec.paper_row else "not a row of the paper"
    assert place in line


def test_the_card_describes_a_record_of_an_alias_by_its_modes_spec(tmp_path):
    # Records always carry the canonical name; one written under the old name still gets its sentence.
    record = {**run_mode("self-align", PASSING), "mode": "constitution"}
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps(record) + "\n")
    build_dataset(FormatConfig(records=[str(records)], output_dir=str(tmp_path / "out"), validation_fraction=0.0))
    assert MODE_SPECS["self-align"].description in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("mode", MODE_SPECS)
def test_every_description_is_one_sentence(mode):
    description = MODE_SPECS[mode].description
    # A capital first, a full stop last, and no full stop followed by a space in between.
    assert re.fullmatch(r"[A-Z][^.]*(\.\S[^.]*)*\.", description), description


def test_the_reports_table_4_rows_are_the_specs_rows_in_the_papers_order():
    shipped = load_paper_table4()
    for column in shipped.values():
        assert list(column) == list(PAPER_ROWS)
    assert list(PAPER_ROWS)[:-1] == [MODE_SPECS[mode].paper_row.label for mode in TABLE4_MODES]
    assert [MODE_SPECS[mode].paper_row.number for mode in TABLE4_MODES] == list(range(1, len(TABLE4_MODES) + 1))


@pytest.mark.parametrize("row", [row for row in PAPER_ROWS if row != "off-the-shelf"])
def test_each_table_4_row_is_run_by_the_mode_whose_spec_names_it_under_any_of_its_names(row):
    names = PAPER_ROWS[row]
    spec = MODE_SPECS[names[0]]
    assert spec.paper_row.label == row and names == (spec.name, *spec.aliases)


def modes_table() -> list[str]:
    """The rows of the first table under '### Modes' in the README or a docs page (whichever has it)."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    sections = [page.read_text().split("### Modes", 1)[1] for page in pages if "### Modes" in page.read_text()]
    assert len(sections) == 1, "exactly one page has the '### Modes' table"
    lines = sections[0].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start + 2 : end]  # below the header and its --- line


def test_the_docs_mode_table_names_every_mode_and_alias():
    named = [name for row in modes_table() for name in re.findall(r"`([a-z-]+)`", row.split("|")[1])]
    assert sorted(named) == sorted(MODES)


@pytest.mark.parametrize(
    "fields",
    [
        {"answer": "fixed_rules"},  # rules to send, but none named
        {"answer": "direct", "refine": "critic"},  # a critic with nothing to judge the answer against
    ],
)
def test_a_spec_whose_steps_do_not_fit_together_is_refused(fields):
    with pytest.raises(ValueError, match="spec broken"):
        ModeSpec(name="broken", description="A broken mode.", **fields)
