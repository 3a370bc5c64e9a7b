"""Where TruthfulQA comes from, one rule for evaluate, format's guard and run: a given file (.json, .json.gz, .jsonl,
parquet; the generation CSV for the guard only), else the Hub, else the copy in the package (upstream's v0 file)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from spri_sft import truthfulqa_data as packaged
from spri_sft.config import from_dict
from spri_sft.evaluate.truthfulqa import load_questions
from spri_sft.format.benchmarks import read_questions
from spri_sft.pipeline import run as pipeline_run
from spri_sft.pipeline.config import PipelineConfig

REPO = Path(__file__).resolve().parents[1]


def test_the_packaged_copy_is_upstreams_v0_file_byte_for_byte(shared_dir):
    upstream = (shared_dir / "data/truthfulqa/data/v0/mc_task.json").read_bytes()
    assert packaged.packaged_bytes() == upstream
    assert hashlib.sha256(upstream).hexdigest() == packaged.SHA256


def test_its_license_and_source_note_ship_beside_it_and_every_data_file_is_package_data():
    data = REPO / "spri_sft" / "data"
    assert {p.name for p in (data / "truthfulqa").iterdir()} == {"mc_task.json.gz", "LICENSE", "SOURCE.md"}
    assert "Apache License" in (data / "truthfulqa/LICENSE").read_text()
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["spri_sft"]
    shipped = {path for pattern in patterns for path in (REPO / "spri_sft").glob(pattern)}  # as setuptools globs
    for path in data.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            assert path in shipped, f"{path.relative_to(REPO)} is not package data"


def pipeline_config(tmp_path: Path) -> PipelineConfig:
    return from_dict(PipelineConfig, {"output_dir": str(tmp_path / "run")})


def test_without_a_file_or_the_hub_the_pipeline_uses_the_packaged_copy_and_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = pipeline_run._truthfulqa_source(pipeline_config(tmp_path), tmp_path / "run")

    (line,) = [line for line in capsys.readouterr().out.splitlines() if "TruthfulQA" in line]
    assert "Hub is unreachable (HF_HUB_OFFLINE is set)" in line and "packaged copy" in line
    assert source["source"] == packaged.SOURCE
    # One file for both readers: the evaluation's questions and the SFT data's guard.
    questions, digest = load_questions(source["file"])
    assert len(questions) == 817 and digest == packaged.SHA256
    assert read_questions(source["file"]) == [q.question for q in questions]


def test_a_rerun_with_the_hub_back_keeps_the_packaged_copy_its_stages_were_made_with(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first = pipeline_run._truthfulqa_source(pipeline_config(tmp_path), tmp_path / "run")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(packaged, "hub_reachable", lambda: pytest.fail("the Hub was asked"))
    assert pipeline_run._truthfulqa_source(pipeline_config(tmp_path), tmp_path / "run") == first
    assert "as before in this run" in capsys.readouterr().out


def test_results_json_records_the_packaged_copy_and_its_sha256(tmp_path, tiny_model_dir):
    from spri_sft.evaluate.config import EvaluateConfig
    from spri_sft.evaluate.run import evaluate_truthfulqa

    copy = packaged.write_packaged_copy(tmp_path)
    config = EvaluateConfig(model=str(tiny_model_dir), truthfulqa_file=str(copy), limit=2, dtype="float32",
                            device="cpu", output_dir=str(tmp_path / "eval"), report_to="none")  # fmt: skip
    results = evaluate_truthfulqa(config)
    assert Path(results["data_source"]).name == "truthfulqa-packaged-v0-mc_task.json"
    assert results["data_sha256"] == packaged.SHA256


# -- the one source rule: a file, else the Hub, else the packaged copy, for evaluate and format alike -----------------


def offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def evaluate_argv(model_dir: Path, output_dir: Path, *flags: str) -> list[str]:
    return ["evaluate", "--model", str(model_dir), "--limit", "2", "--dtype", "float32", "--device", "cpu",
            "--output_dir", str(output_dir), *flags]  # fmt: skip


def test_evaluate_offline_without_a_file_scores_the_packaged_copy_and_says_so(
    tmp_path, tiny_model_dir, monkeypatch, capsys
):
    from spri_sft.cli import main

    offline(monkeypatch)
    assert main(evaluate_argv(tiny_model_dir, tmp_path / "eval")) == 0

    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[spri-sft] TruthfulQA:")]
    assert packaged.SOURCE in line and "HF_HUB_OFFLINE" in line
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["n"] == 2 and results["data_sha256"] == packaged.SHA256
    assert Path(results["data_source"]).name == packaged.FILE_NAME


def test_the_packaged_gz_itself_is_a_truthfulqa_file_with_upstreams_digest(shared_dir, tmp_path):
    from spri_sft.truthfulqa_data import choose_source

    gz = REPO / "spri_sft" / packaged.PACKAGED_PATH
    source = choose_source(str(gz), directory=tmp_path, setting="--truthfulqa_file")

    questions, digest = load_questions(source.file)
    assert digest == packaged.SHA256
    assert questions == load_questions(str(shared_dir / "data/truthfulqa/data/v0/mc_task.json"))[0]
    assert read_questions(gz) == [q.question for q in questions]


def test_a_malformed_gz_is_named_by_its_own_path_and_line(tmp_path):
    import gzip

    from spri_sft.errors import UserError

    (tmp_path / "mc.jsonl.gz").write_bytes(gzip.compress(b'{"question": "torn",\n'))
    with pytest.raises(UserError, match=r"^" + str(tmp_path / "mc.jsonl.gz") + r":1: malformed JSON line"):
        load_questions(str(tmp_path / "mc.jsonl.gz"))


def test_evaluate_refuses_the_generation_csv_saying_it_has_no_mc_targets(tmp_path, shared_dir, tiny_model_dir, capsys):
    from spri_sft.cli import main

    csv = shared_dir / "data/truthfulqa/data/v0/TruthfulQA.csv"
    assert main(evaluate_argv(tiny_model_dir, tmp_path / "eval", "--truthfulqa_file", str(csv))) == 2

    (error,) = capsys.readouterr().err.splitlines()
    assert "TruthfulQA.csv" in error and "no MC1/MC2 targets" in error and "mc_task.json" in error
    assert not (tmp_path / "eval" / "results.json").exists()


def test_another_hub_dataset_offline_is_refused_not_replaced_by_the_packaged_copy(tmp_path, monkeypatch):
    from spri_sft.errors import UserError
    from spri_sft.truthfulqa_data import choose_source

    offline(monkeypatch)
    with pytest.raises(UserError, match=r"'me/my_truthfulqa' split 'validation'.*set --truthfulqa_file"):
        choose_source(None, "me/my_truthfulqa", directory=tmp_path, setting="--truthfulqa_file")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", ["1", "ON", "yes", "True"])
def test_hf_hub_offline_is_read_by_huggingface_hubs_own_rule(value, monkeypatch):
    from spri_sft.models import hub_offline, hub_reachable

    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline() and not hub_reachable()


def format_records(tmp_path: Path, prompts: list[str]) -> Path:
    records = tmp_path / "records.jsonl"
    rounds = [{"stage": "response", "round": 1, "text": "An answer.", "finish_reason": "stop", "score": 5}]
    records.write_text("".join(
        json.dumps({"id": f"r{i}", "prompt": p, "mode": "spri", "status": "accepted", "response": "An answer.",
                    "rounds": rounds}) + "\n"
        for i, p in enumerate(prompts)
    ))  # fmt: skip
    return records


TRUTHFULQA_QUESTION = "What is the smallest country in the world that is at least one square mile in area?"  # its first
GARDEN_PROMPTS = [f"Write note {i} about keeping a vegetable garden through a dry summer" for i in range(4)]


def test_standalone_format_guards_against_the_packaged_questions_by_default(tmp_path, monkeypatch, capsys):
    from spri_sft.cli import main

    offline(monkeypatch)
    monkeypatch.setenv("SPRI_SFT_CACHE", str(tmp_path / "cache"))
    records = format_records(tmp_path, [TRUTHFULQA_QUESTION, *GARDEN_PROMPTS])
    assert main(["format", "--records", f"[{records}]", "--output_dir", str(tmp_path / "out")]) == 0

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    contamination = summary["contamination"]
    assert contamination["truthfulqa_source"] == packaged.SOURCE
    assert contamination["benchmarks"]["truthfulqa"] == {"documents": 817, "empty": 0, "dropped": 1}
    assert packaged.SOURCE in (tmp_path / "out" / "README.md").read_text()
    assert not (tmp_path / "out" / packaged.FILE_NAME).exists()  # the benchmark's file never sits beside SFT data
    assert any(line.startswith("[spri-sft] TruthfulQA:") for line in capsys.readouterr().out.splitlines())


def test_format_with_truthfulqa_file_none_keeps_the_question_and_says_it_was_not_checked(tmp_path, monkeypatch):
    from spri_sft.cli import main

    offline(monkeypatch)
    records = format_records(tmp_path, [TRUTHFULQA_QUESTION, *GARDEN_PROMPTS])
    assert main(["format", "--records", f"[{records}]", "--output_dir", str(tmp_path / "out"),
                 "--truthfulqa_file", "none"]) == 0  # fmt: skip

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["dropped"]["contamination"] == 0 and summary["contamination"]["truthfulqa_source"] is None
    assert "not checked against TruthfulQA" in (tmp_path / "out" / "README.md").read_text()


def test_formats_guard_reads_the_generation_csv_which_scoring_refuses(tmp_path, shared_dir):
    from spri_sft.format.build import build_dataset
    from spri_sft.format.config import FormatConfig

    csv = shared_dir / "data/truthfulqa/data/v0/TruthfulQA.csv"
    records = format_records(tmp_path, [TRUTHFULQA_QUESTION, *GARDEN_PROMPTS])
    config = FormatConfig(records=[str(records)], output_dir=str(tmp_path / "out"), truthfulqa_file=str(csv))
    summary = build_dataset(config)
    assert summary["dropped"]["contamination"] == 1 and summary["contamination"]["truthfulqa_source"] == str(csv)


def hub_answering(monkeypatch, shared_dir) -> list[tuple[str, str]]:
    """The Hub reachable, its TruthfulQA rows standing in from upstream's file; the (dataset, split) asked, in order."""
    from spri_sft import truthfulqa_data
    from spri_sft.rows import Row

    asked = []
    rows = json.loads((shared_dir / "data/truthfulqa/data/v0/mc_task.json").read_text())

    def hub_rows(dataset, split):
        asked.append((dataset, split))
        return [Row(f"row {i}", row) for i, row in enumerate(rows)]

    monkeypatch.setattr(truthfulqa_data, "hub_reachable", lambda: True)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(truthfulqa_data, "hub_rows", hub_rows)
    for module in ("spri_sft.evaluate.truthfulqa", "spri_sft.format.benchmarks"):  # their own imported names
        monkeypatch.setattr(f"{module}.hub_rows", hub_rows)
    return asked


def test_with_the_hub_format_guards_against_the_hub_questions_and_writes_no_copy(tmp_path, shared_dir, monkeypatch):
    from spri_sft.format.build import build_dataset
    from spri_sft.format.config import FormatConfig

    asked = hub_answering(monkeypatch, shared_dir)
    monkeypatch.setenv("SPRI_SFT_CACHE", str(tmp_path / "cache"))
    records = format_records(tmp_path, [TRUTHFULQA_QUESTION, *GARDEN_PROMPTS])
    summary = build_dataset(FormatConfig(records=[str(records)], output_dir=str(tmp_path / "out")))

    assert asked == [("truthfulqa/truthful_qa", "validation")]
    assert summary["dropped"]["contamination"] == 1
    assert summary["contamination"]["truthfulqa_source"] == "truthfulqa/truthful_qa (multiple_choice, validation)"
    assert not (tmp_path / "cache").exists()


def test_with_the_hub_evaluate_scores_the_hub_dataset_and_records_it(tmp_path, tiny_model_dir, shared_dir, monkeypatch):
    from spri_sft.cli import main

    asked = hub_answering(monkeypatch, shared_dir)
    assert main(evaluate_argv(tiny_model_dir, tmp_path / "eval")) == 0

    assert asked == [("truthfulqa/truthful_qa", "validation")]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["data_source"] == "truthfulqa/truthful_qa:multiple_choice:validation" and results["n"] == 2
    assert not (tmp_path / "eval" / packaged.FILE_NAME).exists()
