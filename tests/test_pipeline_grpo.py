"""`spri-sft run` with `grpo.enabled`: after each mode's SFT, GRPO continues its adapter on the prompts of its SFT
train split that have principles, rewarded by the critic of its generation, and is scored like any adapter, on the
tiny model.

The fake server's critic scores by round (`critic_scores=(2, 5)`): every spri record's principles are accepted on
their revision, so each of spri's SFT train prompts is a GRPO prompt; direct's records have no principles, so direct
shows the skip. GRPO uses the SmolLM2 GRPO recipe, cut to 2 steps of 2 short completions, so the recipe a user is
pointed at is the one the pipeline is tested with.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from support.fake_openai_server import FakeOpenAIServer
from test_pipeline import make_recipe, read, run_pipeline_from, run_twice

from spri_sft.errors import UserError
from spri_sft.pipeline.stages import Stage, StageChanged

pytestmark = pytest.mark.timeout(300)

GRPO_RECIPE = Path(__file__).resolve().parents[1] / "recipes/smollm2-135m-instruct/grpo/lora.yaml"
GRPO_STEPS = 2
COMPLETIONS_PER_STEP = 2


@pytest.fixture(scope="module")
def improving_critic():
    with FakeOpenAIServer(critic_scores=(2, 5)) as running:
        yield running


def grpo_recipe(directory: Path, model_dir: Path, server, truthfulqa_file: Path, **grpo_args) -> Path:
    """test_pipeline's two-mode recipe (spri, direct) with GRPO after SFT."""
    path = make_recipe(directory, model_dir, server, truthfulqa_file, modes=("spri", "direct"))
    recipe = yaml.safe_load(path.read_text())
    recipe["grpo"] = {
        "enabled": True,
        "recipe": str(GRPO_RECIPE),
        "args": {
            "max_steps": GRPO_STEPS, "save_steps": GRPO_STEPS, "num_generations": COMPLETIONS_PER_STEP,
            "per_device_train_batch_size": COMPLETIONS_PER_STEP, "max_completion_length": 8, "learning_rate": 1e-2,
            "log_completions": False, "dataloader_num_workers": 0,
            "admit_unaccepted_principles": False,  # the recipe's true: here every prompt must pass the threshold
            **grpo_args,
        },
    }  # fmt: skip
    recipe["wandb"] = {"enabled": False}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, tiny_model_dir, improving_critic, shared_dir):
    """One `spri-sft run` with GRPO on, its stdout, then a second run of the same command."""
    truthfulqa_file = shared_dir / "data/truthfulqa/data/v0/mc_task.json"
    run = run_twice(
        tmp_path_factory.mktemp("pipeline-grpo"),
        lambda tmp: grpo_recipe(tmp, tiny_model_dir, improving_critic, truthfulqa_file),
    )
    return {**run, "model": tiny_model_dir}


def test_grpo_continues_the_modes_sft_adapter_on_its_prompts_judged_by_its_generations_critic(grpo_run):
    root = grpo_run["root"]
    recipe = yaml.safe_load((root / "checkpoints/spri+grpo/recipe.yaml").read_text())
    assert recipe["model_name_or_path"] == str(grpo_run["model"])
    assert recipe["sft_adapter"] == str(root / "checkpoints/spri") and recipe["use_peft"] is True
    assert recipe["dataset_path"] == str(root / "dataset/spri/hf")
    assert recipe["generate_config"] == str(root / "checkpoints/spri+grpo/generate.yaml")  # this run's section
    adapter = read(root / "checkpoints/spri+grpo/adapter_config.json")
    assert (adapter["r"], sorted(adapter["target_modules"])) == (8, ["q_proj", "v_proj"])  # SFT's, not the recipe's
    assert read(root / "checkpoints/spri+grpo/stage.json")["outputs"] == {"steps": GRPO_STEPS}


def test_every_spri_train_prompt_is_a_grpo_prompt_and_each_completion_was_judged(grpo_run):
    root = grpo_run["root"]
    prompts = read(root / "checkpoints/spri+grpo/prompts.json")
    sft_train_rows = read(root / "dataset/spri/summary.json")["splits"]["train"]
    accepted_only = {
        "rows": sft_train_rows,
        "prompts": sft_train_rows,
        "dropped": {},
        "admit_unaccepted_principles": False,
    }
    assert prompts == accepted_only  # the improving critic accepted every revised principle at the threshold 4
    totals = read(root / "checkpoints/spri+grpo/reward.json")
    assert totals["completions"] == GRPO_STEPS * COMPLETIONS_PER_STEP
    assert totals["scored"] == totals["completions"]  # the fake critic always gives a score


def test_the_grpo_adapter_is_scored_against_the_base_model(grpo_run):
    root = grpo_run["root"]
    after = read(root / "eval/spri+grpo/results.json")
    assert after["adapter"] == str(root / "checkpoints/spri+grpo")
    assert read(root / "eval/spri+grpo/stage.json")["status"] == "done"


def test_a_mode_without_principles_skips_grpo_with_one_line_naming_why(grpo_run):
    root = grpo_run["root"]
    lines = [line for line in grpo_run["first"].splitlines() if line.startswith("[spri-sft] checkpoints/direct+grpo")]
    train_rows = read(root / "dataset/direct/summary.json")["splits"]["train"]
    assert lines == [
        f"[spri-sft] checkpoints/direct+grpo: skipped: no prompt to reward by its principles (of the {train_rows} SFT "
        f"train rows: {train_rows} no principles)"
    ]
    assert read(root / "checkpoints/direct+grpo/prompts.json")["prompts"] == 0
    assert not (root / "checkpoints/direct+grpo/stage.json").exists() and not (root / "eval/direct+grpo").exists()


def test_the_run_ends_naming_the_grpo_adapter_after_its_sft_one(grpo_run):
    root = grpo_run["root"]
    adapters = [line for line in grpo_run["first"].splitlines() if line.startswith("[spri-sft] adapter")]
    assert adapters == [
        f"[spri-sft] adapter (spri): {root / 'checkpoints/spri'}",
        f"[spri-sft] adapter (spri+grpo): {root / 'checkpoints/spri+grpo'}",
        f"[spri-sft] adapter (direct): {root / 'checkpoints/direct'}",
    ]


def test_a_rerun_skips_every_stage_grpo_included_and_rewrites_nothing(grpo_run):
    second = grpo_run["second"]
    skipped = re.findall(r"\[spri-sft\] (\S+): done in an earlier run, skipped", second)
    assert skipped == [
        "generate/spri", "dataset/spri", "generate/direct", "dataset/direct", "eval/base",
        "checkpoints/spri", "eval/spri", "checkpoints/spri+grpo", "eval/spri+grpo", "checkpoints/direct", "eval/direct",
    ]  # fmt: skip
    assert "checkpoints/direct+grpo: skipped: no prompt to reward" in second
    for path, mtime in grpo_run["mtimes"].items():
        if path.name not in ("report.md", "report.json", "config.yaml"):
            assert path.stat().st_mtime_ns == mtime, path


def test_a_typo_in_the_grpo_arguments_stops_the_run_before_generation(
    tmp_path, tiny_model_dir, improving_critic, shared_dir
):
    truthfulqa_file = shared_dir / "data/truthfulqa/data/v0/mc_task.json"
    recipe = grpo_recipe(tmp_path, tiny_model_dir, improving_critic, truthfulqa_file, num_generation=4)
    with pytest.raises(UserError, match=r"^grpo \(grpo.args\): unknown field 'num_generation' \(did you mean"):
        run_pipeline_from(recipe)
    assert not (tmp_path / "run").exists()


# -- the GRPO stage's inputs, without a training ----------------------------------------------------


def finished(name: str, directory: Path) -> Stage:
    stage = Stage.made_from(name, directory, {})
    stage.begin()
    stage.finish()
    return stage


def test_a_mode_left_without_prompts_refuses_the_grpo_model_an_earlier_run_trained_with_other_settings(tmp_path):
    from test_grpo import make_run, record

    from spri_sft.pipeline.config import PipelineConfig
    from spri_sft.pipeline.run import TrainPlan, _grpo, training_stage

    sft_output = make_run(tmp_path, [record(n, [2]) for n in range(8)])  # no principles accepted at 4
    dataset, sft = finished("dataset/spri", sft_output), finished("checkpoints/spri", tmp_path / "sft")
    output = tmp_path / "checkpoints/spri+grpo"
    args = {"dataset_path": str(sft_output / "hf"), "generate_config": str(tmp_path / "generate/config.yaml")}
    earlier = TrainPlan("spri+grpo", output, {**args, "admit_unaccepted_principles": True}, None, "grpo")
    trained = training_stage(earlier, [dataset.output_id, sft.output_id])
    trained.begin()
    trained.finish(steps=2)  # an earlier run trained on the unaccepted principles
    now = TrainPlan("spri+grpo", output, {**args, "admit_unaccepted_principles": False}, None, "grpo")

    with pytest.raises(StageChanged, match=r"checkpoints/spri\+grpo: admit_unaccepted_principles true → false"):
        _grpo(PipelineConfig(), now, dataset, sft)  # not skipped: that would leave the old model as this run's
    assert not (output / "prompts.json").exists()


def test_a_critic_config_the_recipe_names_enters_the_fingerprint_by_its_contents_the_pipelines_own_by_none(tmp_path):
    from spri_sft.pipeline.run import GENERATION_FILE, TrainPlan, training_stage

    output = tmp_path / "checkpoints/spri+grpo"
    critic, own = tmp_path / "critic.yaml", output / GENERATION_FILE
    own.parent.mkdir(parents=True)
    critic.write_text("critic:\n  model: judge-a\n")
    own.write_text("critic:\n  base_url: [http://old:8001/v1]\n")
    plan = TrainPlan("spri+grpo", output, {"critic_config": str(critic), "generate_config": str(own)}, None, "grpo")
    before = training_stage(plan, ["data", "sft"]).fingerprint

    own.write_text("critic:\n  base_url: [http://new:9001/v1]\n")  # an address: the same verdicts
    assert training_stage(plan, ["data", "sft"]).fingerprint == before
    critic.write_text("critic:\n  model: judge-b\n")  # another judge: other rewards
    assert training_stage(plan, ["data", "sft"]).fingerprint != before
