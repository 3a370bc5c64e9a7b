"""`spri-sft` as a user runs it: one-line errors with a nonzero exit, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def spri_sft(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "spri_sft.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_help_lists_commands_and_generate_help_lists_fields():
    top = spri_sft("--help")
    assert top.returncode == 0 and "generate" in top.stdout
    sub = spri_sft("generate", "--help")
    assert sub.returncode == 0
    assert "--critic.base_url" in sub.stdout and "--loop.threshold" in sub.stdout


@pytest.mark.parametrize(
    "content, flags, message",
    [
        (None, [], "prompts file not found"),
        ('{"prompt": "ok"}\n{"prompt": \n', [], "prompts.jsonl:2: malformed JSON line"),
        ('{"question": "x"}\n', [], "prompts.jsonl:1: missing field 'prompt'"),
        ('{"prompt": ""}\n', [], "prompts.jsonl: no prompts found: every row was skipped (1 empty prompt, first "),
        ('{"prompt": "ok"}\n', ["--mode", "best-of-n"], "--mode: 'best-of-n' is not one of"),
        ('{"prompt": "ok"}\n', ["--base.backend", "openai"], "backend 'openai' needs base_url"),
    ],
    ids=["missing-file", "malformed-json", "missing-column", "empty-prompt", "unknown-mode", "no-base-url"],
)
def test_bad_input_gives_one_line_error(tmp_path, content, flags, message):
    prompts = tmp_path / "prompts.jsonl"
    if content is not None:
        prompts.write_text(content)
    result = spri_sft("generate", "--prompts.path", str(prompts), "--output_dir", str(tmp_path / "out"), *flags)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("spri-sft: error:")]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr


def test_unknown_command():
    result = spri_sft("distill")
    assert result.returncode == 2 and "unknown command 'distill'" in result.stderr


def test_plan_options_are_told_from_recipe_overrides_whatever_their_order_and_number_of_words():
    from spri_sft.cli import _split_prefixed

    own, others = _split_prefixed(["--modes", "spri", "direct", "--plan.sample", "3", "--loop.max_rounds=2"], "--plan.")
    assert own == ["--sample", "3"]
    assert others == ["--modes", "spri", "direct", "--loop.max_rounds=2"]


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_prints_spri_sft_and_the_libraries_a_run_depends_on_as_installed(flag):
    from importlib import metadata

    result = spri_sft(flag)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"spri-sft {metadata.version('spri-sft')}"
    for package in ("torch", "transformers", "trl", "peft", "datasets"):
        assert f"{package} {metadata.version(package)}" in lines
    assert any(line.startswith("vllm ") for line in lines)  # its version, or "not installed" on a machine without it


def test_version_imports_none_of_the_libraries_it_names():
    code = (
        "import sys; from spri_sft.cli import main; main(['--version']); "
        "print(sorted({'torch', 'transformers', 'trl'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.splitlines()[-1] == "[]", result.stdout + result.stderr
