"""The package's own prompt set: a templates file is checked whole before any call, and the defaults
are written for general use."""

from __future__ import annotations

import re

import pytest
import yaml

from spri_sft.errors import UserError
from spri_sft.generate.prompts import PromptSet, load_prompt_set


def write(tmp_path, text: str) -> str:
    path = tmp_path / "prompts.yaml"
    path.write_text(text)
    return str(path)


def test_a_file_replaces_only_the_fields_it_names(tmp_path):
    path = write(tmp_path, yaml.safe_dump({"direct_system": "Reply in {max_words} words or fewer."}))
    prompts = load_prompt_set(path)
    assert prompts.direct_system == "Reply in {max_words} words or fewer."
    assert prompts.principles_critic == PromptSet().principles_critic


@pytest.mark.parametrize(
    "content, message",
    [
        ("direct_sytem: hi\n", r"unknown template 'direct_sytem'"),
        ("- a\n- b\n", r"expected a mapping of template names"),
        ("direct_system: [not, text]\n", r"template 'direct_system' must be a string, got list"),
        ("constitution: Be kind.\n", r"constitution must be a non-empty list of strings"),
        ("seed_pairs:\n  - question: Q\n", r"seed_pairs\[0\] must have exactly the keys question and principles"),
        ("seed_pairs:\n  - question: Q\n    principles: 7\n", r"seed_pairs\[0\].principles must be a non-empty string"),
        (
            "response_system: 'Follow {principles} in {max_words} words; cite {source}.'\n",
            r"template 'response_system' has the unknown placeholder \{source\}",
        ),
        ("principles_user: 'Request: {prompt} {}'\n", r"template 'principles_user' is not a valid str.format template"),
        ("principles_user: 'Request: {prompt'\n", r"template 'principles_user' is not a valid str.format template"),
        (
            "principles_critic: 'Judge these principles: {principles}'\n",
            r"template 'principles_critic' lost its \{prompt\} placeholder",
        ),
        ("direct_system: [unclosed\n", r"invalid YAML"),
    ],
)
def test_a_broken_templates_file_is_one_line_naming_the_template(tmp_path, content, message):
    with pytest.raises(UserError, match=message) as error:
        load_prompt_set(write(tmp_path, content))
    assert "\n" not in str(error.value) and "prompts.yaml" in str(error.value)


def test_plain_texts_may_hold_braces(tmp_path):
    path = write(tmp_path, yaml.safe_dump({"self_instruct_system": "Task: format a dict\nOutput: {'a': 1}"}))
    assert load_prompt_set(path).self_instruct_system.endswith("{'a': 1}")


def test_every_default_template_formats_with_the_known_placeholders():
    load_prompt_set(None)  # the defaults pass the same checks as a file's
    dummy = dict(prompt="p", principles="r", response="s", feedback="f", max_words=9)
    for name, value in vars(PromptSet()).items():
        if isinstance(value, str) and name not in ("self_instruct_system", "score_reminder"):
            value.format(**dummy)


# The qualities TruthfulQA scores; the package's rules and seeds must not single them out.
TRUTHFULQA_TARGETS = re.compile(
    r"false premise|myth|misconception|uncertain|do not know|don't know|invent|made[- ]up|"
    r"fabricat|hallucinat|honest|admit|not visible|overstate",
    re.IGNORECASE,
)


def test_the_default_rules_and_seeds_do_not_target_what_truthfulqa_measures():
    prompts = PromptSet()
    texts = prompts.constitution + [p["question"] + "\n" + p["principles"] for p in prompts.seed_pairs]
    texts += [v for v in vars(prompts).values() if isinstance(v, str)]
    assert [t for t in texts if TRUTHFULQA_TARGETS.search(t)] == []


def test_a_templates_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_bytes("direct_system: café\n".encode("latin-1"))  # was a UnicodeDecodeError traceback
    with pytest.raises(UserError, match=r"prompts.yaml: not UTF-8 text \(byte 18"):
        load_prompt_set(str(path))
