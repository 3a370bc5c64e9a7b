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
        (["stray"], "unexpected argument 'stray'"),
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
