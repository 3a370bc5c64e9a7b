"""GRPO's reward: the critic's score of each sampled completion against its prompt's principles.

TRL's `GRPOTrainer` calls a reward function with the batch's `prompts` and `completions` and every
other dataset column as a keyword list (here `principles`), and takes one float per completion, or
None where the reward does not apply (TRL leaves that completion out of this reward). `PrincipleReward`
is such a function. It is asynchronous, so TRL awaits it on the trainer's own event loop and the
batch's critiques are in flight together, at most `max_concurrent` at once (generate's
`max_concurrent_prompts`), each bounded and retried by its backend as in generation.

Each completion is judged as SPRI's Stage II judges a response: the critique request the loop sends
(`Engine.response_verdict`: the package's prompt set or, with `loop.official_checkout`, the authors'),
asked again `loop.score_retries` times while the reply has no score. Its verdict becomes a reward in
[0, 1]: (s - 1) / 4, where s is the mean of the critic's digit distribution under `score: expected`
(so the reward moves before the likeliest digit does), else the critic's 1-5 score.

The critic is never the model being trained: `transformers` loads its own copy of the model (in
eval mode, under inference_mode; the same weights as the student's start when both name one model,
but a separate object that training never touches), `openai` and `vllm` ask a server.

What is not a reward is counted, never a crash: a reply still without a score after the retries is
None, counted `unscored`; a critic the backend could not get an answer from after its retries (a
connection error, an HTTP error status, a timeout, a malformed reply: generate's transient errors) is
None, counted `failed`, with the error logged once per batch. Any other exception is a fault and
raises. The counts and the critic's calls and tokens are kept in `totals` and logged per batch
through TRL's `log_metric` as `critic/unscored`, `critic/failed` (shares of the batch),
`critic/calls` and `critic/tokens`; each critique's feedback goes to TRL's completions table
(`log_extra`, column `critique`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from spri_sft.generate.engine import Engine, LoopSettings, Session
from spri_sft.generate.prompts import PromptSet
from spri_sft.generate.run import TRANSIENT, error_kind
from spri_sft.generate.scoring import MAX_SCORE, MIN_SCORE, Verdict
from spri_sft.llm.base import ChatBackend, Completion

logger = logging.getLogger(__name__)

# The dataset column that holds each prompt's principles (`spri_sft.train.grpo.principle_prompts` writes it).
PRINCIPLES_COLUMN = "principles"
# The name TRL logs this reward's metrics under (rewards/principles/mean and /std in log_history): TRL names a reward
# function that is a callable object by its `__name__` (trl.trainer.utils.get_callable_name).
REWARD_NAME = "principles"


def reward_of(verdict: Verdict) -> float | None:
    """A verdict as a reward in [0, 1]: the expected score when the critic gave a distribution, else its score."""
    statistic = verdict.mean if verdict.distribution is not None else verdict.score
    if statistic is None:
        return None
    return (statistic - MIN_SCORE) / (MAX_SCORE - MIN_SCORE)


class PrincipleReward:
    """A TRL reward function: the critic's verdict on each completion against its prompt's principles."""

    __name__ = REWARD_NAME  # TRL's name of the reward (an instance's; the class's own __name__ stays the class's)

    def __init__(
        self,
        critic: ChatBackend,
        loop: LoopSettings | None = None,
        prompts: PromptSet | None = None,
        max_concurrent: int = 64,
    ):
        """`loop` and `prompts`: generation's loop settings and templates (the run's), which choose the critique
        request and its retries."""
        self.critic = critic
        self.engine = Engine("spri", prompts or PromptSet(), loop or LoopSettings())
        self.max_concurrent = max_concurrent
        self.totals: Counter = Counter()  # completions, scored, unscored, failed, calls, prompt/completion tokens
        self._started = False

    async def start(self) -> None:
        """Load the critic or check its servers (a UserError says what is wrong); once."""
        if not self._started:
            await self.critic.start()
            self._started = True

    async def close(self) -> None:
        await self.critic.close()

    async def __call__(self, prompts, completions, principles=None, log_metric=None, log_extra=None, **columns):
        if principles is None:
            raise ValueError(
                f"PrincipleReward needs the dataset column '{PRINCIPLES_COLUMN}' (each prompt's principles)"
            )
        await self.start()
        batch: Counter = Counter()

        def count(role: str, completion: Completion) -> None:
            batch.update(calls=1, tokens=completion.prompt_tokens + completion.completion_tokens)
            self.totals.update(
                calls=1, prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens
            )

        # The engine's session holds a base and a critic role; only the critic is ever asked here.
        session = Session(self.critic, self.critic, on_usage=count)
        slots = asyncio.Semaphore(self.max_concurrent)
        errors: list[str] = []

        async def judge(prompt, completion, rubric) -> tuple[float | None, str]:
            async with slots:
                try:
                    verdict = await self.engine.response_verdict(
                        question_of(prompt), rubric, text_of(completion), session
                    )
                except Exception as err:
                    if error_kind(err) != TRANSIENT:
                        raise
                    errors.append(f"{type(err).__name__}: {err}")
                    batch.update(failed=1)
                    return None, ""
            reward = reward_of(verdict)
            batch.update(unscored=reward is None)
            return reward, verdict.feedback

        results = await asyncio.gather(*(judge(p, c, r) for p, c, r in zip(prompts, completions, principles)))
        rewards = [reward for reward, _ in results]
        batch.update(completions=len(rewards), scored=sum(r is not None for r in rewards))
        self.totals.update({key: batch[key] for key in ("completions", "scored", "unscored", "failed")})
        if errors:
            logger.warning(
                "critic: %d of %d critiques got no answer after the backend's retries (their reward is None); first: %s",
                len(errors),
                len(rewards),
                errors[0],
            )
        if log_metric is not None:
            share = max(1, len(rewards))
            log_metric("critic/unscored", batch["unscored"] / share)
            log_metric("critic/failed", batch["failed"] / share)
            log_metric("critic/calls", float(batch["calls"]))
            log_metric("critic/tokens", float(batch["tokens"]))
        if log_extra is not None:
            log_extra("critique", [feedback for _, feedback in results])
        return rewards


def question_of(prompt) -> str:
    """The question a prompt asks: the text itself, or a conversation's last user message."""
    if isinstance(prompt, str):
        return prompt
    return next(message["content"] for message in reversed(prompt) if message["role"] == "user")


def text_of(completion) -> str:
    """A completion's text: itself, or a conversational completion's assistant content."""
    if isinstance(completion, str):
        return completion
    return "".join(message["content"] for message in completion if message["role"] == "assistant")
