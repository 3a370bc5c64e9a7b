"""One generation directory holds one mode's records, and one dataset is made of one mode's records.

A second mode into a generate output_dir would append to the first mode's records.jsonl and overwrite its
summary.json and config.yaml; `spri-sft format` on records of two modes would keep one mode's answer to a
prompt and drop the other's as a "duplicate". Both are refused in one line instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.fake_openai_server import FakeOpenAIServer

from spri_sft.errors import UserError
from spri_sft.format.build import build_dataset
from spri_sft.format.config import FormatConfig
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.run import generate
from spri_sft.llm.base import EndpointConfig

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer() as running:
        yield running


@pytest.fixture
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Question {i}: why is the sea salty?"}) + "\n" for i in range(6)))
    return path


def job(output_dir: Path, prompts_file: Path, server, mode: str) -> GenerateConfig:
    endpoint = EndpointConfig(backend="openai", model="fake-model", base_url=[server.base_url], timeout=5.0)
    return GenerateConfig(
        output_dir=str(output_dir), mode=mode, prompts=PromptSource(path=str(prompts_file)), base=endpoint,
        critic=endpoint, progress=False,
    )  # fmt: skip


def test_generate_refuses_a_second_mode_into_a_directory_holding_another_modes_records(tmp_path, prompts_file, server):
    output_dir = tmp_path / "gen"
    generate(job(output_dir, prompts_file, server, "spri"))
    before = {name: (output_dir / name).read_text() for name in ("records.jsonl", "summary.json", "config.yaml")}
    calls = len(server.received)

    with pytest.raises(
        UserError, match=r"gen/records.jsonl holds 6 records of mode spri.*give mode direct its own --output_dir"
    ):
        generate(job(output_dir, prompts_file, server, "direct"))

    assert len(server.received) == calls, "refused before any model call"
    assert {name: (output_dir / name).read_text() for name in before} == before


def test_generate_of_the_same_mode_into_its_own_directory_is_a_rerun_not_a_refusal(tmp_path, prompts_file, server):
    output_dir = tmp_path / "gen"
    generate(job(output_dir, prompts_file, server, "direct"))
    assert generate(job(output_dir, prompts_file, server, "direct"))["this_run"]["records"] == 0


@pytest.fixture
def two_modes(tmp_path, prompts_file, server) -> list[str]:
    """The records.jsonl of a spri run and of a direct run over the same prompts."""
    files = []
    for mode in ("spri", "direct"):
        generate(job(tmp_path / mode, prompts_file, server, mode))
        files.append(str(tmp_path / mode / "records.jsonl"))
    return files


def test_format_refuses_records_files_of_two_modes_naming_them(tmp_path, two_modes):
    config = FormatConfig(records=two_modes, output_dir=str(tmp_path / "dataset"), validation_fraction=0.25)
    with pytest.raises(UserError, match=r"records of 2 generation modes \(6 spri, 6 direct\).*one mode's") as caught:
        build_dataset(config)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "dataset" / "summary.json").exists(), (
        "before: 6 rows, the 6 direct records dropped as duplicates"
    )


def test_format_refuses_one_file_that_mixes_two_modes(tmp_path, two_modes):
    mixed = tmp_path / "mixed.jsonl"  # as generate wrote it before it refused a second mode
    mixed.write_text("".join(Path(path).read_text() for path in two_modes))
    with pytest.raises(UserError, match=r"mixed.jsonl hold records of 2 generation modes"):
        build_dataset(FormatConfig(records=[str(mixed)], output_dir=str(tmp_path / "dataset")))


def test_each_modes_records_formatted_on_their_own_keep_every_prompt(tmp_path, two_modes):
    for path in two_modes:
        mode = Path(path).parent.name
        summary = build_dataset(
            FormatConfig(records=[path], output_dir=str(tmp_path / f"dataset-{mode}"), validation_fraction=0.25)
        )
        assert summary["rows"] == 6 and summary["dropped"]["duplicate"] == 0
