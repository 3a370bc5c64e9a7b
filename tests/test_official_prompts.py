"""`loop.official_checkout`: every request is what the SPRI authors' released task-3 scripts send.

The authors' repository has no license, so these tests build a synthetic checkout: the same file
names and placeholders, texts invented here. One more test runs against a real clone when
SPRI_PUBLIC_DIR points at one, and compares with the scripts' own string building, rewritten
here from reading them (the scripts are never imported).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from pathlib import Path

import pytest

from spri_sft.errors import UserError
from spri_sft.generate.engine import Engine, LoopSettings, Session, mode_identity
from spri_sft.generate.prompts import PromptSet
from spri_sft.llm.base import Completion

PROMPTS = "[task3]-sft/prompts-[sft]"
QUESTION = "How do tides work?"

SYNTHETIC = {
    f"{PROMPTS}/instruct-stage1_01-principle_gen.txt": "GEN-P: write principles for the question. Examples:",
    f"{PROMPTS}/instruct-stage1_02-principle_critique.txt": (
        "CRIT-P: judge the principles.\r\n[Question: {orig_question}]\r\n\r\nPRINCIPLES:\r\n{orig_principle}\r\n\r\n### Feedback:"
    ),
    f"{PROMPTS}/instruct-stage1_02-principle_refinement.txt": "REF-P: refine the principles.",
    f"{PROMPTS}/instruct-stage2_01-gen_init_responses.txt": "GEN-R: answer by the principles.",
    f"{PROMPTS}/instruct-stage2_02-response_critique.txt": (
        "CRIT-R: judge the response.\r\n[Question: {orig_question}]\r\n[Principles: {orig_principle}]\r\n\r\n"
        "RESPONSE:\r\n{orig_response}\r\n\r\n### Feedback:"
    ),
    f"{PROMPTS}/instruct-stage2_02-response_refinement.txt": "REF-R: refine the response.",
    "[task3]-sft/watson_self_align_prompt.txt": "# Helper\n\nRule A: be kind.\nRule B: be brief.\n",
    "seeds/seed-principles-6.jsonl": (
        json.dumps({"question": "SQ1?", "principle": "SP1.", "bad_response": "B1"})
        + "\n"
        + json.dumps({"question": "SQ2?", "principle": "SP2.", "bad_response": "B2"})
        + "\n"
    ),
    "[task3]-sft/01_gen_baseline_direct_responses.py": (
        "def main(argv):\n"
        '    if FLAGS.task == "general":\n'
        '        system_message = """DIRECT-SYS: answer briefly."""\n'
        '        user_message = "### Question: {INPUT}\\n\\n### Response:"\n'
        '    elif FLAGS.task == "code":\n'
        '        system_message = "CODE-SYS"\n'
        '        user_message = "### Code: {INPUT}"\n'
    ),
    "[task3]-sft/02_gen_[self-instruct].py": "input_first_template_for_gen = '''SI-INSTR\n\nTask: t1\nOutput: o1'''\n",
    "[task3]-sft/04_gen_[self-refine]_responses.py": (
        "def main(argv):\n"
        "    if a:\n"
        '        f(system_prompt="SR-ANSWER", user_prompt=x)\n'
        "    else:\n"
        '        f(system_prompt="SR-ANSWER", user_prompt=x)\n'
        "    for t in range(4):\n"
        '        g(system_prompt="SR-FEEDBACK: end with [RESULT]: n", user_prompt=y)\n'
        '        h(system_prompt="SR-REFINE", user_prompt=z)\n'
    ),
    "[task3]-sft/05_gen_[seed_principles]_responses.py": "seed_principle_prompt = '''SEED-SYS:\n\n1: rule one\n2: rule two'''\n",
}


def write_checkout(root: Path, files: dict[str, str] = SYNTHETIC) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())  # bytes: the CRLF of the critique files stays as in the real ones
    return root


@pytest.fixture
def checkout(tmp_path) -> Path:
    return write_checkout(tmp_path / "SPRI-public")


class ScriptedBackend:
    """Replies with the next scripted text and keeps every request it received."""

    def __init__(self, model: str, replies: list[str]):
        self.model, self.replies, self.requests = model, list(replies), []

    async def chat(self, messages):
        self.requests.append(messages)
        return Completion(text=self.replies.pop(0), prompt_tokens=1, completion_tokens=1, finish_reason="stop")


def run(mode, checkout, base_replies, critic_replies=(), prompt=QUESTION, **loop):
    loop = LoopSettings(official_checkout=str(checkout), score_retries=0, unscored="accept", **loop)
    base, critic = ScriptedBackend("base", base_replies), ScriptedBackend("critic", list(critic_replies))
    record = asyncio.run(Engine(mode, PromptSet(), loop).run(prompt, Session(base, critic)))
    assert not base.replies and not critic.replies, "every scripted reply should have been used"
    return record, base.requests, critic.requests


def chat(system, user):
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def user(text):
    return [{"role": "user", "content": text}]


def test_spri_sends_the_released_layout_in_every_request_of_both_stages(checkout):
    record, base, critic = run(
        "spri",
        checkout,
        ["\n## P0 \n", " P1\n#", "R0\n", "R1"],
        [
            "Feedback: Too vague. [RESULT] 2",
            "Feedback: Good. [RESULT] 5",
            "\n# Feedback: Off. [RESULT] 1",
            "[RESULT] 4",
        ],
    )
    seeds = "### Question: SQ1?\n### Principles: SP1.\n\n### Question: SQ2?\n### Principles: SP2.\n\n"
    assert base == [
        chat(
            "GEN-P: write principles for the question. Examples:\n\n" + seeds,
            f"### Question: {QUESTION}\n### Principles:",
        ),
        chat(
            "REF-P: refine the principles.",
            f"### Question: {QUESTION}\n### Principles: P0\n### Feedback: Feedback: Too vague.\n### Refined Principles:",
        ),
        chat("GEN-R: answer by the principles.\n\n", f"### Question: {QUESTION}\n### Principles: P1\n\n### Response:"),
        chat(
            "REF-R: refine the response.",
            f"### Question: {QUESTION}\n### Response: R0\n### Feedback: Feedback: Off.\n### Refined Response:",
        ),
    ]
    principles_critique = "CRIT-P: judge the principles.\n[Question: {q}]\n\nPRINCIPLES:\n{p}\n\n### Feedback:"
    response_critique = (
        "CRIT-R: judge the response.\n[Question: {q}]\n[Principles: {p}]\n\nRESPONSE:\n{r}\n\n### Feedback:"
    )
    assert critic == [
        user(principles_critique.format(q=QUESTION, p="P0")),
        user(principles_critique.format(q=QUESTION, p="P1")),
        user(response_critique.format(q=QUESTION, p="P1", r="R0")),
        user(response_critique.format(q=QUESTION, p="P1", r="R1")),
    ]
    assert (record["principles"], record["response"], record["status"]) == ("P1", "R1", "accepted")
    assert record["rounds"][0]["critique"] == "Feedback: Too vague."


def test_critic_requests_render_to_the_released_prometheus_string(checkout):
    render_raw = getattr(pytest.importorskip("spri_sft.llm.base"), "render_raw", None)
    if render_raw is None:
        pytest.skip("the raw prompt format is not in spri_sft.llm yet")
    _, _, critic = run("spri", checkout, ["P0", "R0"], ["[RESULT] 5", "[RESULT] 5"])
    text = critic[0][0]["content"]
    assert render_raw(critic[0]) == f"User: {text} \n\nAssistant: "


@pytest.mark.parametrize(
    "mode, system, user_turn",
    [
        ("direct", "DIRECT-SYS: answer briefly.", f"### Question: {QUESTION}\n\n### Response:"),
        ("self-instruct", "SI-INSTR\n\nTask: t1\nOutput: o1", f"Task: {QUESTION}\nOutput:"),
        ("seed-principles", "SEED-SYS:\n\n1: rule one\n2: rule two", f"User Input: {QUESTION}\nResponse:"),
        ("self-align", "# Helper\n\nRule A: be kind.\nRule B: be brief.\n", f"User: {QUESTION}"),
        ("constitution", "# Helper\n\nRule A: be kind.\nRule B: be brief.\n", f"User: {QUESTION}"),
    ],
)
def test_one_call_modes_send_the_released_system_and_user_turns(checkout, mode, system, user_turn):
    record, base, critic = run(mode, checkout, ["\n#Answer.\n"])
    assert base == [chat(system, user_turn)] and critic == []
    assert record["response"] == "Answer." and record["status"] == "accepted"


def test_self_refine_sends_the_released_answer_feedback_and_refine_turns(checkout):
    record, base, critic = run(
        "self-refine", checkout, ["Y0", "Feedback: thin. [RESULT]: 2", "Y1", "Feedback: fine. [RESULT]: 4"]
    )
    assert base == [
        chat("SR-ANSWER", f"### Question: {QUESTION}\n\n### Response:"),
        chat("SR-FEEDBACK: end with [RESULT]: n", f"### Question: {QUESTION}\n\n### Response: Y0\n\n### Feedback:"),
        chat(
            "SR-REFINE",
            f"### Question: {QUESTION}\n\n### Original Response: Y0\n\n### Feedback: Feedback: thin. [RESULT]: 2"
            "\n\n### Refined Response:",
        ),
        chat("SR-FEEDBACK: end with [RESULT]: n", f"### Question: {QUESTION}\n\n### Response: Y1\n\n### Feedback:"),
    ]
    assert critic == [] and record["response"] == "Y1" and record["status"] == "accepted"


@pytest.mark.parametrize(
    "mode, missing",
    [
        ("spri", f"{PROMPTS}/instruct-stage2_02-response_refinement.txt"),
        ("spri", "seeds/seed-principles-6.jsonl"),
        ("direct", "[task3]-sft/01_gen_baseline_direct_responses.py"),
        ("self-instruct", "[task3]-sft/02_gen_[self-instruct].py"),
        ("self-refine", "[task3]-sft/04_gen_[self-refine]_responses.py"),
        ("seed-principles", "[task3]-sft/05_gen_[seed_principles]_responses.py"),
        ("self-align", "[task3]-sft/watson_self_align_prompt.txt"),
    ],
)
def test_a_missing_file_is_one_line_naming_it_before_any_call(tmp_path, mode, missing):
    files = {k: v for k, v in SYNTHETIC.items() if k != missing}
    loop = LoopSettings(official_checkout=str(write_checkout(tmp_path, files)))
    for build in (lambda: mode_identity(mode, PromptSet(), loop), lambda: Engine(mode, PromptSet(), loop)):
        with pytest.raises(UserError) as error:
            build()
        assert missing in str(error.value) and "\n" not in str(error.value)


def test_a_mode_reads_only_the_files_it_sends(tmp_path):
    files = {k: v for k, v in SYNTHETIC.items() if "01_gen_baseline_direct" in k}
    record, base, _ = run("direct", write_checkout(tmp_path, files), ["Answer."])
    assert record["response"] == "Answer."


@pytest.mark.parametrize(
    "file, text, message",
    [
        (
            f"{PROMPTS}/instruct-stage1_02-principle_critique.txt",
            "[Question: {orig_question}] ### Feedback:",
            r"lacks the placeholder \{orig_principle\}",
        ),
        (
            f"{PROMPTS}/instruct-stage2_02-response_critique.txt",
            "{orig_question} {orig_principle} {orig_response} {rubric}",
            r"has the placeholder \{rubric\}, which the script never fills",
        ),
        (
            f"{PROMPTS}/instruct-stage2_02-response_critique.txt",
            "{orig_question} {orig_principle} {orig_response",
            "not a str.format template",
        ),
        (
            "[task3]-sft/01_gen_baseline_direct_responses.py",
            'if FLAGS.task == "general":\n    system_message = "S"\n    user_message = "Q"\n',
            r"lacks the placeholder \{INPUT\}",
        ),
        (
            "[task3]-sft/02_gen_[self-instruct].py",
            "template = 'renamed'\n",
            "no string assignment to 'input_first_template_for_gen'",
        ),
        (
            "[task3]-sft/04_gen_[self-refine]_responses.py",
            'f(system_prompt="only one")\n',
            "expected 3 distinct system_prompt literals",
        ),
        (
            "seeds/seed-principles-6.jsonl",
            json.dumps({"question": "Q?"}) + "\n",
            r"seed-principles-6.jsonl:1: missing text field 'principle'",
        ),
    ],
)
def test_a_broken_checkout_text_is_one_line_naming_the_file(tmp_path, file, text, message):
    mode = {"01": "direct", "02": "self-instruct", "04": "self-refine"}.get(Path(file).name[:2], "spri")
    loop = LoopSettings(official_checkout=str(write_checkout(tmp_path, {**SYNTHETIC, file: text})))
    with pytest.raises(UserError, match=message) as error:
        Engine(mode, PromptSet(), loop)
    assert Path(file).name in str(error.value) and "\n" not in str(error.value)


def test_a_checkout_that_is_not_a_directory_is_refused(tmp_path):
    with pytest.raises(UserError, match="is not a directory"):
        Engine("spri", PromptSet(), LoopSettings(official_checkout=str(tmp_path / "nowhere")))


def test_official_checkout_refuses_a_prompts_file_and_zero_shot_principles(checkout, tmp_path):
    with pytest.raises(UserError, match="not both"):
        Engine(
            "spri", PromptSet(), LoopSettings(official_checkout=str(checkout), prompts_file=str(tmp_path / "p.yaml"))
        )
    with pytest.raises(UserError, match="few_shot"):
        Engine("spri", PromptSet(), LoopSettings(official_checkout=str(checkout), few_shot=False))


def test_the_identity_fingerprints_the_checkout_texts_a_mode_sends(tmp_path):
    plain = LoopSettings(official_checkout=str(write_checkout(tmp_path / "a")))
    watson = "[task3]-sft/watson_self_align_prompt.txt"
    edited = LoopSettings(official_checkout=str(write_checkout(tmp_path / "b", {**SYNTHETIC, watson: "# Other\n"})))
    assert mode_identity("self-align", PromptSet(), plain) != mode_identity("self-align", PromptSet(), edited)
    assert mode_identity("spri", PromptSet(), plain) == mode_identity("spri", PromptSet(), edited)
    assert mode_identity("spri", PromptSet(), plain) != mode_identity("spri", PromptSet(), LoopSettings())
    # The package's word cap shapes none of the checkout's texts.
    capped = LoopSettings(official_checkout=plain.official_checkout, max_words=64)
    assert mode_identity("spri", PromptSet(), plain) == mode_identity("spri", PromptSet(), capped)


# -- against a real clone of github.com/honglizhan/SPRI-public -------------------------

PUBLIC = os.environ.get("SPRI_PUBLIC_DIR")
REAL_PROMPTS = [
    "Give three tips for staying healthy.",
    "Why do some people believe the Great Wall of China is visible from space?",
    "Write a haiku about autumn rain.",
]


def released_requests(root: Path, q: str, p0: str, feedback_p: str, p1: str, r0: str, feedback_r: str, r1: str):
    """What stage1_gen_principles/0{1,2}_*.py and stage2_gen_responses/0{1,2}_*.py build for one question
    whose principles and response are each revised once: (system, user) per base call, the raw prompt
    string per critic call (`format_input_prometheus(None, ...)`)."""
    read = lambda relative: open(root / relative).read()  # noqa: E731  (the scripts' own way)
    few_shot_examples = ""
    for line in open(root / "seeds/seed-principles-6.jsonl"):
        if line.strip():
            seed_example = json.loads(line.strip())
            few_shot_examples += f"### Question: {seed_example['question']}\n"
            few_shot_examples += f"### Principles: {seed_example['principle']}\n\n"
    prometheus = lambda p: f"User: {p} \n\nAssistant: "  # noqa: E731
    base = [
        (
            f"""{read(f"{PROMPTS}/instruct-stage1_01-principle_gen.txt")}\n\n{few_shot_examples}""",
            f"""### Question: {q}\n### Principles:""",
        ),
        (
            read(f"{PROMPTS}/instruct-stage1_02-principle_refinement.txt"),
            f"""### Question: {q}\n### Principles: {p0}\n### Feedback: {feedback_p}\n### Refined Principles:""",
        ),
        (
            f"""{read(f"{PROMPTS}/instruct-stage2_01-gen_init_responses.txt")}\n\n{""}""",
            f"""### Question: {q}\n### Principles: {p1}\n\n### Response:""",
        ),
        (
            read(f"{PROMPTS}/instruct-stage2_02-response_refinement.txt"),
            f"""### Question: {q}\n### Response: {r0}\n### Feedback: {feedback_r}\n### Refined Response:""",
        ),
    ]
    principle_critique = read(f"{PROMPTS}/instruct-stage1_02-principle_critique.txt")
    response_critique = read(f"{PROMPTS}/instruct-stage2_02-response_critique.txt")
    critic = [
        prometheus(principle_critique.format(orig_question=q, orig_principle=p0)),
        prometheus(principle_critique.format(orig_question=q, orig_principle=p1)),
        prometheus(response_critique.format(orig_question=q, orig_principle=p1, orig_response=r0)),
        prometheus(response_critique.format(orig_question=q, orig_principle=p1, orig_response=r1)),
    ]
    return base, critic


@pytest.mark.skipif(not PUBLIC, reason="set SPRI_PUBLIC_DIR to a clone of github.com/honglizhan/SPRI-public")
@pytest.mark.parametrize("question", REAL_PROMPTS)
def test_requests_equal_what_the_released_scripts_build(question):
    from spri_sft.llm.base import render_raw

    root = Path(PUBLIC)
    critiques = [
        "Feedback: Too generic.\n[RESULT] 3",
        "Feedback: Useful. [RESULT] 5",
        "Feedback: Misses one. [RESULT] 2",
        "Feedback: Adheres. [RESULT] 4",
    ]
    record, base, critic = run("spri", root, ["1. P0", "1. P1", "R0 text", "R1 text"], critiques, prompt=question)
    expected_base, expected_critic = released_requests(
        root, question, "1. P0", "Feedback: Too generic.", "1. P1", "R0 text", "Feedback: Misses one.", "R1 text"
    )
    assert [(m[0]["content"], m[1]["content"]) for m in base] == expected_base
    assert [render_raw(m) for m in critic] == expected_critic
    assert record["principles"] == "1. P1" and record["response"] == "R1 text"

    # 03_gen_[self-align]_responses.py: the Watson file as the system prompt, `User: {q}` as the turn.
    _, base, _ = run("self-align", root, ["An answer."], prompt=question)
    assert base == [chat(open(root / "[task3]-sft/watson_self_align_prompt.txt").read(), f"User: {question}")]

    # 01_gen_baseline_direct_responses.py, task "general" (its literal found here by a regex, not by the package's reader).
    source = open(root / "[task3]-sft/01_gen_baseline_direct_responses.py").read()
    branch = source.split('if FLAGS.task == "general":', 1)[1]
    system_message = re.search(r'system_message = """(.*?)"""', branch, re.DOTALL).group(1)
    _, base, _ = run("direct", root, ["An answer."], prompt=question)
    assert base == [chat(system_message, f"### Question: {question}\n\n### Response:")]
