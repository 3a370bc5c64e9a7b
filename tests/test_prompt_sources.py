"""Two prompt sources in one run, end to end: `spri-sft generate` draws prompts from a dataset's
train and validation splits, each record keeps its prompt's origin, and `spri-sft format` puts
exactly the validation source's prompts in the validation split (the paper's MixInstruct setup).

The dataset is a local folder in MixInstruct's layout (`{id, instruction, input, output,
candidates}`, many rows with an empty `instruction`); the model is `FakeOpenAIServer`, so every
other part (config, prompt reading, engine, record store, format) is the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_from_disk
from support.fake_openai_server import FakeOpenAIServer
from test_inputs import mixinstruct_row

from spri_sft.config import load_config
from spri_sft.format.build import build_dataset
from spri_sft.format.config import FormatConfig
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.run import generate

pytestmark = pytest.mark.timeout(120)


def write_dataset(folder: Path) -> dict[str, list[str]]:
    """A train split of 14 rows (2 that make no prompt) and a validation split of 6 (1 that makes none);
    returns each split's good prompts."""
    folder.mkdir()
    good = {"train": [f"How do I keep basil plant {n} alive?" for n in range(12)],
            "validation": [f"Why does bread number {n} go stale?" for n in range(5)]}  # fmt: skip
    bad = {
        "train": [mixinstruct_row(90, "", "  "), mixinstruct_row(91, "", "")],
        "validation": [mixinstruct_row(92, "", "")],
    }
    for split, prompts in good.items():
        # Every other row has its request in `input` alone, as MixInstruct's GPT4All and ShareGPT rows do.
        rows = [mixinstruct_row(n, "", p) if n % 2 else mixinstruct_row(n, p, "") for n, p in enumerate(prompts)]
        rows += bad[split]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return good


@pytest.fixture
def recipe(tmp_path) -> tuple[Path, dict[str, list[str]]]:
    good = write_dataset(tmp_path / "mix-instruct")
    path = tmp_path / "generate.yaml"
    path.write_text(
        f"""
output_dir: {tmp_path / "generate"}
mode: direct
progress: false
prompts:
  dataset: {tmp_path / "mix-instruct"}
  prompt_column: instruction
  context_column: input
  shuffle: true
  seed: 0
  sources:
    - {{split: train, limit: 10, sft_split: train}}
    - {{split: validation, limit: 4, sft_split: validation}}
"""
    )
    return path, good


def test_two_sources_feed_format_exactly_the_validation_sources_prompts(recipe, tmp_path, capsys):
    path, good = recipe
    with FakeOpenAIServer() as server:
        urls = ["--base.backend", "openai", "--base.base_url", server.base_url, "--base.model", "fake-model",
                "--critic.backend", "openai", "--critic.base_url", server.base_url, "--critic.model", "fake-model"]  # fmt: skip
        summary = generate(load_config(GenerateConfig, ["--config", str(path), *urls]))

    records = [json.loads(line) for line in (tmp_path / "generate" / "records.jsonl").read_text().splitlines()]
    by_split = {split: {r["prompt"] for r in records if r["sft_split"] == split} for split in ("train", "validation")}
    assert len(by_split["train"]) == 10 and by_split["train"] <= set(good["train"])
    assert len(by_split["validation"]) == 4 and by_split["validation"] <= set(good["validation"])
    assert {r["prompt_source"] for r in records} == {
        f"{tmp_path / 'mix-instruct'}[train]",
        f"{tmp_path / 'mix-instruct'}[validation]",
    }

    # The rows that make no prompt: counted by reason in summary.json and in one printed line.
    assert summary["prompt_rows"]["skipped"] == {"empty prompt": 3}
    assert json.loads((tmp_path / "generate" / "summary.json").read_text())["prompt_rows"]["rows"] == 20
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[spri-sft] prompts:")]
    assert len(printed) == 1 and "skipped 3 of 20 rows: 3 empty prompt (first: " in printed[0]

    # validation_rows larger than the validation source: still only its prompts (all train prompts are named train).
    formatted = build_dataset(
        FormatConfig(
            records=[str(tmp_path / "generate" / "records.jsonl")],
            output_dir=str(tmp_path / "dataset"),
            validation_rows=6,
        )
    )
    splits = load_from_disk(str(tmp_path / "dataset" / "hf"))
    assert {row["messages"][0]["content"] for row in splits["validation"]} == by_split["validation"]
    assert {row["messages"][0]["content"] for row in splits["train"]} == by_split["train"]
    assert formatted["named_split_prompts"] == {"train": 10, "validation": 4}


def test_a_wrong_column_name_stops_generate_before_any_model_call(recipe, tmp_path):
    from spri_sft.errors import UserError

    path, _ = recipe
    config = load_config(GenerateConfig, ["--config", str(path), "--prompts.prompt_column", "instructions"])
    with pytest.raises(
        UserError, match=r"\[train\]:row 0: missing field 'instructions' \(fields: .*\), and no row has it"
    ):
        generate(config)  # no server: a model call would fail differently
    assert not (tmp_path / "generate" / "records.jsonl").exists()


# -- the user's own id column, from prompts to dataset rows ------------------------------------


def test_id_column_reaches_records_rows_and_dropped_lines_and_leaves_record_ids_as_they_were(tmp_path):
    rows = [{"uid": f"q-{n}", "prompt": f"How do I keep basil plant {n} alive?"} for n in range(8)]
    rows.append({"uid": "q-8", "prompt": "how do i keep basil plant 0 alive"})  # format's duplicate of q-0
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    uid_of = {row["prompt"]: row["uid"] for row in rows}
    with FakeOpenAIServer() as server:
        endpoints = [f"--{role}.{key}={value}" for role in ("base", "critic")
                     for key, value in (("backend", "openai"), ("base_url", server.base_url), ("model", "fake-model"))]  # fmt: skip
        for name, own_ids in (("with_ids", ["--prompts.id_column", "uid"]), ("without", [])):
            flags = ["--prompts.path", str(prompts), "--output_dir", str(tmp_path / name), "--mode", "direct"]
            generate(load_config(GenerateConfig, [*flags, "--progress", "false", *endpoints, *own_ids]))

    def records(name: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / name / "records.jsonl").read_text().splitlines()]

    assert {r["id"]: r["prompt"] for r in records("with_ids")} == {r["id"]: r["prompt"] for r in records("without")}
    assert {r["prompt"]: r["source_id"] for r in records("with_ids")} == uid_of
    assert not any("source_id" in r for r in records("without"))

    build_dataset(
        FormatConfig(records=[str(tmp_path / "with_ids" / "records.jsonl")], output_dir=str(tmp_path / "dataset"))
    )
    splits = load_from_disk(str(tmp_path / "dataset" / "hf"))
    kept = [row for split in splits.values() for row in split]
    assert all(row["source_id"] == uid_of[row["messages"][0]["content"]] for row in kept)
    dropped = [json.loads(line) for line in (tmp_path / "dataset" / "dropped.jsonl").read_text().splitlines()]
    assert [d["reason"] for d in dropped] == ["duplicate"] and dropped[0]["source_id"] in {"q-0", "q-8"}
    assert sorted([row["source_id"] for row in kept] + [dropped[0]["source_id"]]) == sorted(uid_of.values())


def test_a_record_whose_source_id_is_not_text_is_refused_naming_its_line(tmp_path):
    from spri_sft.errors import UserError

    record = {
        "id": "r1",
        "prompt": "p",
        "mode": "direct",
        "status": "accepted",
        "response": "r",
        "rounds": [],
        "source_id": 7,
    }
    (tmp_path / "records.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(UserError, match=r"records.jsonl:1: field 'source_id' must be a string or null, got 7"):
        build_dataset(FormatConfig(records=[str(tmp_path / "records.jsonl")], output_dir=str(tmp_path / "dataset")))


def test_a_pipelines_generate_fingerprint_holds_id_column_only_when_it_is_set(tmp_path):
    from spri_sft.generate.inputs import PromptSource
    from spri_sft.pipeline.run import _prompt_set

    # Unset, the settings are those of the generate stages made before id_column existed: they stay done.
    assert "id_column" not in _prompt_set(PromptSource())
    assert _prompt_set(PromptSource(id_column="uid"))["id_column"] == "uid"
