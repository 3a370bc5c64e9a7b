"""This package's own prompt set: every text the engine sends, the six seed pairs, the 16 rules.

All text lives here so it can be read, versioned and diffed in one place. A YAML file given as
`loop.prompts_file` replaces any subset of the fields of `PromptSet` (same names), e.g.

    principles_critic: |
      ... {prompt} ... {principles} ...
    seed_pairs:
      - question: ...
        principles: ...

Placeholders in braces are filled with `str.format` ({prompt} {principles} {response} {feedback}
{max_words}); a template must keep the placeholders its default uses (the word cap excepted),
and `self_instruct_system` and `score_reminder` are sent as they are. The file is checked whole
before any call: unknown names, wrong types and every template formatted once with dummy
values, so a stray `{foo}` is one line naming its template. Critic templates ask for a reply
that ends "[RESULT] <1-5>", the format of Prometheus-2 style judges, which ordinary instruct
models can also follow.

The set is written for general use: the seeds and rules cover a spread of qualities (content,
tone, format, safety, fairness, level) and none singles out what a particular benchmark scores.
The SPRI authors' own set is not here (their repository has no license); `loop.official_checkout`
reads it from a checkout of their code (`spri_sft.generate.official`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from spri_sft.config import read_yaml
from spri_sft.errors import UserError

SEED_PAIRS = [
    {
        "question": "My landlord kept my whole security deposit and says the carpet was stained. What can I do?",
        "principles": (
            "1. Explain the tenant's usual rights, and say that deposit rules differ by country and state.\n"
            "2. Give concrete steps in order: ask for an itemized list, gather photos and the lease, write a demand letter.\n"
            "3. Name the escalation routes (small-claims court, a tenants' union) without promising an outcome.\n"
            "4. Stay even-handed: normal wear and tear is not damage, but real damage can be charged."
        ),
    },
    {
        "question": "Write a short poem about the first snowfall for my grandmother's birthday card.",
        "principles": (
            "1. Keep it short enough to fit a card: two to four short stanzas.\n"
            "2. Use warm, concrete images of snow that connect to family and the passing years.\n"
            "3. Keep the tone gentle and celebratory, never sad about age.\n"
            "4. Use simple words that read well aloud."
        ),
    },
    {
        "question": "Write an email asking my team to submit their timesheets by Friday.",
        "principles": (
            "1. Put the request and the deadline in the first sentence.\n"
            "2. Keep a friendly, professional tone that does not sound like a reprimand.\n"
            "3. Say where and how to submit, and whom to ask when something is unclear.\n"
            "4. Keep it short: a subject line and a few lines of body text."
        ),
    },
    {
        "question": "How do I reverse a linked list in Python?",
        "principles": (
            "1. Give correct, runnable code with a tiny node class so the example stands alone.\n"
            "2. Explain the pointer updates step by step in plain words.\n"
            "3. State the time and memory cost.\n"
            "4. Mention the edge cases: an empty list and a single node."
        ),
    },
    {
        "question": "Explain compound interest to a twelve-year-old.",
        "principles": (
            "1. Use words a twelve-year-old knows, and explain any term that cannot be avoided.\n"
            "2. Build the idea on one worked example with small, round numbers.\n"
            "3. Contrast it with simple interest so the difference is visible.\n"
            "4. End with why it matters for saving, in one or two sentences."
        ),
    },
    {
        "question": "I failed my driving test for the third time and feel like giving up.",
        "principles": (
            "1. Acknowledge the frustration with empathy before giving any advice.\n"
            "2. Normalize the experience: many people need several attempts.\n"
            "3. Offer practical, specific next steps (ask the examiner's notes, targeted lessons, mock tests).\n"
            "4. Be encouraging without being dismissive or preachy."
        ),
    },
]

# Sixteen rules, one per quality: none of them weighs one quality (say, what a benchmark scores) above the rest.
CONSTITUTION = [
    "Be helpful: answer the question that was asked.",
    "Be accurate: get facts, numbers, code and reasoning right.",
    "Give complete answers: cover every part of a request with several parts.",
    "Do not help with actions that could cause serious harm to people.",
    "Respect privacy: do not reveal or guess personal information about private people.",
    "Be fair and avoid stereotypes about groups of people.",
    "Keep a respectful, calm tone, even when the user is rude.",
    "Encourage professional help for medical, legal or financial decisions with high stakes.",
    "Give practical, specific advice rather than generic statements.",
    "Be concise: leave out filler and repetition.",
    "Organize longer answers so they are easy to follow.",
    "Follow the user's formatting and length requests.",
    "Present several views on contested questions, and label opinions as opinions.",
    "Protect the user's autonomy: inform rather than lecture.",
    "Match the user's level: explain jargon to beginners, skip the basics for experts.",
    "Show the steps of calculations and arguments so they can be checked.",
]

SELF_INSTRUCT_DEMONSTRATIONS = Path(__file__).resolve().parent.parent / "data" / "self_instruct" / "demonstrations.json"


def self_instruct_prompt() -> str:
    """Self-Instruct's instance-generation prompt (Apache-2.0, see data/self_instruct/SOURCE.md): its
    instruction and 11 Task/Output demonstrations, the system prompt of the paper's self-instruct row."""
    data = json.loads(SELF_INSTRUCT_DEMONSTRATIONS.read_text(encoding="utf-8"))
    return data["instruction"] + "".join(f"\n\nTask: {d['task']}\n{d['example']}" for d in data["demonstrations"])


@dataclass
class PromptSet:
    """The templates of every call; placeholders: {prompt} {principles} {response} {feedback} {max_words}."""

    principles_system: str = (
        "You write guiding principles for answering a user's request. The principles are not the answer: "
        "they say what a good answer must do for this particular request (content, safety, tone, format, "
        "what to include or avoid). Write a short numbered list, at most {max_words} words in all, with no "
        "opening or closing remarks."
    )
    principles_user: str = "Request: {prompt}\n\nWrite the principles for answering this request."
    principles_critic: str = (
        "You are a strict evaluator. Judge how useful the principles below are for guiding a response to "
        "the request.\n\n"
        "### Request\n{prompt}\n\n"
        "### Principles to evaluate\n{principles}\n\n"
        "### Rubric\n"
        "Score 1: the principles are irrelevant to the request or would lead to a poor answer.\n"
        "Score 2: mostly generic; they miss what matters most for this request.\n"
        "Score 3: relevant but incomplete, vague or partly misguided.\n"
        "Score 4: relevant, specific and sound, with minor gaps.\n"
        "Score 5: specific to this request, complete, sound and easy to act on.\n\n"
        "Write brief feedback on the principles, then end your reply with the score in exactly this form:\n"
        "Feedback: <your feedback> [RESULT] <an integer from 1 to 5>"
    )
    principles_revise: str = (
        "Request: {prompt}\n\nYour principles:\n{principles}\n\nAn evaluator's feedback:\n{feedback}\n\n"
        "Rewrite the principles to address the feedback. Reply with the new numbered list only, "
        "at most {max_words} words."
    )
    response_system: str = (
        "Answer the user's request. Follow these principles:\n{principles}\n\n"
        "Answer in at most {max_words} words, with no opening or closing remarks. Do not mention the principles."
    )
    direct_system: str = "Answer the user's request in at most {max_words} words, with no opening or closing remarks."
    response_critic: str = (
        "You are a strict evaluator. Judge how closely the response follows the principles, which are the "
        "rubric for this request.\n\n"
        "### Request\n{prompt}\n\n"
        "### Response to evaluate\n{response}\n\n"
        "### Principles (the rubric)\n{principles}\n\n"
        "### Scores\n"
        "Score 1: the response ignores or contradicts the principles.\n"
        "Score 2: it follows few of the principles.\n"
        "Score 3: it follows about half of the principles.\n"
        "Score 4: it follows nearly all of the principles, with small lapses.\n"
        "Score 5: it follows every principle fully.\n\n"
        "Write brief feedback on the response, then end your reply with the score in exactly this form:\n"
        "Feedback: <your feedback> [RESULT] <an integer from 1 to 5>"
    )
    response_revise: str = (
        "Request: {prompt}\n\nYour response:\n{response}\n\nAn evaluator's feedback:\n{feedback}\n\n"
        "Rewrite the response to address the feedback, keeping what already works. Reply with the new "
        "response only, at most {max_words} words."
    )
    self_critic: str = (
        "Evaluate your own response to the request: is it accurate, complete, relevant and clear?\n\n"
        "### Request\n{prompt}\n\n"
        "### Response\n{response}\n\n"
        "Score 1 means poor and 5 means excellent. Write brief feedback, then end your reply with the score "
        "in exactly this form:\nFeedback: <your feedback> [RESULT] <an integer from 1 to 5>"
    )
    rules_system: str = "You are a helpful assistant. In every conversation, follow these rules:\n{principles}"
    self_instruct_system: str = field(default_factory=self_instruct_prompt)
    self_instruct_user: str = "Task: {prompt}\nOutput:"
    score_reminder: str = (
        "Your reply had no score. Reply again with feedback and end with exactly '[RESULT] <an integer from 1 to 5>'."
    )
    seed_pairs: list[dict] = field(default_factory=lambda: [dict(p) for p in SEED_PAIRS])
    constitution: list[str] = field(default_factory=lambda: list(CONSTITUTION))

    def fingerprint(self, names: tuple[str, ...] | None = None) -> str:
        """Changes whenever one of the fields `names` (default: all) changes, so edited prompts give new ids."""
        chosen = asdict(self) if names is None else {name: getattr(self, name) for name in names}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]

    def seed_principles(self) -> str:
        """The seed pairs' principles pooled into one rule list (the `seed-principles` mode)."""
        rules = []
        for pair in self.seed_pairs:
            for line in pair["principles"].splitlines():
                rule = line.split(". ", 1)[-1].strip()
                if rule:
                    rules.append(rule)
        return _numbered(rules)

    def constitution_text(self) -> str:
        return _numbered(self.constitution)


# Placeholders each template may use (str.format fields), and the ones it must keep.
PLACEHOLDERS = ("prompt", "principles", "response", "feedback", "max_words")
# Sent as they are, never formatted: braces in them are text.
PLAIN_TEXTS = ("self_instruct_system", "score_reminder")
_LISTS = ("seed_pairs", "constitution")


def _numbered(rules: list[str]) -> str:
    return "\n".join(f"{i}. {rule}" for i, rule in enumerate(rules, 1))


def load_prompt_set(path: str | None) -> PromptSet:
    """The default prompt set, with the fields a YAML file gives replaced; every problem in the file
    (unknown name, wrong type, a lost or unknown placeholder) is one UserError, before any call."""
    if path is None:
        return PromptSet()
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{file}: prompts file not found")
    data = read_yaml(file)  # the one YAML reader: malformed or non-UTF-8 text is one line naming FILE:LINE
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UserError(f"{file}: expected a mapping of template names to texts, got {type(data).__name__}")
    known = {f.name for f in fields(PromptSet)}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise UserError(f"{file}: unknown template '{unknown[0]}' (known: {', '.join(sorted(known))})")
    for name, value in data.items():
        _check_type(name, value, file)
    prompts = PromptSet(**data)
    _check_placeholders(prompts, file)
    return prompts


def _check_type(name: str, value, file: Path) -> None:
    if name == "seed_pairs":
        if not isinstance(value, list) or not value:
            raise UserError(f"{file}: seed_pairs must be a non-empty list of {{question, principles}} mappings")
        for index, pair in enumerate(value):
            if not isinstance(pair, dict) or set(pair) != {"question", "principles"}:
                raise UserError(f"{file}: seed_pairs[{index}] must have exactly the keys question and principles")
            for key in ("question", "principles"):
                if not isinstance(pair[key], str) or not pair[key].strip():
                    raise UserError(f"{file}: seed_pairs[{index}].{key} must be a non-empty string")
    elif name == "constitution":
        if not isinstance(value, list) or not value or not all(isinstance(r, str) and r.strip() for r in value):
            raise UserError(f"{file}: constitution must be a non-empty list of strings")
    elif not isinstance(value, str):
        raise UserError(f"{file}: template '{name}' must be a string, got {type(value).__name__}")


def _check_placeholders(prompts: PromptSet, file: Path) -> None:
    default = PromptSet()
    dummy = {name: "x" for name in PLACEHOLDERS}
    for f in fields(PromptSet):
        if f.name in PLAIN_TEXTS or f.name in _LISTS:
            continue
        text = getattr(prompts, f.name)
        try:
            text.format(**dummy)
        except KeyError as err:
            raise UserError(
                f"{file}: template '{f.name}' has the unknown placeholder {{{err.args[0]}}} "
                f"(known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}; write {{{{ }}}} for a literal brace)"
            ) from None
        except (IndexError, ValueError) as err:
            raise UserError(f"{file}: template '{f.name}' is not a valid str.format template ({err})") from None
        for placeholder in PLACEHOLDERS:
            token = "{" + placeholder + "}"
            if token in getattr(default, f.name) and token not in text and placeholder != "max_words":
                raise UserError(f"{file}: template '{f.name}' lost its {token} placeholder")
