"""`include:` in a recipe: the included files' mappings merged under the including file's own keys.

A path is relative to the including file; the includer wins, mappings merge key by key, a list or a scalar
replaces; includes nest; a cycle, a missing file or an included file that is no mapping is one line naming
the file to fix. What a job writes beside its outputs is the resolved config.
"""

from __future__ import annotations

import pytest
import yaml

from spri_sft.cli import main
from spri_sft.config import dump_yaml, load_config, read_recipe
from spri_sft.errors import UserError
from spri_sft.generate.config import GenerateConfig
from spri_sft.pipeline.config import PipelineConfig
from spri_sft.pipeline.plan import load_recipe


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_including_files_own_keys_win_and_mappings_merge_key_by_key(tmp_path):
    write(tmp_path / "shared.yaml", "mode: spri\nbase: {temperature: 0.2, top_k: 10}\nloop: {max_rounds: 2}\n")
    recipe = write(tmp_path / "student.yaml", "include: shared.yaml\nmode: direct\nbase: {top_k: 40}\n")

    assert read_recipe(recipe) == {
        "mode": "direct",
        "base": {"temperature": 0.2, "top_k": 40},
        "loop": {"max_rounds": 2},
    }


def test_a_list_in_the_including_file_replaces_the_included_list(tmp_path):
    write(tmp_path / "shared.yaml", "base: {base_url: [http://a:8000/v1, http://b:8000/v1]}\n")
    recipe = write(tmp_path / "student.yaml", "include: shared.yaml\nbase: {base_url: [http://c:8000/v1]}\n")

    assert read_recipe(recipe)["base"]["base_url"] == ["http://c:8000/v1"]


def test_an_include_path_is_relative_to_the_including_file_not_to_the_working_directory(tmp_path, monkeypatch):
    write(tmp_path / "recipes" / "shared.yaml", "seed: 7\n")
    recipe = write(tmp_path / "recipes" / "students" / "one.yaml", "include: ../shared.yaml\n")
    monkeypatch.chdir(tmp_path)

    assert read_recipe(recipe.relative_to(tmp_path)) == {"seed": 7}


def test_of_a_list_of_includes_a_later_file_wins_over_an_earlier_one(tmp_path):
    write(tmp_path / "first.yaml", "seed: 1\nlimit: 5\n")
    write(tmp_path / "second.yaml", "seed: 2\n")
    recipe = write(tmp_path / "student.yaml", "include: [first.yaml, second.yaml]\n")

    assert read_recipe(recipe) == {"seed": 2, "limit": 5}


def test_an_included_file_may_include_another(tmp_path):
    write(tmp_path / "base.yaml", "seed: 3\nlimit: 9\n")
    write(tmp_path / "setup" / "shared.yaml", "include: ../base.yaml\nlimit: 4\n")
    recipe = write(tmp_path / "setup" / "student.yaml", "include: shared.yaml\nmode: direct\n")

    assert read_recipe(recipe) == {"seed": 3, "limit": 4, "mode": "direct"}


def test_two_files_including_one_common_file_are_no_cycle(tmp_path):
    write(tmp_path / "common.yaml", "seed: 5\n")
    write(tmp_path / "a.yaml", "include: common.yaml\nlimit: 1\n")
    write(tmp_path / "b.yaml", "include: common.yaml\nmode: direct\n")
    recipe = write(tmp_path / "student.yaml", "include: [a.yaml, b.yaml]\n")

    assert read_recipe(recipe) == {"seed": 5, "limit": 1, "mode": "direct"}


def test_a_cycle_of_includes_is_refused_in_one_line_naming_the_chain(tmp_path):
    write(tmp_path / "a.yaml", "include: b.yaml\n")
    write(tmp_path / "b.yaml", "include: a.yaml\n")

    with pytest.raises(UserError) as refused:
        read_recipe(tmp_path / "a.yaml")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert str(refused.value) == f"{b}: 'include: a.yaml' makes a cycle: {a} -> {b} -> {a}"


def test_a_file_including_itself_is_a_cycle(tmp_path):
    recipe = write(tmp_path / "a.yaml", "include: ./a.yaml\nseed: 1\n")

    with pytest.raises(UserError, match="makes a cycle"):
        read_recipe(recipe)


def test_a_missing_included_file_names_the_including_file_and_its_key(tmp_path):
    recipe = write(tmp_path / "student.yaml", "include: sharde.yaml\nseed: 1\n")

    with pytest.raises(UserError) as refused:
        read_recipe(recipe)
    assert str(refused.value) == f"{recipe}: 'include: sharde.yaml': file not found ({tmp_path / 'sharde.yaml'})"


def test_an_include_that_is_no_file_name_is_refused_naming_the_file(tmp_path):
    recipe = write(tmp_path / "student.yaml", "include: {file: shared.yaml}\n")

    with pytest.raises(UserError, match=r"student.yaml: 'include' must be a file or a list of files, got \{'file'"):
        read_recipe(recipe)


def test_an_included_file_that_is_no_mapping_is_refused_naming_it(tmp_path):
    write(tmp_path / "shared.yaml", "- seed\n- 1\n")
    recipe = write(tmp_path / "student.yaml", "include: shared.yaml\n")

    with pytest.raises(UserError, match=r"shared.yaml: an included file must be a mapping of fields, got a YAML list"):
        read_recipe(recipe)


def test_malformed_yaml_in_an_included_file_names_that_file_and_line(tmp_path):
    write(tmp_path / "shared.yaml", "seed: 1\nbase: [unclosed\n")
    recipe = write(tmp_path / "student.yaml", "include: shared.yaml\n")

    with pytest.raises(UserError, match=r"shared.yaml:\d+: invalid YAML"):
        read_recipe(recipe)


def test_a_command_line_flag_wins_over_the_including_and_the_included_file(tmp_path):
    write(tmp_path / "shared.yaml", "base: {temperature: 0.2, top_k: 10}\n")
    recipe = write(tmp_path / "student.yaml", "include: shared.yaml\nbase: {temperature: 0.3}\n")

    config = load_config(GenerateConfig, ["--config", str(recipe), "--base.temperature", "0.9"])
    assert (config.base.temperature, config.base.top_k) == (0.9, 10)


def test_the_config_written_beside_the_outputs_is_the_resolved_one_without_include(tmp_path):
    write(tmp_path / "shared.yaml", "mode: direct\nbase: {top_k: 10}\n")
    recipe = write(tmp_path / "student.yaml", "include: shared.yaml\nmax_concurrent_prompts: 4\n")

    dump_yaml(load_config(GenerateConfig, ["--config", str(recipe)]), tmp_path / "config.yaml")
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert "include" not in written
    assert (written["mode"], written["base"]["top_k"], written["max_concurrent_prompts"]) == ("direct", 10, 4)


def test_plan_tells_a_pipeline_recipe_by_its_included_keys(tmp_path):
    write(tmp_path / "shared.yaml", "modes: [direct]\noutput_dir: out\n")
    recipe = write(tmp_path / "student.yaml", "include: shared.yaml\n")

    assert isinstance(load_recipe(str(recipe), []), PipelineConfig)


def test_the_command_line_prints_an_include_cycle_as_one_error_line(tmp_path, capsys):
    write(tmp_path / "a.yaml", "include: b.yaml\n")
    write(tmp_path / "b.yaml", "include: a.yaml\n")

    assert main(["generate", "--config", str(tmp_path / "a.yaml")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("spri-sft: error: ") and "makes a cycle" in error and error.count("\n") == 1


def test_a_bad_field_in_an_included_file_is_named_in_that_file_not_in_the_including_one(tmp_path):
    shared = write(tmp_path / "shared.yaml", "base: {topk: 10}\n")
    recipe = write(tmp_path / "student.yaml", "include: shared.yaml\nmode: direct\n")

    with pytest.raises(UserError) as refused:
        load_config(GenerateConfig, ["--config", str(recipe)])
    assert str(refused.value).startswith(f"{shared}: unknown field 'base.topk'")


def test_a_value_out_of_range_in_an_included_file_is_named_in_that_file(tmp_path):
    shared = write(tmp_path / "shared.yaml", "loop: {max_rounds: 0}\n")
    recipe = write(tmp_path / "student.yaml", "include: shared.yaml\n")

    with pytest.raises(UserError) as refused:
        load_config(GenerateConfig, ["--config", str(recipe)])
    assert str(refused.value) == f"{shared}: field 'loop.max_rounds': must be >= 1, got 0"
