"""One identity per generation: what shapes a record decides its id and the pipeline's generate stage.

Every test generates against the fake OpenAI-compatible server (replies depend on the request
alone) and checks what a rerun after an edit generates again and what it reuses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.fake_openai_server import FakeOpenAIServer

from spri_sft.config import load_config
from spri_sft.errors import UserError
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.run import generate
from spri_sft.llm.base import EndpointConfig
from spri_sft.pipeline import run as pipeline
from spri_sft.pipeline.config import PipelineConfig

pytestmark = pytest.mark.timeout(120)

PROMPTS = ["What causes tides?", "Why is the sky blue?", "How do vaccines work?"]


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer() as running:
        yield running


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def endpoint(server, **overrides) -> EndpointConfig:
    return EndpointConfig(backend="openai", model="fake-model", base_url=[server.base_url], timeout=5.0, **overrides)


def config(tmp_path: Path, server, prompts_file: Path, mode: str = "spri", **overrides) -> GenerateConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"), mode=mode, prompts=PromptSource(path=str(prompts_file)),
        base=endpoint(server), critic=endpoint(server), progress=False,
    )  # fmt: skip
    settings.update(overrides)
    return GenerateConfig(**settings)


def records(job: GenerateConfig) -> list[dict]:
    return [json.loads(line) for line in (Path(job.output_dir) / "records.jsonl").read_text().splitlines()]


# -- record ids ------------------------------------------------------------------------------


def test_changing_the_critic_of_a_direct_run_regenerates_nothing(tmp_path, server):
    prompts_file = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    generate(config(tmp_path, server, prompts_file, mode="direct"))

    again = generate(config(tmp_path, server, prompts_file, mode="direct", critic=endpoint(server, temperature=0.1)))

    assert again["this_run"]["records"] == 0 and again["records"] == len(PROMPTS)


def test_changing_the_critic_of_a_spri_run_regenerates_every_record(tmp_path, server):
    prompts_file = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    generate(config(tmp_path, server, prompts_file))

    again = generate(config(tmp_path, server, prompts_file, critic=endpoint(server, temperature=0.1)))

    assert again["this_run"]["records"] == len(PROMPTS)


def test_a_prompts_file_edited_in_place_generates_its_new_prompts_and_reuses_the_rest(tmp_path, server):
    prompts_file = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    job = config(tmp_path, server, prompts_file)
    generate(job)
    first = {r["prompt"]: r for r in records(job)}

    write_prompts(prompts_file, [PROMPTS[0], "What is a black hole?", PROMPTS[2]])
    summary = generate(job)

    assert summary["this_run"]["records"] == 1 and summary["records"] == 3
    after = {r["prompt"]: r for r in records(job)}
    assert after[PROMPTS[0]] == first[PROMPTS[0]] and after[PROMPTS[2]] == first[PROMPTS[2]]
    assert "What is a black hole?" in after


def test_a_template_edited_in_place_regenerates_the_records_it_shapes(tmp_path, server):
    prompts_file = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    templates = tmp_path / "templates.yaml"
    templates.write_text("direct_system: Answer in at most {max_words} words.\n")
    job = config(tmp_path, server, prompts_file, mode="direct")
    job.loop.prompts_file = str(templates)
    generate(job)
    assert generate(job)["this_run"]["records"] == 0

    templates.write_text("direct_system: Answer plainly, in at most {max_words} words.\n")
    summary = generate(job)

    assert summary["this_run"]["records"] == len(PROMPTS)
    assert len({r["id"] for r in records(job)}) == 2 * len(PROMPTS)


# -- the pipeline's generate and format stages ------------------------------------------------


def pipeline_config(tmp_path: Path, server, prompts_file: Path, *overrides: str, modes="[spri]") -> PipelineConfig:
    url = server.base_url
    args = [
        "--output_dir", str(tmp_path / "run"), "--modes", modes, "--wandb.enabled", "false",
        "--generate.prompts.path", str(prompts_file), "--generate.progress", "false",
        "--format.validation_fraction", "0.25",
    ]  # fmt: skip
    for role in ("base", "critic"):
        args += [
            f"--generate.{role}.backend",
            "openai",
            f"--generate.{role}.model",
            "fake-model",
            f"--generate.{role}.base_url",
            url,
        ]
    return load_config(PipelineConfig, [*args, *overrides])


def generate_and_format(cfg: PipelineConfig, mode: str = "spri"):
    root = Path(cfg.output_dir)
    generated = pipeline._generate(cfg, mode, root, "run", "group")
    return generated, pipeline._format(cfg, mode, root, generated, None)


def test_the_generate_stage_reruns_on_a_prompts_file_edited_in_place_and_the_dataset_has_exactly_its_prompts(
    tmp_path, server, capsys
):
    prompts_file = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    generate_and_format(pipeline_config(tmp_path, server, prompts_file))
    records_file = tmp_path / "run/generate/spri/records.jsonl"
    before = records_file.read_text()

    edited = [PROMPTS[0], "What is a black hole?", PROMPTS[2]]
    write_prompts(prompts_file, edited)
    cfg = pipeline_config(tmp_path, server, prompts_file, "--output_dir", str(tmp_path / "second"),
                          "--generate_dir", str(tmp_path / "run/generate"))  # fmt: skip
    generated, dataset = generate_and_format(cfg)

    out = capsys.readouterr().out
    assert "generate/spri: settings or inputs changed since its last run" in out
    assert "3 prompts, 2 already done, 1 to generate" in out
    assert records_file.read_text().startswith(before), "the unchanged prompts' records are reused as they were"
    rows = [
        json.loads(line) for name in ("train", "validation") for line in (dataset.directory / f"{name}.jsonl").open()
    ]
    assert sorted(row["messages"][-2]["content"] for row in rows) == sorted(edited)


def test_the_generate_stage_of_a_direct_run_is_skipped_not_refused_when_only_the_critic_changed(
    tmp_path, server, capsys
):
    prompts_file = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    generate_and_format(pipeline_config(tmp_path, server, prompts_file, modes="[direct]"), "direct")

    changed = pipeline_config(tmp_path, server, prompts_file, "--generate.critic.temperature", "0.1", modes="[direct]")
    generate_and_format(changed, "direct")

    out = capsys.readouterr().out
    assert "generate/direct: done in an earlier run, skipped" in out
    assert "dataset/direct: done in an earlier run, skipped" in out


def test_a_truthfulqa_file_edited_in_place_is_a_changed_input_of_the_dataset(tmp_path, server):
    prompts_file = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    questions = tmp_path / "truthfulqa.jsonl"
    row = {"question": "What happens if you crack your knuckles a lot?", "mc1_targets": {"choices": ["a", "b"], "labels": [1, 0]},
           "mc2_targets": {"choices": ["a", "b"], "labels": [1, 0]}}  # fmt: skip
    questions.write_text(json.dumps(row) + "\n")
    cfg = pipeline_config(tmp_path, server, prompts_file, "--format.truthfulqa_file", str(questions))
    generate_and_format(cfg)

    questions.write_text(json.dumps({**row, "question": "Why is the sky blue?"}) + "\n")

    with pytest.raises(UserError, match=r"dataset/spri was made with other settings or from other inputs"):
        generate_and_format(cfg)
