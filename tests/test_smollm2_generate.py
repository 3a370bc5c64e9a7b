"""Real SPRI generation with the embedded default model (SmolLM2-135M-Instruct) on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spri_sft.config import load_config
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.run import generate

pytestmark = pytest.mark.slow

RECIPE = Path(__file__).resolve().parents[1] / "recipes/smollm2-135m-instruct/generate/spri.yaml"


def test_smollm2_recipe_runs_end_to_end(tmp_path):
    config = load_config(
        GenerateConfig,
        [
            "--config",
            str(RECIPE),
            "--output_dir",
            str(tmp_path),
            "--prompts.limit",
            "2",
            "--base.max_new_tokens",
            "48",
            "--critic.max_new_tokens",
            "48",
            "--progress",
            "false",
        ],
    )
    summary = generate(config)
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 and summary["records"] == 2
    for record in records:
        assert record["status"] in ("accepted", "max_rounds")
        assert record["principles"] and record["response"]
        assert record["usage"]["base"]["model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
        assert all(r["finish_reason"] in ("stop", "length") for r in record["rounds"])
