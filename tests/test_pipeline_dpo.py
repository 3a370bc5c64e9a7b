"""`spri-sft run` with `dpo.enabled`: after each mode's SFT, DPO on that mode's preference pairs, scored like any
adapter, on the tiny model.

The fake server's critic scores by round (`critic_scores=(2, 5)`): the first version of every stage 2, its
revision 5. So each spri record holds a pair (its revised response over its draft), while direct, one version
per record, holds none: in one run, spri gets a DPO stage and direct shows the skip. DPO uses the SmolLM2 DPO
recipe, cut to 2 steps, so the recipe a user is pointed at is the one the pipeline is tested with.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from support.fake_openai_server import FakeOpenAIServer
from test_pipeline import QUESTIONS, make_recipe, read, run_pipeline_from, run_twice

from spri_sft.errors import UserError

pytestmark = pytest.mark.timeout(300)

DPO_RECIPE = Path(__file__).resolve().parents[1] / "recipes/smollm2-135m-instruct/dpo/lora.yaml"
SFT_LORA_R = 8  # make_recipe's; the DPO recipe's own lora_r is 16
DPO_STEPS = 2


@pytest.fixture(scope="module")
def improving_critic():
    with FakeOpenAIServer(critic_scores=(2, 5)) as running:
        yield running


def dpo_recipe(directory: Path, model_dir: Path, server, truthfulqa_file: Path, **dpo_args) -> Path:
    """test_pipeline's two-mode recipe (spri, direct) with DPO after SFT."""
    path = make_recipe(directory, model_dir, server, truthfulqa_file, modes=("spri", "direct"))
    recipe = yaml.safe_load(path.read_text())
    recipe["dpo"] = {
        "enabled": True,
        "recipe": str(DPO_RECIPE),
        "args": {
            "max_steps": DPO_STEPS, "eval_steps": DPO_STEPS, "save_steps": DPO_STEPS, "learning_rate": 1e-2,
            "max_length": 128, "dataloader_num_workers": 0, **dpo_args,
        },
    }  # fmt: skip
    recipe["wandb"] = {"enabled": False}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model_dir, improving_critic, shared_dir):
    """One `spri-sft run` with DPO on, its stdout, then a second run of the same command."""
    truthfulqa_file = shared_dir / "data/truthfulqa/data/v0/mc_task.json"
    run = run_twice(
        tmp_path_factory.mktemp("pipeline-dpo"),
        lambda tmp: dpo_recipe(tmp, tiny_model_dir, improving_critic, truthfulqa_file),
    )
    return {**run, "model": tiny_model_dir}


def test_the_improving_critic_gives_every_spri_record_its_draft_as_the_rejected_version(dpo_run):
    root = dpo_run["root"]
    records = [json.loads(line) for line in (root / "generate/spri/records.jsonl").read_text().splitlines()]
    for record in records:
        assert [r["score"] for r in record["rounds"] if r["stage"] == "response"] == [2, 5]
    pairs = read(root / "dataset/spri/summary.json")["preference"]
    assert pairs["pairs"] == len(records) == 8 and pairs["splits"] == {"train": 6, "validation": 2}


def test_dpo_continues_the_modes_sft_adapter_on_its_pairs(dpo_run):
    root, model = dpo_run["root"], dpo_run["model"]
    recipe = yaml.safe_load((root / "checkpoints/spri+dpo/recipe.yaml").read_text())
    assert recipe["model_name_or_path"] == str(model)
    assert recipe["sft_adapter"] == str(root / "checkpoints/spri")
    assert recipe["dataset_path"] == str(root / "dataset/spri/preference/hf")
    adapter = read(root / "checkpoints/spri+dpo/adapter_config.json")
    assert adapter["r"] == SFT_LORA_R and adapter["base_model_name_or_path"] == str(model)  # the SFT adapter's shape
    assert read(root / "checkpoints/spri+dpo/effective_config.json")["reference"].startswith(
        f"the SFT adapter {root / 'checkpoints/spri'}"
    )
    assert read(root / "checkpoints/spri+dpo/stage.json")["outputs"] == {"steps": DPO_STEPS}
    assert not (root / "checkpoints/spri+dpo/ref").exists()


def test_the_dpo_adapter_is_scored_against_the_base_model(dpo_run):
    root = dpo_run["root"]
    after, before = read(root / "eval/spri+dpo/results.json"), read(root / "eval/base/results.json")
    assert after["adapter"] == str(root / "checkpoints/spri+dpo") and after["n"] == QUESTIONS
    scores = read(root / "report.json")["dpo"]["spri+dpo"]["truthfulqa"]
    assert scores["mc1"] == after["mc1"] and scores["mc2"] == after["mc2"]
    assert scores["mc2_delta"] == pytest.approx(after["mc2"] - before["mc2"])
    assert scores["mc2_interval"] is not None  # paired with the base model's questions


def test_the_report_has_a_dpo_row_beside_the_modes_sft_row(dpo_run):
    root = dpo_run["root"]
    row = read(root / "report.json")["dpo"]["spri+dpo"]
    state = read(root / "checkpoints/spri+dpo/trainer_state.json")
    assert row["pairs"]["splits"] == {"train": 6, "validation": 2} and row["skipped"] is None
    assert row["train"]["steps"] == DPO_STEPS
    assert row["train"]["train_loss"] == [e["loss"] for e in state["log_history"] if "loss" in e][-1]
    assert row["train"]["eval_loss"] == read(root / "checkpoints/spri+dpo/all_results.json")["eval_loss"]
    lines = (root / "report.md").read_text().splitlines()
    names = [line.split("|")[1].strip() for line in lines if line.startswith("| SFT")][:4]
    assert names == ["SFT on spri", "SFT+DPO on spri", "SFT on direct", "SFT+DPO on direct"]
    dpo_line = next(line for line in lines if line.startswith("| SFT+DPO on spri |"))  # the main table's
    cells = [cell.strip() for cell in dpo_line.strip("|").split("|")]
    assert cells[7] == "6 / 2 pairs" and "–" not in cells[8:], dpo_line  # pairs, steps, losses, scores and Δs
    assert "| spri+dpo − base |" in "\n".join(lines)


def test_a_mode_without_pairs_skips_dpo_with_one_line_and_the_report_says_no_pairs(dpo_run):
    root = dpo_run["root"]
    output = dpo_run["first"].splitlines()
    lines = [line for line in output if line.startswith("[spri-sft] checkpoints/direct+dpo")]
    assert len(lines) == 1 and "skipped: no preference pairs" in lines[0] and "single_version 8" in lines[0], lines
    assert not (root / "checkpoints/direct+dpo").exists() and not (root / "eval/direct+dpo").exists()
    assert read(root / "report.json")["dpo"]["direct+dpo"]["skipped"] == "no pairs"
    rows = [line for line in (root / "report.md").read_text().splitlines() if line.startswith("| SFT+DPO on direct |")]
    assert len(rows) == 2 and all("no pairs" in row for row in rows)  # the main table's and the DPO section's


def test_the_run_ends_naming_the_dpo_adapter_after_its_sft_one(dpo_run):
    root = dpo_run["root"]
    adapters = [line for line in dpo_run["first"].splitlines() if line.startswith("[spri-sft] adapter")]
    assert adapters == [
        f"[spri-sft] adapter (spri): {root / 'checkpoints/spri'}",
        f"[spri-sft] adapter (spri+dpo): {root / 'checkpoints/spri+dpo'}",
        f"[spri-sft] adapter (direct): {root / 'checkpoints/direct'}",
    ]


def test_a_rerun_skips_every_stage_dpo_included_and_rewrites_nothing(dpo_run):
    second = dpo_run["second"]
    skipped = re.findall(r"\[spri-sft\] (\S+): done in an earlier run, skipped", second)
    assert skipped == [
        "generate/spri", "dataset/spri", "generate/direct", "dataset/direct", "eval/base",
        "checkpoints/spri", "eval/spri", "checkpoints/spri+dpo", "eval/spri+dpo", "checkpoints/direct", "eval/direct",
    ]  # fmt: skip
    assert "checkpoints/direct+dpo: skipped: no preference pairs" in second
    for path, mtime in dpo_run["mtimes"].items():
        if path.name not in ("report.md", "report.json", "config.yaml"):
            assert path.stat().st_mtime_ns == mtime, path


def test_a_typo_in_the_dpo_arguments_stops_the_run_before_generation(
    tmp_path, tiny_model_dir, improving_critic, shared_dir
):
    truthfulqa_file = shared_dir / "data/truthfulqa/data/v0/mc_task.json"
    recipe = dpo_recipe(tmp_path, tiny_model_dir, improving_critic, truthfulqa_file, betaa=0.2)
    with pytest.raises(UserError, match=r"^dpo \(dpo.args\): unknown field 'betaa' \(did you mean 'beta'\?\)$"):
        run_pipeline_from(recipe)
    assert not (tmp_path / "run").exists()
