"""The SPRI loop and the comparison modes, for one prompt at a time.

Each mode is an async function of one prompt that returns a record. Prompts run as
independent coroutines, so one prompt's Stage II may run while another's Stage I waits.

The loop rules of a stage (principles, or response), shared by every mode that critiques:
* the critic scores the current version; a score >= `threshold` accepts it;
* otherwise the base model revises it from the critic's feedback, and the critic scores again;
* at most `max_rounds` critiques per stage, so at most `max_rounds - 1` revisions; when the
  last critique still fails, the last revision is kept and the stage ends `max_rounds`;
* a critic reply with no score in 1-5 is asked again (`score_retries` times, with a reminder
  of the format); if it still has none the round is recorded unscored (`score: null`) and
  counts as failing: the base model revises from whatever feedback the critic wrote.

Modes:
* `spri`: Stage I writes per-prompt principles (few-shot from the seed pairs, or zero-shot),
  Stage II answers guided by them. The response refiner sees the feedback, not the principles.
* `direct`: the base model answers once; no critic.
* `self-refine`: the base model answers, critiques its own answer on the same 1-5 loop and refines.
* `seed-principles` / `constitution`: Stage II only, with a fixed rule list (the seed pairs'
  principles pooled, or a generic 16-rule constitution) in place of per-prompt principles.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Awaitable, Callable, Literal, get_args

from spri_sft.generate.prompts import PromptSet
from spri_sft.generate.scoring import parse_feedback, parse_score
from spri_sft.llm.base import ChatBackend, Completion

Mode = Literal["spri", "direct", "self-refine", "seed-principles", "constitution"]
MODES = get_args(Mode)

# The model roles each mode calls: a role a mode never calls cannot change its records.
MODE_ROLES: dict[str, tuple[str, ...]] = {
    "spri": ("base", "critic"),
    "direct": ("base",),
    "self-refine": ("base",),
    "seed-principles": ("base", "critic"),
    "constitution": ("base", "critic"),
}


@dataclass
class LoopSettings:
    """The critique-revise loop of each stage."""

    threshold: int = field(default=4, metadata={"help": "A critic score >= threshold accepts a version (1-5)."})
    max_rounds: int = field(default=4, metadata={"help": "Critiques per stage at most (so max_rounds - 1 revisions)."})
    max_words: int = field(default=128, metadata={"help": "Word cap that base prompts ask for (principles and responses)."})
    score_retries: int = field(default=2, metadata={"help": "Times a critic reply without a score is asked again."})
    few_shot: bool = field(default=True, metadata={"help": "spri: show the seed (question, principles) pairs to the base model."})
    prompts_file: str | None = field(
        default=None, metadata={"help": "YAML file replacing any of the prompt templates or seed pairs."}
    )


@dataclass
class Usage:
    model: str
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Session:
    """One prompt's calls to the base and critic models, with token accounting."""

    def __init__(self, base: ChatBackend, critic: ChatBackend, on_usage: Callable[[Completion], None] | None = None):
        self.base, self.critic = base, critic
        self.usage = {"base": Usage(base.model), "critic": Usage(critic.model)}
        self._on_usage = on_usage

    async def ask(self, role: str, messages: list[dict[str, str]]) -> Completion:
        backend = self.base if role == "base" else self.critic
        completion = await backend.chat(messages)
        usage = self.usage[role]
        usage.calls += 1
        usage.prompt_tokens += completion.prompt_tokens
        usage.completion_tokens += completion.completion_tokens
        if self._on_usage:
            self._on_usage(completion)
        return completion


@dataclass
class StageResult:
    text: str
    accepted: bool
    rounds: list[dict]


async def critique_loop(
    stage: str,
    draft: Completion,
    critique: Callable[[str], Awaitable[tuple[str, int | None]]],
    revise: Callable[[str, str], Awaitable[Completion]],
    loop: LoopSettings,
) -> StageResult:
    """Apply the loop rules of the module docstring to one stage, starting from `draft`."""
    rounds = []
    current = draft
    for number in range(1, loop.max_rounds + 1):
        feedback, score = await critique(current.text)
        rounds.append(
            {
                "stage": stage,
                "round": number,
                "text": current.text,
                "finish_reason": current.finish_reason,
                "critique": feedback,
                "score": score,
            }
        )
        if score is not None and score >= loop.threshold:
            return StageResult(current.text, True, rounds)
        if number == loop.max_rounds:
            break
        current = await revise(current.text, feedback)
    return StageResult(current.text, False, rounds)


class Engine:
    """Runs one prompt through the configured mode and returns its record fields."""

    def __init__(self, mode: str, prompts: PromptSet, loop: LoopSettings):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode, self.prompts, self.loop = mode, prompts, loop

    async def run(self, prompt: str, session: Session) -> dict:
        if self.mode == "spri":
            principles = await self._principles_stage(prompt, session)
            response = await self._response_stage(prompt, principles.text, session, critic_role="critic")
            stages = [principles, response]
            final_principles = principles.text
        elif self.mode == "direct":
            answer = await session.ask("base", self._answer_messages(prompt, None))
            stages = [StageResult(answer.text, True, [_unscored_round("response", answer)])]
            final_principles = None
        elif self.mode == "self-refine":
            stages = [await self._response_stage(prompt, None, session, critic_role="base")]
            final_principles = None
        else:
            final_principles = (
                self.prompts.seed_principles() if self.mode == "seed-principles" else self.prompts.constitution_text()
            )
            stages = [await self._response_stage(prompt, final_principles, session, critic_role="critic")]
        return {
            "principles": final_principles,
            "response": stages[-1].text,
            "status": "accepted" if all(s.accepted for s in stages) else "max_rounds",
            "rounds": [r for s in stages for r in s.rounds],
            "usage": {role: asdict(u) for role, u in session.usage.items() if u.calls},
        }

    async def _principles_stage(self, prompt: str, session: Session) -> StageResult:
        p, words = self.prompts, self.loop.max_words
        messages = [{"role": "system", "content": p.principles_system.format(max_words=words)}]
        if self.loop.few_shot:
            for pair in p.seed_pairs:
                messages.append({"role": "user", "content": p.principles_user.format(prompt=pair["question"])})
                messages.append({"role": "assistant", "content": pair["principles"]})
        messages.append({"role": "user", "content": p.principles_user.format(prompt=prompt)})
        draft = await session.ask("base", messages)

        async def critique(principles: str):
            return await self._critique(session, "critic", p.principles_critic.format(prompt=prompt, principles=principles))

        async def revise(principles: str, feedback: str):
            text = p.principles_revise.format(prompt=prompt, principles=principles, feedback=feedback, max_words=words)
            return await session.ask("base", [{"role": "user", "content": text}])

        return await critique_loop("principles", draft, critique, revise, self.loop)

    async def _response_stage(self, prompt: str, principles: str | None, session: Session, critic_role: str) -> StageResult:
        p, words = self.prompts, self.loop.max_words
        draft = await session.ask("base", self._answer_messages(prompt, principles))

        async def critique(response: str):
            if principles is None:
                request = p.self_critic.format(prompt=prompt, response=response)
            else:
                request = p.response_critic.format(prompt=prompt, response=response, principles=principles)
            return await self._critique(session, critic_role, request)

        async def revise(response: str, feedback: str):
            # The refiner sees the feedback but not the principles: only the critic holds the rubric.
            text = p.response_revise.format(prompt=prompt, response=response, feedback=feedback, max_words=words)
            return await session.ask("base", [{"role": "user", "content": text}])

        return await critique_loop("response", draft, critique, revise, self.loop)

    def _answer_messages(self, prompt: str, principles: str | None) -> list[dict[str, str]]:
        words = self.loop.max_words
        if principles is None:
            system = self.prompts.direct_system.format(max_words=words)
        else:
            system = self.prompts.response_system.format(principles=principles, max_words=words)
        return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]

    async def _critique(self, session: Session, role: str, request: str) -> tuple[str, int | None]:
        messages = [{"role": "user", "content": request}]
        reply = await session.ask(role, messages)
        score = parse_score(reply.text)
        for _ in range(self.loop.score_retries):
            if score is not None:
                break
            retry = messages + [
                {"role": "assistant", "content": reply.text},
                {"role": "user", "content": self.prompts.score_reminder},
            ]
            reply = await session.ask(role, retry)
            score = parse_score(reply.text)
        return parse_feedback(reply.text), score


def mode_identity(mode: str, prompts: PromptSet, loop: LoopSettings) -> dict:
    """What shapes a record of `mode` besides its prompt and the models' decoding settings: the
    texts the mode sends and the loop settings it reads. Record ids and the pipeline's generate
    stage both key on this, so the two can never disagree."""
    loop_settings = {k: v for k, v in asdict(loop).items() if k != "prompts_file"}
    if mode == "direct":
        loop_settings = {"max_words": loop.max_words}
    return {"mode": mode, "loop": loop_settings, "templates": prompts.fingerprint()}


def _unscored_round(stage: str, completion: Completion) -> dict:
    return {
        "stage": stage,
        "round": 1,
        "text": completion.text,
        "finish_reason": completion.finish_reason,
        "critique": None,
        "score": None,
    }
