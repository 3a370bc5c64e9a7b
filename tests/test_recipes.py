"""Every recipe parses into its job's dataclasses: no unknown or mistyped field, no missing file."""

from __future__ import annotations

from pathlib import Path

import pytest

from spri_sft.train.sft import make_parser

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*/sft/*.yaml"))
PIPELINES = sorted([*(ROOT / "recipes").glob("*/pipeline/*.yaml"), *(ROOT / "recipes/paper").glob("*/*.yaml")])
PAPER_MODELS = [
    "llama-3.1-8b",
    "llama-3.1-8b-instruct",
    "mistral-7b-v0.3",
    "mistral-7b-instruct-v0.3",
    "gemma-2-9b",
    "gemma-2-9b-it",
]
STUDENT_RECIPES = [
    ROOT / "recipes" / model / "sft" / f"{kind}.yaml" for model in PAPER_MODELS for kind in ("lora", "qlora")
]
# All the paper (SPRI, §5.2) fixes of a student's training: the student, LoRA, the loss on the response only, Alpaca
# for base students, the best checkpoint by validation loss. Anything else a recipe sets is this project's choice.
PAPER_FIELDS = {"model_name_or_path", "use_peft", "assistant_only_loss", "training_template", "load_best_model_at_end",
                "metric_for_best_model", "greater_is_better"}  # fmt: skip
# Where files go and what is logged: no bearing on the trained model.
BOOKKEEPING = {"env", "dataset_path", "dataset_train_split", "dataset_test_split", "output_dir", "run_name",
               "logging_steps", "report_to", "per_device_eval_batch_size"}  # fmt: skip


def test_the_published_models_have_lora_and_qlora_recipes():
    names = {(p.parts[-3], p.stem) for p in RECIPES}
    for model in PAPER_MODELS:
        assert {(model, "lora"), (model, "qlora")} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parts[-3]}/{p.stem}")
def test_recipe_parses(recipe, monkeypatch):
    for variable in ("WANDB_PROJECT", "WANDB_RUN_GROUP"):
        # The recipe's env: block sets them through os.environ; setting them here first makes
        # monkeypatch restore them (it records nothing to undo for an unset variable it deletes).
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
    script_args, training_args, model_args = make_parser().parse_args_and_config(
        args=["--config", str(recipe), "--use_cpu", "true", "--bf16", "false"]
    )
    assert script_args.dataset_path and training_args.output_dir and model_args.model_name_or_path
    assert training_args.assistant_only_loss
    assert model_args.use_peft and model_args.load_in_4bit == (recipe.stem == "qlora")
    if (
        "instruct" not in recipe.parts[-3]
        and not recipe.parts[-3].endswith("-it")
        and "smollm2" not in recipe.parts[-3]
    ):
        assert script_args.training_template == "alpaca"  # the paper: base students train on Alpaca (§5.2)
    else:
        assert script_args.training_template == "model"
    if recipe.parts[-3] in PAPER_MODELS:  # 16 rows a step whatever the GPU count: accumulation is derived from it
        assert script_args.effective_batch_size == 16 and training_args.gradient_accumulation_steps == 1


@pytest.mark.parametrize("recipe", STUDENT_RECIPES, ids=lambda p: f"{p.parts[-3]}/{p.stem}")
def test_every_value_of_a_student_recipe_says_whether_it_is_the_papers_or_this_projects(recipe):
    import re

    text = recipe.read_text()
    assert "published experiment's setup" not in text and "published setup kept" not in text
    assert "The paper (§5.2) fixes only" in text.split("\n\n")[0]  # the header says what the paper fixes
    for line in text.splitlines():
        key = re.match(r"^(\w+):", line)
        if key is None or key.group(1) in BOOKKEEPING:
            continue
        whose = re.search(r"#\s*(paper §5\.2|project)\b", line)
        assert whose, f"{recipe.parts[-3]}/{recipe.name}: {key.group(1)} does not say whose value it is"
        if whose.group(1) == "paper §5.2":
            assert key.group(1) in PAPER_FIELDS, f"{key.group(1)} is claimed for the paper, which does not set it"


@pytest.mark.parametrize("setup", ["dolly", "mixinstruct"])
def test_the_paper_recipes_score_truthfulqa_with_the_paper_era_bos_convention(setup):
    """lm-eval 0.4.4-0.4.9.1 (the paper's, Feb 2025) added no BOS for causal models but Gemma's, which always got one."""
    from spri_sft.config import load_config
    from spri_sft.pipeline.config import PipelineConfig

    for model in PAPER_MODELS:
        config = load_config(PipelineConfig, ["--config", str(ROOT / "recipes/paper" / setup / f"{model}.yaml")])
        assert config.evaluate.add_bos_token is model.startswith("gemma"), model


def test_the_paper_setups_have_a_pipeline_recipe_per_model_with_every_table4_row():
    from spri_sft.config import load_config
    from spri_sft.generate.engine import TABLE4_MODES
    from spri_sft.pipeline.config import PipelineConfig

    for setup, train_rows in [("dolly", 10_000), ("mixinstruct", 50_000)]:
        for model in PAPER_MODELS:
            config = load_config(PipelineConfig, ["--config", str(ROOT / "recipes/paper" / setup / f"{model}.yaml")])
            assert config.modes == list(TABLE4_MODES)
            # The released code's requests and loop rules: the authors' prompts, a raw Prometheus critic
            # asked once per round, unscored replies kept, 256 new tokens with at least 30.
            loop, critic = config.generate.loop, config.generate.critic
            assert loop.official_checkout and loop.score_retries == 0 and loop.unscored == "accept"
            assert critic.prompt_format == "raw" and config.generate.base.prompt_format == "chat"
            for role in (config.generate.base, critic):
                assert (role.max_new_tokens, role.min_new_tokens) == (256, 30)
            assert config.generate.prompts.response_column == {"dolly": "response", "mixinstruct": "output"}[setup]
            assert config.format.validation_rows == 2_000
            assert config.format.near_duplicate_threshold is None  # the paper drops no near duplicates
            prompts = config.generate.prompts
            if setup == "dolly":  # one source, split by format's hash of the prompt
                assert prompts.limit == train_rows + 2_000 and not prompts.sources
            else:  # the paper (§5.2): training prompts from MixInstruct's train split, validation from its validation split
                parts = [(p.split, p.limit, p.sft_split) for p in prompts.sources]
                assert parts == [("train", train_rows, "train"), ("validation", 2_000, "validation")]
                assert prompts.limit is None and (prompts.prompt_column, prompts.context_column) == (
                    "instruction",
                    "input",
                )
            assert config.train.recipe == f"recipes/{model}/sft/lora.yaml"


@pytest.mark.parametrize("recipe", PIPELINES, ids=lambda p: "/".join(p.parts[-3:]))
def test_pipeline_recipe_parses_and_its_training_recipe_validates(recipe, monkeypatch, tmp_path):
    from spri_sft.config import load_config
    from spri_sft.pipeline.config import PipelineConfig
    from spri_sft.pipeline.run import check_recipe, train_plan

    monkeypatch.chdir(ROOT)  # recipes name each other relative to the repository root
    config = load_config(
        PipelineConfig, ["--config", str(recipe), "--train.args.use_cpu", "true", "--train.args.bf16", "false"]
    )
    check_recipe(config)
    for mode in config.modes:
        plan = train_plan(config, mode, tmp_path, "name", "group")
        assert plan.args["dataset_path"] == str(tmp_path / "dataset" / mode / "hf")
        assert plan.args["model_name_or_path"]


def test_the_managed_vllm_variant_makes_the_records_of_its_hand_served_recipe():
    from spri_sft.config import load_config
    from spri_sft.generate.identity import request_settings
    from spri_sft.pipeline.config import PipelineConfig

    managed, by_hand = (
        load_config(PipelineConfig, ["--config", str(ROOT / "recipes/paper" / path)])
        for path in ("managed-vllm/dolly-llama-3.1-8b-instruct.yaml", "dolly/llama-3.1-8b-instruct.yaml")
    )
    assert (managed.generate.base.backend, managed.generate.critic.backend) == ("vllm", "vllm")
    assert managed.generate_dir == by_hand.generate_dir and managed.modes == by_hand.modes
    # What enters record ids besides the templates: the same, so both recipes share one generation.
    assert managed.generate.loop == by_hand.generate.loop and managed.generate.prompts == by_hand.generate.prompts
    for role in ("base", "critic"):
        assert request_settings(getattr(managed.generate, role)) == request_settings(getattr(by_hand.generate, role))


# The recipes of one setup share one generation (generate_dir): a generate setting that differed in one of them would
# give it other record ids, and so a second generation of every prompt by the 70B base beside the first.
SETUP_RECIPES = {
    "dolly": [f"dolly/{model}.yaml" for model in PAPER_MODELS] + ["managed-vllm/dolly-llama-3.1-8b-instruct.yaml"],
    "mixinstruct": [f"mixinstruct/{model}.yaml" for model in PAPER_MODELS],
}


@pytest.mark.parametrize("setup", ["dolly", "mixinstruct"])
def test_the_six_students_of_a_setup_have_one_generate_section_generate_dir_and_modes(setup):
    from spri_sft.config import load_config, to_dict
    from spri_sft.pipeline.config import PipelineConfig

    students = {
        model: load_config(PipelineConfig, ["--config", str(ROOT / "recipes/paper" / setup / f"{model}.yaml")])
        for model in PAPER_MODELS
    }
    shared = students[PAPER_MODELS[0]]
    for model, student in students.items():
        assert student.generate_dir == shared.generate_dir and student.modes == shared.modes, model
        assert to_dict(student.generate) == to_dict(shared.generate), model


@pytest.mark.parametrize("setup", ["dolly", "mixinstruct"])
def test_every_recipe_of_a_setup_has_the_same_generation_identity_in_every_mode(setup, tmp_path):
    from test_official_prompts import write_checkout

    from spri_sft.config import load_config
    from spri_sft.generate.identity import generation_identity
    from spri_sft.generate.prompts import load_prompt_set
    from spri_sft.pipeline.config import PipelineConfig
    from spri_sft.pipeline.run import generation_job

    checkout = write_checkout(tmp_path / "SPRI-public")  # the authors' texts stand in: no clone here
    identities = {}
    for recipe in SETUP_RECIPES[setup]:
        config = load_config(
            PipelineConfig,
            ["--config", str(ROOT / "recipes/paper" / recipe), "--generate.loop.official_checkout", str(checkout)],
        )
        templates = load_prompt_set(config.generate.loop.prompts_file)
        identities[recipe] = {
            mode: generation_identity(generation_job(config, mode), templates) for mode in config.modes
        }
    shared = identities[SETUP_RECIPES[setup][0]]
    assert len(shared) == 7  # every row of Table 4
    for recipe, identity in identities.items():
        assert identity == shared, recipe


# -- GRPO -----------------------------------------------------------------------------------------------------------

GRPO_RECIPES = sorted((ROOT / "recipes").glob("*/grpo/*.yaml"))
STUDENT_GRPO_RECIPES = [ROOT / "recipes" / model / "grpo" / "lora.yaml" for model in PAPER_MODELS]
# What a GRPO recipe of a student takes from the paper: the student, LoRA and (base students) Alpaca. The paper has
# no RL, so every GRPO value is this project's.
PAPER_FIELDS_IN_GRPO = {"model_name_or_path", "use_peft", "training_template"}


def parse_grpo(recipe: Path, monkeypatch):
    """The recipe through TRL's own parser and GRPOConfig's checks (e.g. the generation batch holds whole groups)."""
    from spri_sft.train import grpo

    for variable in ("WANDB_PROJECT", "WANDB_RUN_GROUP"):  # the recipe's env: block sets them; restored after
        monkeypatch.setenv(variable, "")
    return grpo.make_parser().parse_args_and_config(
        args=["--config", str(recipe), "--use_cpu", "true", "--bf16", "false"]
    )


@pytest.mark.parametrize("recipe", GRPO_RECIPES, ids=lambda p: f"{p.parts[-3]}/{p.stem}")
def test_grpo_recipe_parses_into_trls_grpo_settings(recipe, monkeypatch):
    script_args, training_args, model_args = parse_grpo(recipe, monkeypatch)
    assert script_args.dataset_path and training_args.output_dir and model_args.model_name_or_path
    assert model_args.use_peft
    assert training_args.generation_batch_size % training_args.num_generations == 0


@pytest.mark.parametrize("model", PAPER_MODELS)
def test_a_students_grpo_recipe_generates_with_colocated_vllm_and_trains_its_sft_recipes_model(model, monkeypatch):
    from spri_sft.config import load_config
    from spri_sft.pipeline.config import PipelineConfig
    from spri_sft.train.sft import make_parser as sft_parser

    script_args, training_args, model_args = parse_grpo(ROOT / "recipes" / model / "grpo" / "lora.yaml", monkeypatch)
    sft_script, _, sft_model = sft_parser().parse_args_and_config(
        args=["--config", str(ROOT / "recipes" / model / "sft" / "lora.yaml"), "--use_cpu", "true", "--bf16", "false"]
    )
    # The student, its precision, attention (Gemma-2: eager), LoRA shape and template are its SFT recipe's.
    for name in ("model_name_or_path", "dtype", "attn_implementation", "lora_r", "lora_alpha", "lora_target_modules"):
        assert getattr(model_args, name) == getattr(sft_model, name), name
    assert script_args.training_template == sft_script.training_template
    assert (script_args.chat_template_fallback, model_args.load_in_4bit) == (sft_script.chat_template_fallback, False)
    # TRL's vLLM inside the training process, asleep while the step trains, its context bounded.
    assert training_args.use_vllm and training_args.vllm_mode == "colocate" and training_args.vllm_enable_sleep_mode
    assert 0 < training_args.vllm_gpu_memory_utilization <= 0.5
    assert training_args.vllm_max_model_length >= 4 * training_args.max_completion_length
    # The prompts are the paper pipeline's SPRI dataset for this student, whose records name the paper's critic; a
    # completion gets the paper's cap on new tokens.
    paper = load_config(PipelineConfig, ["--config", str(ROOT / "recipes/paper/dolly" / f"{model}.yaml")])
    assert script_args.dataset_path == str(Path(paper.output_dir) / "dataset" / "spri")
    assert script_args.critic_config is None  # the generate run's own config.yaml: its critic
    assert training_args.max_completion_length == paper.generate.base.max_new_tokens == 256
    assert training_args.num_generations == 8 and training_args.generation_batch_size == 32  # 4 prompts a step


@pytest.mark.parametrize("recipe", STUDENT_GRPO_RECIPES, ids=lambda p: p.parts[-3])
def test_every_value_of_a_students_grpo_recipe_says_whose_it_is_and_claims_no_grpo_value_for_the_paper(recipe):
    import re

    text = recipe.read_text()
    assert "The paper has no RL" in text.split("\n\n")[0]
    for line in text.splitlines():
        key = re.match(r"^(\w+):", line)
        if key is None or key.group(1) in BOOKKEEPING | {"log_completions"}:
            continue
        whose = re.search(r"#\s*(paper §5\.2|project)\b", line)
        assert whose, f"{recipe.parts[-3]}: {key.group(1)} does not say whose value it is"
        if whose.group(1) == "paper §5.2":
            assert key.group(1) in PAPER_FIELDS_IN_GRPO, f"{key.group(1)} is claimed for the paper, which has no RL"


@pytest.mark.parametrize("model", PAPER_MODELS)
def test_a_students_grpo_recipe_runs_in_the_paper_pipeline_on_the_paths_its_launch_command_names(model, monkeypatch):
    import re

    from spri_sft.config import load_config
    from spri_sft.pipeline.config import PipelineConfig
    from spri_sft.pipeline.run import after_sft_plan, train_plan

    monkeypatch.chdir(ROOT)  # recipes name each other relative to the repository root
    recipe = f"recipes/{model}/grpo/lora.yaml"
    config = load_config(
        PipelineConfig,
        [
            "--config",
            str(ROOT / "recipes/paper/dolly" / f"{model}.yaml"),
            "--grpo.enabled",
            "true",
            "--grpo.recipe",
            recipe,
        ],
    )
    root = Path(config.output_dir)
    plan = after_sft_plan(config, "grpo", train_plan(config, "spri", root, "name", "group"), root, "name", "group")

    # The standalone command in the recipe's header continues the adapter the pipeline does and reads the config of
    # the pipeline's generation (the pipeline itself writes this run's generate section beside the GRPO training).
    header = (ROOT / recipe).read_text().split("\n\n")[0]
    assert re.search(r"--sft_adapter (\S+)", header).group(1) == plan.args["sft_adapter"]
    assert re.search(r"--generate_config (\S+)", header).group(1) == str(config.generation_dir("spri") / "config.yaml")
    assert plan.args["generate_config"] == str(root / "checkpoints" / "spri+grpo" / "generate.yaml")
    # The pipeline trains on the dataset the recipe names (its hf/ inside), with the recipe's generation settings.
    assert plan.args["dataset_path"] == str(root / "dataset" / "spri" / "hf")
    assert plan.args["use_vllm"] and plan.args["vllm_mode"] == "colocate"
