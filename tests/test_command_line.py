"""One command-line shape: `spri-sft COMMAND [RECIPE.yaml] [--a.b VALUE ...]`, `--help=SECTION` for one section."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from spri_sft.cli import main
from spri_sft.config import load_config, sections
from spri_sft.generate.engine import LoopSettings
from spri_sft.pipeline.config import PipelineConfig
from spri_sft.pipeline.run import SET_BY_PIPELINE

# Every command that reads a recipe; train, dpo and grpo read TRL's fields from it.
RECIPE_COMMANDS = ["generate", "format", "evaluate", "run", "plan", "train", "dpo", "grpo"]


def run_command(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("spri-sft: error:")]


def dotted_fields(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    names = []
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            names += dotted_fields(hints[field.name], f"{prefix}{field.name}.")
        else:
            names.append(f"{prefix}{field.name}")
    return names


@pytest.fixture
def recipe_with_a_misspelt_field(tmp_path):
    # Reading it fails naming the file, before any job starts: the error proves which file the command read.
    path = tmp_path / "recipe.yaml"
    path.write_text("no_such_field: 1\n")
    return path


@pytest.mark.parametrize("command", RECIPE_COMMANDS)
@pytest.mark.parametrize("how", ["positional", "--config"])
def test_each_command_reads_its_recipe_named_first_or_by_config(command, how, recipe_with_a_misspelt_field, capsys):
    recipe = str(recipe_with_a_misspelt_field)
    argv = [recipe] if how == "positional" else ["--config", recipe]
    code, _, err = run_command(capsys, command, *argv)
    assert code == 2
    [line] = error_lines(err)
    assert line.startswith(f"spri-sft: error: {recipe}: unknown field 'no_such_field' ("), line


def test_a_recipe_named_first_is_the_same_config_as_with_config(tmp_path):
    recipe = tmp_path / "run.yaml"
    recipe.write_text("modes: [spri, direct]\ngenerate:\n  loop:\n    max_rounds: 2\n")
    overrides = ["--evaluate.batch_size", "3"]
    positional = load_config(PipelineConfig, [str(recipe), *overrides])
    flagged = load_config(PipelineConfig, ["--config", str(recipe), *overrides])
    assert positional == flagged
    assert (positional.modes, positional.generate.loop.max_rounds, positional.evaluate.batch_size) == (
        ["spri", "direct"],
        2,
        3,
    )


@pytest.mark.parametrize("command", RECIPE_COMMANDS)
def test_a_recipe_both_named_first_and_by_config_is_one_error(command, tmp_path, capsys):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    code, _, err = run_command(capsys, command, str(first), "--config", str(second))
    assert code == 2
    assert error_lines(err) == [
        f"spri-sft: error: two recipes: '{first}' and --config {second}; give one (RECIPE.yaml or --config)"
    ]


def test_train_takes_its_recipe_first_with_trl_flags_after_it():
    from spri_sft.cli import _trl_argv

    argv = _trl_argv("train", ["sft.yaml", "--learning_rate", "1e-4", "--gradient_checkpointing"])
    assert argv == ["--config", "sft.yaml", "--learning_rate", "1e-4", "--gradient_checkpointing"]


@pytest.mark.parametrize("ask", [["--help=evaluate"], ["--help", "evaluate"]])
def test_help_of_a_section_prints_exactly_that_sections_fields(ask, capsys):
    code, out, _ = run_command(capsys, "run", *ask)
    assert code == 0
    shown = {line.split()[0] for line in out.splitlines() if line.startswith("  --")}
    settable = {f"--{name}" for name in dotted_fields(PipelineConfig) if name.startswith("evaluate.")}
    assert shown == settable - {f"--{name}" for name in SET_BY_PIPELINE}


def test_help_of_a_nested_section_prints_its_fields(capsys):
    code, out, _ = run_command(capsys, "generate", "--help=loop")
    assert code == 0
    shown = {line.split()[0] for line in out.splitlines() if line.startswith("  --")}
    assert shown == {f"--{name}" for name in dotted_fields(LoopSettings, "loop.")}


@pytest.mark.parametrize("command", ["generate", "run", "plan"])
def test_an_unknown_section_is_one_line_listing_the_sections(command, capsys):
    code, out, err = run_command(capsys, command, "--help=evaluation")
    assert code == 2 and out == ""
    [line] = error_lines(err)
    assert line.startswith("spri-sft: error: --help=evaluation: no section 'evaluation' (sections: ")


@pytest.mark.parametrize("command", ["format", "evaluate"])
def test_a_section_of_a_command_without_sections_is_one_line_saying_so(command, capsys):
    code, out, err = run_command(capsys, command, "--help=loop")
    assert (code, out) == (2, "")
    assert error_lines(err) == [
        "spri-sft: error: --help=loop: no section 'loop' (there are none: --help lists every field)"
    ]


def test_an_unknown_section_of_run_lists_all_of_its_sections(capsys):
    _, _, err = run_command(capsys, "run", "--help=evaluation")
    listed = error_lines(err)[0].split("(sections: ")[1].rstrip(")").split(", ")
    assert listed == list(sections(PipelineConfig))


def test_run_help_is_short_and_names_every_section_with_how_to_ask_for_it(capsys):
    code, out, _ = run_command(capsys, "run", "--help")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) <= 60, len(lines)
    for section in sections(PipelineConfig):
        assert sum(line.startswith(f"  {section} ") for line in lines) == 1, section
    assert "spri-sft run --help=SECTION" in out


def test_every_field_a_recipe_may_set_is_in_run_help_or_one_of_its_sections(capsys):
    shown = set()
    for ask in ["--help", *(f"--help={section}" for section in sections(PipelineConfig))]:
        main(["run", ask])
        shown |= {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  --")}
    assert shown == {f"--{name}" for name in dotted_fields(PipelineConfig) if name not in SET_BY_PIPELINE} - {
        "--generate.mode"
    }


def test_run_help_lists_no_field_the_pipeline_sets(capsys):
    shown = ""
    for section in sections(PipelineConfig):
        main(["run", f"--help={section}"])
        shown += capsys.readouterr().out
    for dotted in [*SET_BY_PIPELINE, "generate.mode"]:
        assert f"--{dotted} " not in shown, dotted


def test_check_template_flags_are_spelt_with_underscores_as_with_dashes(tiny_model_dir, capsys):
    dashes = main(["check-template", str(tiny_model_dir), "--eos-token", "<|im_end|>", "--trust-remote-code"])
    with_dashes = capsys.readouterr().out
    underscores = main(["check-template", str(tiny_model_dir), "--eos_token", "<|im_end|>", "--trust_remote_code"])
    assert dashes == underscores == 0
    assert capsys.readouterr().out == with_dashes
