"""YAML configs with dotted command-line overrides, checked against the config dataclass."""

import pytest

from spri_sft.config import format_help, load_config
from spri_sft.errors import UserError
from spri_sft.generate.config import GenerateConfig


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_need_no_file():
    config = load_config(GenerateConfig, [])
    assert config.mode == "spri" and config.loop.max_rounds == 4 and config.base.temperature == 0.7


def test_yaml_sets_nested_fields(tmp_path):
    path = write(tmp_path, "mode: direct\ncritic:\n  backend: openai\n  base_url: [http://a/v1, http://b/v1]\n")
    config = load_config(GenerateConfig, ["--config", str(path)])
    assert config.mode == "direct"
    assert config.critic.base_url == ["http://a/v1", "http://b/v1"]
    assert config.base.backend == "transformers"


def test_command_line_overrides_the_file(tmp_path):
    path = write(tmp_path, "loop:\n  max_rounds: 2\n")
    argv = ["--config", str(path), "--loop.max_rounds", "5", "--critic.base_url=http://x/v1", "--base.top_k", "null"]
    config = load_config(GenerateConfig, argv)
    assert config.loop.max_rounds == 5
    assert config.critic.base_url == ["http://x/v1"]
    assert config.base.top_k is None


def test_overrides_reach_into_a_free_form_mapping(tmp_path):
    from spri_sft.pipeline.config import PipelineConfig

    path = write(tmp_path, "train:\n  args:\n    max_steps: 20\n    env: {A: x}\n")
    argv = ["--config", str(path), "--train.args.max_steps", "5", "--train.args.lora_target_modules", "[q, v]",
            "--train.args.env.B", "y"]  # fmt: skip
    config = load_config(PipelineConfig, argv)
    assert config.train.args == {"max_steps": 5, "env": {"A": "x", "B": "y"}, "lora_target_modules": ["q", "v"]}


def test_words_after_a_list_option_are_its_items_as_a_shell_glob_writes_them():
    from spri_sft.format.config import FormatConfig

    config = load_config(
        FormatConfig, ["--records", "shard-0/records.jsonl", "shard-1/records.jsonl", "--output_dir", "out"]
    )
    assert config.records == ["shard-0/records.jsonl", "shard-1/records.jsonl"] and config.output_dir == "out"


def test_int_is_accepted_where_a_float_is_expected():
    assert load_config(GenerateConfig, ["--base.temperature", "1"]).base.temperature == 1.0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--loop.max_round", "3"], "unknown field 'max_round'"),
        (["--critics.model", "x"], "no such section 'critics'"),
        (["--loop.max_rounds", "three"], "--loop.max_rounds: expected int"),
        (["--mode", "best-of-n"], "'best-of-n' is not one of"),
        (["--progress", "maybe"], "expected true or false"),
        (["--loop"], "needs a value"),
        (["run.yaml", "stray"], "unexpected argument 'stray'"),  # a first word is the recipe; a second is stray
        # outside the range the field's metadata states
        (["--loop.threshold", "9"], r"--loop.threshold: must be >= 1 and <= 5, got 9"),
        (["--loop.threshold", "0"], r"--loop.threshold: must be >= 1 and <= 5, got 0"),
        (["--loop.max_rounds", "0"], r"--loop.max_rounds: must be >= 1, got 0"),
        (["--loop.score_retries", "-1"], r"--loop.score_retries: must be >= 0, got -1"),
        (["--prompts.limit", "-1"], r"--prompts.limit: must be >= 0, got -1"),
        (["--critic.top_p", "0"], r"--critic.top_p: must be > 0 and <= 1, got 0"),
        (["--shard", "0/2", "1/2"], r"--shard: takes one value, got 2: 0/2 1/2"),
        (["--config", "a.yaml", "b.yaml"], r"unexpected argument 'b.yaml': --config takes one file"),
    ],
)
def test_bad_overrides_name_the_flag(argv, message):
    with pytest.raises(UserError, match=message):
        load_config(GenerateConfig, argv)


def test_unknown_key_in_file_names_the_file_and_key(tmp_path):
    path = write(tmp_path, "loop:\n  treshold: 3\n")
    with pytest.raises(UserError, match=r"run.yaml: unknown field 'loop.treshold'"):
        load_config(GenerateConfig, ["--config", str(path)])


def test_invalid_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "mode: spri\nloop: [unclosed\n")
    with pytest.raises(UserError, match=r"run.yaml:\d+: invalid YAML"):
        load_config(GenerateConfig, ["--config", str(path)])


def test_missing_config_file():
    with pytest.raises(UserError, match="nope.yaml: config file not found"):
        load_config(GenerateConfig, ["--config", "nope.yaml"])


def test_help_documents_every_field_by_dotted_name():
    text = format_help(GenerateConfig)
    for name in ["--mode", "--prompts.context_column", "--critic.base_url", "--loop.score_retries", "--token_budget"]:
        assert name in text
    assert "Several URLs are replicas".lower() in text.lower()


def test_a_file_value_outside_its_fields_range_names_the_file_and_field(tmp_path):
    path = write(tmp_path, "loop:\n  max_rounds: 0\n")
    with pytest.raises(UserError, match=r"run.yaml: field 'loop.max_rounds': must be >= 1, got 0"):
        load_config(GenerateConfig, ["--config", str(path)])


def test_the_ends_of_a_range_and_null_are_accepted():
    config = load_config(GenerateConfig, ["--loop.threshold", "5", "--loop.max_rounds", "1", "--prompts.limit", "0"])
    assert (config.loop.threshold, config.loop.max_rounds, config.prompts.limit) == (5, 1, 0)
    assert load_config(GenerateConfig, ["--prompts.limit", "null"]).prompts.limit is None


def test_an_open_end_of_a_range_excludes_its_bound():
    from spri_sft.format.config import FormatConfig

    assert load_config(FormatConfig, ["--validation_fraction", "0"]).validation_fraction == 0
    with pytest.raises(UserError, match=r"--validation_fraction: must be >= 0 and < 1, got 1.0"):
        load_config(FormatConfig, ["--validation_fraction", "1"])


def test_check_ranges_refuses_a_config_built_in_code():
    from spri_sft.config import check_ranges

    config = GenerateConfig()
    config.loop.threshold = 7
    with pytest.raises(UserError, match=r"recipe: field 'loop.threshold': must be >= 1 and <= 5, got 7"):
        check_ranges(config, where="recipe")
    check_ranges(GenerateConfig())  # the defaults are in range


def test_help_shows_a_fields_range():
    assert "--loop.threshold int (default: 4; >= 1, <= 5)" in format_help(GenerateConfig)
