"""The TruthfulQA copy in the package: upstream's v0 file, the pipeline's fallback without a file or the Hub."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from spri_sft.config import from_dict
from spri_sft.evaluate import packaged_truthfulqa as packaged
from spri_sft.evaluate.truthfulqa import load_questions
from spri_sft.format.contamination import read_questions
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
    assert "Hub is unreachable" in line and "packaged copy" in line
    assert source["source"] == packaged.SOURCE
    # One file for both readers: the evaluation's questions and the SFT data's guard.
    questions, digest = load_questions(source["file"])
    assert len(questions) == 817 and digest == packaged.SHA256
    assert read_questions(source["file"]) == [q.question for q in questions]


def test_a_rerun_with_the_hub_back_keeps_the_packaged_copy_its_stages_were_made_with(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first = pipeline_run._truthfulqa_source(pipeline_config(tmp_path), tmp_path / "run")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(pipeline_run, "_hub_reachable", lambda: pytest.fail("the Hub was asked"))
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
