"""The SPRI loop and the comparison modes (the rows of the paper's Table 4), one prompt at a time.

Each mode is an async procedure of one prompt that returns a record. Prompts run as
independent coroutines, so one prompt's Stage II may run while another's Stage I waits.

The loop rules of a critic-scored stage (SPRI's principles and response; the `-critic` variants):
* the critic scores the current version; a score >= `threshold` accepts it;
* otherwise the base model revises it from the critic's feedback, and the critic scores again;
* at most `max_rounds` critiques per stage, so at most `max_rounds - 1` revisions; when the
  last critique still fails, the last revision is kept and the stage ends `max_rounds`;
* a critic reply with no score in 1-5 is asked again (`score_retries` times, with a reminder
  of the format); if it still has none the round is recorded unscored (`score: null`) and
  `unscored` decides: `revise` counts it as failing (the base model revises from whatever
  feedback the critic wrote); `accept` keeps the current version and ends the stage, not
  accepted (status `max_rounds`), which is the released scripts' rule (their
  `eval_score >= 4` raises on None and drops the prompt from the loop), with `score_retries: 0`.
* how a critique gets its score is the critic role's `score` setting (`EndpointConfig.score`;
  for self-refine the base role's, as the base model critiques itself): `parse` reads it from the
  free text as above; `constrained` and `expected` have the backend write the reply as
  "Feedback: ... [RESULT] n", so none is unscored; under `expected` a version passes when the
  mean of the critic's digit distribution is >= `threshold`, and each round also records
  `score_distribution`, `score_mean` and `score_mode` (`scoring.Verdict`).

Modes: what each one calls and sends, its Table 4 row and its description are one table,
`spri_sft.generate.modes.MODE_SPECS`; `Engine.run` follows a spec's steps (Stage I, the answer, its
refinement) top-down. Self-refine follows the released `04_gen_[self-refine]_responses.py`: up to
`max_rounds` feedbacks; a score >= `threshold` stops; every other feedback (an unscored one
included) is followed by a refinement, the one after the last feedback too, so the kept response
may be unscored. The released script has a bug that this engine does not copy: it always gives
feedback on the first draft (`input.get(f"...[turn_{t}]", turn_0)` looks up a version not yet
written), so its refinements never get feedback of their own; here each feedback scores the
latest version. SPRI's response refiner sees the feedback, not the principles.

Two prompt sets: the package's own (`spri_sft.generate.prompts`, replaceable from
`loop.prompts_file`), or, with `loop.official_checkout`, the authors' texts read from their
released code (`spri_sft.generate.official`) and assembled exactly as their task-3 scripts do:
system = file text (+ "\\n\\n" + the seed block for Stage I, + "\\n\\n" alone for Stage II's
first answer), user `### Question: {q}\\n### Principles:` and so on; critic requests are one
user message (an endpoint with `prompt_format: raw` sends it as `User: {text} \\n\\nAssistant: `,
the released layout); every reply is stripped with `.strip("\\n#").strip()`; the feedback passed
to a refiner is the critic's text before `[RESULT]`. One difference stays: the released scripts'
non-OpenAI branch carries a refined version forward unstripped (only its logged copy is
stripped); here the stripped text is carried, as their OpenAI branch does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from spri_sft.errors import UserError
from spri_sft.generate.inputs import PromptSource, load_references

# ALIASES, MODE_ROLES, MODES, TABLE4_MODES, Mode and canonical_mode are re-exported: other modules import them from here.
from spri_sft.generate.modes import (  # noqa: F401
    ALIASES,
    MODE_ROLES,
    MODES,
    PACKAGE_ONLY_FIELDS,
    TABLE4_MODES,
    FixedRules,
    Mode,
    ModeSpec,
    canonical_mode,
    mode_spec,
)
from spri_sft.generate.official import official_texts
from spri_sft.generate.prompts import PromptSet
from spri_sft.generate.record import Outcome, Round
from spri_sft.generate.scoring import Verdict, parse_feedback, parse_score, released_feedback
from spri_sft.llm.base import ChatBackend, Completion


@dataclass
class LoopSettings:
    """The critique-revise loop of each stage, and which prompt set the modes send."""

    threshold: int = field(
        default=4, metadata={"help": "A critic score >= threshold accepts a version (1-5).", "ge": 1, "le": 5}
    )
    max_rounds: int = field(
        default=4, metadata={"help": "Critiques per stage at most (so max_rounds - 1 revisions).", "ge": 1}
    )
    max_words: int = field(default=128, metadata={"help": "Word cap that the package's base prompts ask for.", "ge": 1})
    score_retries: int = field(
        default=2, metadata={"help": "Times a critic reply without a score is asked again.", "ge": 0}
    )
    unscored: Literal["revise", "accept"] = field(
        default="revise",
        metadata={
            "help": "A critique still without a score: 'revise' counts it as failing; 'accept' keeps the current "
            "version and ends the stage (the released scripts' rule)."
        },
    )
    few_shot: bool = field(
        default=True, metadata={"help": "spri: show the seed (question, principles) pairs to the base model."}
    )
    prompts_file: str | None = field(
        default=None, metadata={"help": "YAML file replacing any of the package's prompt templates or seed pairs."}
    )
    official_checkout: str | None = field(
        default=None,
        metadata={
            "help": "Path to a checkout of github.com/honglizhan/SPRI-public: every mode sends the authors' released "
            "task-3 prompts, read from it (see spri_sft.generate.official)."
        },
    )


@dataclass
class Usage:
    model: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Session:
    """One prompt's calls to the base and critic models, with token accounting."""

    def __init__(
        self, base: ChatBackend, critic: ChatBackend, on_usage: Callable[[str, Completion], None] | None = None
    ):
        self.base, self.critic = base, critic
        self.usage = {"base": Usage(base.model), "critic": Usage(critic.model)}
        self._on_usage = on_usage

    def score_modes(self, role: str) -> tuple[str, str]:
        """The role's `score` setting and the mode its backend really uses (a failed probe says "parse")."""
        backend = self.base if role == "base" else self.critic
        return getattr(backend, "score_setting", "parse"), getattr(backend, "score_mode", "parse")

    async def ask(self, role: str, messages: list[dict[str, str]], scored: bool = False) -> Completion:
        """One call; `scored` asks the backend for a critique in the critic format (`critique()`)."""
        backend = self.base if role == "base" else self.critic
        completion = await (backend.critique(messages) if scored else backend.chat(messages))
        usage = self.usage[role]
        usage.calls += 1
        usage.prompt_tokens += completion.prompt_tokens
        usage.completion_tokens += completion.completion_tokens
        if self._on_usage:
            self._on_usage(role, completion)
        return completion


@dataclass
class StageResult:
    text: str
    accepted: bool
    rounds: list[Round]


Messages = list[dict[str, str]]


def _chat(system: str | None, user: str) -> Messages:
    head = [] if system is None else [{"role": "system", "content": system}]
    return head + [{"role": "user", "content": user}]


class PackageRequests:
    """The requests of every mode in this package's own prompt set."""

    def __init__(self, prompts: PromptSet, loop: LoopSettings):
        self.p, self.words, self.few_shot = prompts, loop.max_words, loop.few_shot

    def clean(self, text: str) -> str:
        return text

    def feedback(self, critique: str) -> str:
        return parse_feedback(critique)

    def principles_draft(self, q: str) -> Messages:
        p = self.p
        messages = [{"role": "system", "content": p.principles_system.format(max_words=self.words)}]
        if self.few_shot:
            for pair in p.seed_pairs:
                messages.append({"role": "user", "content": p.principles_user.format(prompt=pair["question"])})
                messages.append({"role": "assistant", "content": pair["principles"]})
        messages.append({"role": "user", "content": p.principles_user.format(prompt=q)})
        return messages

    def principles_critique(self, q: str, principles: str) -> Messages:
        return _chat(None, self.p.principles_critic.format(prompt=q, principles=principles))

    def principles_revise(self, q: str, principles: str, feedback: str) -> Messages:
        text = self.p.principles_revise.format(prompt=q, principles=principles, feedback=feedback, max_words=self.words)
        return _chat(None, text)

    def response_draft(self, q: str, principles: str) -> Messages:
        return _chat(self.p.response_system.format(principles=principles, max_words=self.words), q)

    def response_critique(self, q: str, principles: str, response: str) -> Messages:
        return _chat(None, self.p.response_critic.format(prompt=q, response=response, principles=principles))

    def response_revise(self, q: str, response: str, feedback: str) -> Messages:
        # The refiner sees the feedback but not the principles: only the critic holds the rubric.
        text = self.p.response_revise.format(prompt=q, response=response, feedback=feedback, max_words=self.words)
        return _chat(None, text)

    def direct(self, q: str) -> Messages:
        return _chat(self.p.direct_system.format(max_words=self.words), q)

    def self_instruct(self, q: str) -> Messages:
        return _chat(self.p.self_instruct_system, self.p.self_instruct_user.format(prompt=q))

    def rules(self, rules: FixedRules) -> str:
        return self.p.seed_principles() if rules == "seed_pairs" else self.p.constitution_text()

    def fixed_rules(self, rules: FixedRules, q: str) -> Messages:
        return _chat(self.p.rules_system.format(principles=self.rules(rules)), q)

    def self_refine_answer(self, q: str) -> Messages:
        return self.direct(q)

    def self_refine_feedback(self, q: str, response: str) -> Messages:
        return _chat(None, self.p.self_critic.format(prompt=q, response=response))

    def self_refine_revise(self, q: str, response: str, feedback: str) -> Messages:
        return self.response_revise(q, response, feedback)

    def self_refine_feedback_text(self, critique: str) -> str:
        return parse_feedback(critique)


class OfficialRequests:
    """The requests of every mode as the SPRI authors' released task-3 scripts build them."""

    def __init__(self, texts: Mapping[str, str]):
        self.t = texts

    def clean(self, text: str) -> str:
        return text.strip("\n#").strip()

    def feedback(self, critique: str) -> str:
        return released_feedback(critique)

    # stage1_gen_principles/01_gen_principles.py (task sft) and 02_refine_principles.py.
    def principles_draft(self, q: str) -> Messages:
        system = f"{self.t['principles_generate']}\n\n{self.t['principles_examples']}"
        return _chat(system, f"### Question: {q}\n### Principles:")

    def principles_critique(self, q: str, principles: str) -> Messages:
        return _chat(None, self.t["principles_critique"].format(orig_question=q, orig_principle=principles))

    def principles_revise(self, q: str, principles: str, feedback: str) -> Messages:
        user = f"### Question: {q}\n### Principles: {principles}\n### Feedback: {feedback}\n### Refined Principles:"
        return _chat(self.t["principles_refine"], user)

    # stage2_gen_responses/01_gen_init_responses.py (no seed examples) and 02_prin_refine_responses.py.
    def response_draft(self, q: str, principles: str) -> Messages:
        user = f"### Question: {q}\n### Principles: {principles}\n\n### Response:"
        return _chat(f"{self.t['response_generate']}\n\n", user)

    def response_critique(self, q: str, principles: str, response: str) -> Messages:
        text = self.t["response_critique"].format(orig_question=q, orig_principle=principles, orig_response=response)
        return _chat(None, text)

    def response_revise(self, q: str, response: str, feedback: str) -> Messages:
        user = f"### Question: {q}\n### Response: {response}\n### Feedback: {feedback}\n### Refined Response:"
        return _chat(self.t["response_refine"], user)

    # [task3]-sft/01_gen_baseline_direct_responses.py, task "general".
    def direct(self, q: str) -> Messages:
        return _chat(self.t["direct_system"], self.t["direct_user"].format(INPUT=q))

    # [task3]-sft/02_gen_[self-instruct].py.
    def self_instruct(self, q: str) -> Messages:
        return _chat(self.t["self_instruct_system"], f"Task: {q.strip()}\nOutput:")

    # [task3]-sft/05_gen_[seed_principles]_responses.py and 03_gen_[self-align]_responses.py.
    def rules(self, rules: FixedRules) -> str:
        return self.t["seed_principles_system"] if rules == "seed_pairs" else self.t["self_align_system"]

    def fixed_rules(self, rules: FixedRules, q: str) -> Messages:
        if rules == "seed_pairs":
            return _chat(self.t["seed_principles_system"], f"User Input: {q.strip()}\nResponse:")
        return _chat(self.t["self_align_system"], f"User: {q}")

    # [task3]-sft/04_gen_[self-refine]_responses.py.
    def self_refine_answer(self, q: str) -> Messages:
        return _chat(self.t["self_refine_answer_system"], f"### Question: {q}\n\n### Response:")

    def self_refine_feedback(self, q: str, response: str) -> Messages:
        user = f"### Question: {q}\n\n### Response: {response}\n\n### Feedback:"
        return _chat(self.t["self_refine_feedback_system"], user)

    def self_refine_revise(self, q: str, response: str, feedback: str) -> Messages:
        user = (
            f"### Question: {q}\n\n### Original Response: {response}\n\n### Feedback: {feedback}"
            "\n\n### Refined Response:"
        )
        return _chat(self.t["self_refine_refine_system"], user)

    def self_refine_feedback_text(self, critique: str) -> str:
        # The released refiner gets the whole (stripped) feedback, score included.
        return critique


def build_requests(mode: str, prompts: PromptSet, loop: LoopSettings) -> PackageRequests | OfficialRequests:
    """The request builder of `mode`'s prompt set; the official texts are read and checked here."""
    spec = mode_spec(mode)
    if loop.official_checkout is None:
        return PackageRequests(prompts, loop)
    if loop.prompts_file is not None:
        raise UserError("loop: set either loop.prompts_file or loop.official_checkout, not both")
    if spec.principles_stage and not loop.few_shot:
        raise UserError(
            "loop.few_shot: false has no counterpart in the released task-3 scripts; keep it true with loop.official_checkout"
        )
    return OfficialRequests(official_texts(loop.official_checkout, spec.official_texts))


async def critique_loop(
    stage: str,
    draft: Completion,
    critique: Callable[[str], Awaitable[Verdict]],
    revise: Callable[[str, str], Awaitable[Completion]],
    loop: LoopSettings,
) -> StageResult:
    """Apply the loop rules of the module docstring to one stage, starting from `draft`."""
    rounds = []
    current = draft
    for number in range(1, loop.max_rounds + 1):
        verdict = await critique(current.text)
        rounds.append(_round(stage, number, current, verdict))
        if verdict.passes(loop.threshold):
            return StageResult(current.text, True, rounds)
        if number == loop.max_rounds or (verdict.score is None and loop.unscored == "accept"):
            break
        current = await revise(current.text, verdict.feedback)
    return StageResult(current.text, False, rounds)


async def self_refine_loop(
    draft: Completion,
    feedback: Callable[[str], Awaitable[Verdict]],
    refine: Callable[[str, str], Awaitable[Completion]],
    loop: LoopSettings,
) -> StageResult:
    """The released self-refine loop (module docstring): every failing feedback is followed by a refinement."""
    rounds = []
    current = draft
    for number in range(1, loop.max_rounds + 1):
        verdict = await feedback(current.text)
        rounds.append(_round("response", number, current, verdict))
        if verdict.passes(loop.threshold):
            return StageResult(current.text, True, rounds)
        current = await refine(current.text, verdict.feedback)
    # The refinement after the last feedback is kept without feedback of its own.
    rounds.append(_round("response", loop.max_rounds + 1, current))
    return StageResult(current.text, False, rounds)


class Engine:
    """Runs one prompt through the configured mode (`spri_sft.generate.modes`) and returns its record fields."""

    def __init__(
        self,
        mode: str,
        prompts: PromptSet,
        loop: LoopSettings,
        references: Mapping[str, str] | None = None,
        source: PromptSource | None = None,
    ):
        """`oracle` reads each prompt's response from `references`, or else from `source`'s
        `response_column` (read here, so a missing column fails before any record is written)."""
        self.spec: ModeSpec = mode_spec(mode)
        self.mode = self.spec.name
        self.prompts, self.loop = prompts, loop
        self.requests = build_requests(self.mode, prompts, loop)
        if self.spec.answer == "dataset" and references is None:
            if source is None:
                raise UserError(
                    f"mode {self.mode}: the prompts' own responses are needed (set prompts.response_column)"
                )
            references = load_references(source)
        self.references = references

    async def run(self, prompt: str, session: Session) -> Outcome:
        """The mode's steps in order (`spri_sft.generate.modes`): Stage I, the answer, its refinement."""
        spec, requests = self.spec, self.requests
        if spec.answer == "dataset":
            return self._oracle(prompt)
        stages: list[StageResult] = []
        # What the critic judges the answer against, recorded as the record's principles.
        rubric = None
        if spec.principles_stage:  # Stage I: this prompt's own principles
            principles = await self._principles_stage(prompt, session)
            stages.append(principles)
            rubric = principles.text
        elif spec.refine == "critic":  # the fixed rules are the rubric
            rubric = requests.rules(spec.rules)
        answer = await self._ask(session, "base", self._answer_request(prompt, rubric))
        if spec.refine == "critic":  # Stage II
            stages.append(await self._response_stage(prompt, rubric, session, answer))
        elif spec.refine == "self":
            stages.append(await self._self_refine(prompt, session, answer))
        else:
            stages.append(StageResult(answer.text, True, [_round("response", 1, answer)]))
        return Outcome(
            principles=rubric,
            response=stages[-1].text,
            status="accepted" if all(s.accepted for s in stages) else "max_rounds",
            rounds=[r for s in stages for r in s.rounds],
            usage={role: asdict(u) for role, u in session.usage.items() if u.calls},
        )

    async def response_verdict(self, prompt: str, principles: str, response: str, session: Session) -> Verdict:
        """Stage II's critique of one response against `principles`, asked again while the reply has no score
        (`score_retries`): what the loop asks of each version, and GRPO's reward (`spri_sft.train.grpo_reward`) of
        each completion."""
        r = self.requests
        return await self._critique(session, "critic", r.response_critique(prompt, principles, response), r.feedback)

    def _answer_request(self, prompt: str, principles: str | None) -> Messages:
        r, spec = self.requests, self.spec
        if spec.answer == "response_draft":
            return r.response_draft(prompt, principles)
        if spec.answer == "fixed_rules":  # the rules are in the system prompt, the same for every record
            return r.fixed_rules(spec.rules, prompt)
        if spec.answer == "self_instruct":
            return r.self_instruct(prompt)
        if spec.answer == "self_refine_answer":
            return r.self_refine_answer(prompt)
        return r.direct(prompt)  # "direct"

    def _oracle(self, prompt: str) -> Outcome:
        response = self.references.get(prompt)
        if response is None:
            raise KeyError("the prompt has no response in the prompts dataset")
        version = Completion(text=response, prompt_tokens=0, completion_tokens=0, finish_reason="dataset")
        rounds = [_round("response", 1, version)]
        return Outcome(principles=None, response=response, status="accepted", rounds=rounds, usage={})

    async def _ask(self, session: Session, role: str, messages: Messages, scored: bool = False) -> Completion:
        completion = await session.ask(role, messages, scored=scored)
        return replace(completion, text=self.requests.clean(completion.text))

    async def _principles_stage(self, prompt: str, session: Session) -> StageResult:
        r = self.requests
        draft = await self._ask(session, "base", r.principles_draft(prompt))

        async def critique(principles: str):
            return await self._critique(session, "critic", r.principles_critique(prompt, principles), r.feedback)

        async def revise(principles: str, feedback: str):
            return await self._ask(session, "base", r.principles_revise(prompt, principles, feedback))

        return await critique_loop("principles", draft, critique, revise, self.loop)

    async def _response_stage(self, prompt: str, principles: str, session: Session, draft: Completion) -> StageResult:
        r = self.requests

        async def critique(response: str):
            return await self.response_verdict(prompt, principles, response, session)

        async def revise(response: str, feedback: str):
            return await self._ask(session, "base", r.response_revise(prompt, response, feedback))

        return await critique_loop("response", draft, critique, revise, self.loop)

    async def _self_refine(self, prompt: str, session: Session, draft: Completion) -> StageResult:
        r = self.requests

        async def feedback(response: str):
            request = r.self_refine_feedback(prompt, response)
            return await self._critique(session, "base", request, r.self_refine_feedback_text)

        async def refine(response: str, text: str):
            return await self._ask(session, "base", r.self_refine_revise(prompt, response, text))

        return await self_refine_loop(draft, feedback, refine, self.loop)

    async def _critique(
        self, session: Session, role: str, messages: Messages, feedback_of: Callable[[str], str]
    ) -> Verdict:
        setting, used = session.score_modes(role)
        scored = used != "parse"

        async def ask(request: Messages) -> tuple[Completion, int | None]:
            reply = await self._ask(session, role, request, scored=scored)
            return reply, reply.score if reply.score is not None else parse_score(reply.text)

        reply, score = await ask(messages)
        for _ in range(self.loop.score_retries):
            if score is not None:
                break
            reply, score = await ask(messages + [
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": self.prompts.score_reminder},
            ])  # fmt: skip
        return Verdict(
            feedback_of(reply.text),
            score,
            # Keys are digits; a reply replayed from the journal (JSON) has them as strings.
            distribution={int(d): p for d, p in reply.score_distribution.items()} if reply.score_distribution else None,
            mode=used if setting != "parse" else None,
        )


def mode_texts(mode: str, prompts: PromptSet, loop: LoopSettings) -> dict:
    """Every text `mode` sends, by name: the package's templates it uses, or the checkout's texts
    (read and checked, so a broken checkout fails here, before any call)."""
    spec = mode_spec(mode)
    if loop.official_checkout is not None:
        build_requests(mode, prompts, loop)  # the same checks as the engine's
        texts = dict(official_texts(loop.official_checkout, spec.official_texts))
    else:
        names = spec.package_texts + (("seed_pairs",) if spec.principles_stage and loop.few_shot else ())
        texts = {name: getattr(prompts, name) for name in names}
    if spec.scored and loop.score_retries > 0:
        texts["score_reminder"] = prompts.score_reminder
    return texts


def mode_identity(mode: str, prompts: PromptSet, loop: LoopSettings, response_column: str | None = None) -> dict:
    """What shapes a record of `mode` besides its prompt and the models' decoding settings: the
    texts the mode sends and the loop settings it reads (and, for `oracle`, the response column).
    Record ids and the pipeline's generate stage both key on this, so the two can never disagree."""
    spec = mode_spec(mode)
    texts = mode_texts(mode, prompts, loop)
    names = spec.loop_fields
    if loop.official_checkout is not None:
        names = tuple(n for n in names if n not in PACKAGE_ONLY_FIELDS)
    identity = {
        "mode": spec.name,
        "loop": {name: getattr(loop, name) for name in names},
        "templates": hashlib.sha256(json.dumps(texts, sort_keys=True).encode()).hexdigest()[:16],
    }
    if spec.answer == "dataset":
        identity["response_column"] = response_column
    return identity


def _round(stage: str, number: int, version: Completion, verdict: Verdict | None = None) -> Round:
    critique = verdict.round_fields() if verdict is not None else {"critique": None, "score": None}
    return Round(stage=stage, round=number, text=version.text, finish_reason=version.finish_reason, **critique)
