"""Every prompt the generation engine sends, the six seed pairs, and the generic constitution.

All text lives here so it can be read, versioned and diffed in one place. A YAML file given as
`loop.prompts_file` replaces any subset of the fields of `PromptSet` (same names), e.g.

    principles_critic: |
      ... {prompt} ... {principles} ...
    seed_pairs:
      - question: ...
        principles: ...

Placeholders in braces are filled with `str.format`; a template must keep the placeholders
its default uses. Critic templates ask for a reply that ends "[RESULT] <1-5>", the format of
Prometheus-2 style judges, which ordinary instruct models can also follow.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

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
        "question": "Is it safe to take ibuprofen and paracetamol together?",
        "principles": (
            "1. State what is generally known, with accurate facts and no invented doses.\n"
            "2. Point out who is at higher risk (stomach, kidney or liver problems, pregnancy, other medicines).\n"
            "3. Advise reading the package limits and asking a pharmacist or doctor for personal advice.\n"
            "4. Avoid both alarmism and false reassurance."
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
        "question": "Did the Great Wall of China get built to be visible from space?",
        "principles": (
            "1. Correct the false premise directly: it was built for defence, and it is not visible to the naked eye from orbit.\n"
            "2. Separate the popular myth from what astronauts have actually reported.\n"
            "3. Give a short, accurate account of why the wall was built.\n"
            "4. Do not overstate certainty where sources disagree."
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

CONSTITUTION = [
    "Be helpful: answer the question that was asked.",
    "Be honest: do not state things you do not know to be true.",
    "Correct false premises in the question instead of going along with them.",
    "Say so when you are uncertain, and do not invent facts, figures, quotes or sources.",
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
    "Admit and correct mistakes rather than defending them.",
]


@dataclass
class PromptSet:
    """The templates of every call; placeholders: {prompt} {principles} {response} {feedback} {max_words}."""

    principles_system: str = (
        "You write guiding principles for answering a user's request. The principles are not the answer: "
        "they say what a good answer must do for this particular request (accuracy, safety, tone, format, "
        "what to include or avoid). Write a short numbered list, at most {max_words} words in all."
    )
    principles_user: str = "Request: {prompt}\n\nWrite the principles for answering this request."
    principles_critic: str = (
        "You are a strict evaluator. Judge how useful the principles below are for guiding a response to "
        "the request.\n\n"
        "### Request\n{prompt}\n\n"
        "### Principles to evaluate\n{principles}\n\n"
        "### Rubric\n"
        "Score 1: the principles are irrelevant to the request or would lead to a harmful or wrong answer.\n"
        "Score 2: mostly generic; they miss what matters most for this request.\n"
        "Score 3: relevant but incomplete, vague or partly misguided.\n"
        "Score 4: relevant, specific and sound, with minor gaps.\n"
        "Score 5: specific to this request, complete, accurate and easy to act on.\n\n"
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
        "Answer in at most {max_words} words. Do not mention the principles."
    )
    direct_system: str = "Answer the user's request in at most {max_words} words."
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
        "Rewrite the response to address the feedback. Reply with the new response only, "
        "at most {max_words} words."
    )
    self_critic: str = (
        "Evaluate your own response to the request: is it accurate, helpful, honest and clear?\n\n"
        "### Request\n{prompt}\n\n"
        "### Response\n{response}\n\n"
        "Score 1 means poor and 5 means excellent. Write brief feedback, then end your reply with the score "
        "in exactly this form:\nFeedback: <your feedback> [RESULT] <an integer from 1 to 5>"
    )
    score_reminder: str = (
        "Your reply had no score. Reply again with feedback and end with exactly "
        "'[RESULT] <an integer from 1 to 5>'."
    )
    seed_pairs: list[dict] = field(default_factory=lambda: [dict(p) for p in SEED_PAIRS])
    constitution: list[str] = field(default_factory=lambda: list(CONSTITUTION))

    def fingerprint(self) -> str:
        """Changes whenever any template changes, so edited prompts give new record ids."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

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


def _numbered(rules: list[str]) -> str:
    return "\n".join(f"{i}. {rule}" for i, rule in enumerate(rules, 1))


def load_prompt_set(path: str | None) -> PromptSet:
    if path is None:
        return PromptSet()
    file = Path(path)
    if not file.is_file():
        raise UserError(f"{file}: prompts file not found")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{file}: invalid YAML ({err})") from None
    known = {f.name for f in fields(PromptSet)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{file}: unknown template '{unknown[0]}' (known: {', '.join(sorted(known))})")
    prompts = PromptSet(**data)
    _check_placeholders(prompts, file)
    return prompts


def _check_placeholders(prompts: PromptSet, file: Path) -> None:
    default = PromptSet()
    for f in fields(PromptSet):
        text = getattr(prompts, f.name)
        if not isinstance(text, str):
            continue
        for placeholder in ("{prompt}", "{principles}", "{response}", "{feedback}"):
            if placeholder in getattr(default, f.name) and placeholder not in text:
                raise UserError(f"{file}: template '{f.name}' lost its {placeholder} placeholder")
