"""The backend interface, its per-role settings, and the raw prompt layout.

A backend turns a list of chat messages into one `Completion`. Both implementations are
asynchronous so that many prompts can be in flight at once: the HTTP backend keeps many
requests open, the transformers backend gathers concurrent requests into batches.
The factory that picks an implementation lives in `spri_sft.llm.factory`, so this module
imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from spri_sft.models import DEFAULT_MODEL
from spri_sft.serve.vllm import VLLMServer


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    # "stop" when the model ended its turn, "length" when max_new_tokens cut it off.
    finish_reason: str
    # Set only by `critique()` in a `score: constrained | expected` role: the digit after "[RESULT] "
    # (None when the reply has none) and, for `expected`, the probability of each digit 1-5.
    score: int | None = None
    score_distribution: dict[int, float] | None = None
    # openai, when a request asked for logprobs: the first generated token's top alternatives {token: logprob}.
    top_logprobs: dict[str, float] | None = None


class ChatBackend(Protocol):
    model: str

    async def start(self) -> None:
        """Load the model or check that the servers answer; raise UserError if they do not."""

    async def chat(self, messages: list[dict[str, str]]) -> Completion: ...

    # The role's `score` setting, and the mode it really uses (openai: "parse" after a failed probe).
    score_setting: str
    score_mode: str

    async def critique(self, messages: list[dict[str, str]]) -> Completion:
        """A critic reply in the critic format "Feedback: ... [RESULT] n" with `score` set (and, for
        `expected`, `score_distribution`); called only when `score_mode` is not "parse"."""

    async def close(self) -> None: ...


@dataclass
class EndpointConfig:
    """One model role (base or critic): which model, served how, decoded how."""

    backend: Literal["transformers", "openai", "vllm"] = field(
        default="transformers",
        metadata={
            "help": "'transformers' runs the model in this process; 'openai' calls an OpenAI-compatible server; "
            "'vllm' starts vLLM servers for the model (settings under vllm:) and calls them like 'openai'."
        },
    )
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "Hub id or local path (transformers), or the served model name (openai)."},
    )
    base_url: list[str] = field(
        default_factory=list,
        metadata={
            "help": "openai: server URL(s) ending in /v1; several URLs are replicas of one model, spread by load."
        },
    )
    vllm: VLLMServer = field(
        default_factory=VLLMServer,
        metadata={
            "help": "vllm: how to serve the model (spri_sft.serve.VLLMServer); vllm.model may give a local copy."
        },
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "openai: environment variable holding the API key (the key is never written anywhere)."},
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature; 0 decodes greedily.", "ge": 0})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass.", "gt": 0, "le": 1})
    top_k: int | None = field(
        default=50,
        metadata={
            "help": "Top-k sampling; sent as an extra body field to servers (vLLM/TGI accept it; set null for api.openai.com)."
        },
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Length cap of every reply.", "ge": 1})
    min_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Shortest reply before the model may stop (the SPRI authors used 30). openai: sent as "
            "'min_tokens' (vLLM accepts it; a server that refuses it is logged once and then sent requests "
            "without it); transformers: generate(min_new_tokens=...).",
            "ge": 0,
        },
    )
    prompt_format: Literal["chat", "raw"] = field(
        default="chat",
        metadata={
            "help": "'chat' sends messages through the server's or tokenizer's chat template; 'raw' renders them "
            "in the Prometheus layout ('User: ... \\n\\nAssistant: ', see render_raw) and sends plain text "
            "(openai: /v1/completions; transformers: the tokenizer alone, no chat template)."
        },
    )
    score: Literal["parse", "constrained", "expected"] = field(
        default="parse",
        metadata={
            "help": "How this role's critiques get their 1-5 score (it matters for the critic, and for the base "
            "model in self-refine). 'parse' reads it from free text (a reply without one is unscored); "
            "'constrained' makes the reply 'Feedback: ... [RESULT] n' with n in 1-5 (openai: the server's "
            "structured_outputs regex; transformers: the feedback, then the likeliest digit after '[RESULT] '); "
            "'expected' does the same and records the probability of each digit after '[RESULT] ' "
            "(openai: logprobs; transformers: the 5 digits' logits), and the loop accepts when their mean "
            ">= threshold. A server that cannot do it is said in one line at start and the role falls back to 'parse'."
        },
    )
    max_concurrency: int = field(
        default=32,
        metadata={
            "help": "openai: requests in flight per server URL; transformers: largest generate() batch.",
            "ge": 1,
        },
    )
    timeout: float = field(
        default=120.0, metadata={"help": "openai: seconds before one request times out (then retried).", "gt": 0}
    )
    max_retries: int = field(
        default=6,
        metadata={
            "help": "openai: retries on 408/409/429/5xx (as the openai client decides: x-should-retry and "
            "Retry-After honoured), timeouts, connection errors and malformed replies.",
            "ge": 0,
        },
    )
    requests_per_minute: float | None = field(
        default=None, metadata={"help": "openai: pace requests to this rate.", "gt": 0}
    )
    tokens_per_minute: float | None = field(
        default=None, metadata={"help": "openai: pace by estimated prompt + max_new_tokens to this rate.", "gt": 0}
    )
    batch_wait_ms: float = field(
        default=20.0, metadata={"help": "transformers: how long a batch waits for more concurrent requests.", "ge": 0}
    )
    device: str = field(default="auto", metadata={"help": "transformers: 'auto', 'cpu', 'cuda', 'cuda:1', ..."})
    dtype: str = field(
        default="auto",
        metadata={
            "help": "transformers: 'auto', 'float32', 'bfloat16', 'float16'; auto = bfloat16 on CUDA, float32 elsewhere "
            "(not the checkpoint's dtype, which auto means in train and evaluate)."
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "transformers: run code shipped with the model."})
    # Prices: what `spri-sft plan`, summary.json and generate.max_cost count; they shape no record.
    price_prompt_per_million: float | None = field(
        default=None, metadata={"help": "USD per million prompt tokens of this role (a hosted API's price).", "ge": 0}
    )
    price_completion_per_million: float | None = field(
        default=None,
        metadata={"help": "USD per million completion tokens of this role (a hosted API's price).", "ge": 0},
    )
    price_per_gpu_hour: float | None = field(
        default=None,
        metadata={
            "help": "Self-hosted: USD per GPU-hour; the role's `gpus` are paid for the run's whole wall time "
            "(a server two roles share, once).",
            "ge": 0,
        },
    )
    gpus: int | None = field(
        default=None,
        metadata={
            "help": "GPUs this role's model runs on, for price_per_gpu_hour and the plan's GPU-hours; null: "
            "vllm: tensor_parallel_size x replicas; else 1 with price_per_gpu_hour set, 0 without (a hosted API).",
            "ge": 0,
        },
    )

    def gpu_count(self) -> int:
        """The GPUs this role's model runs on (see `gpus`)."""
        if self.gpus is not None:
            return self.gpus
        if self.backend == "vllm":
            return self.vllm.tensor_parallel_size * self.vllm.replicas
        return 1 if self.price_per_gpu_hour is not None else 0

    def decoding(self) -> dict:
        """The settings that change what the model writes (they enter every record id; prices do not).

        `min_new_tokens`, `prompt_format` and `score` appear only when they differ from their defaults,
        so the ids of records written before these settings existed stay valid. `score` shapes only
        critiques, so it also changes the ids of a mode whose role never critiques (direct with a
        base `score` set): a needless new id, never a wrongly reused one."""
        settings = {
            "model": self.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
        }
        if self.min_new_tokens is not None:
            settings["min_new_tokens"] = self.min_new_tokens
        if self.prompt_format != "chat":
            settings["prompt_format"] = self.prompt_format
        if self.score != "parse":
            settings["score"] = self.score
        return settings


def render_raw(messages: list[dict[str, str]]) -> str:
    """Chat messages as one plain-text prompt, in the layout the SPRI authors fed Prometheus.

    Their `format_input_prometheus` covers one turn: `"User: {user} \\n\\nAssistant: "`, or with a
    system message `"{system}\\n\\nUser: {user} \\n\\nAssistant: "`. Longer histories (few-shot
    pairs, a score reminder after a critique) continue the same layout: each earlier assistant reply
    follows its "Assistant: " and the next turn starts after "\\n\\n", so the prompt always ends
    with "Assistant: " (a space included):

        "{system}\\n\\nUser: {u1} \\n\\nAssistant: {a1}\\n\\nUser: {u2} \\n\\nAssistant: "

    Accepted: an optional first system message, then user and assistant messages alternating,
    ending with a user message (the model writes the next assistant turn). Anything else has no
    place in this layout and raises ValueError.
    """
    turns = list(messages)
    system = turns.pop(0)["content"] if turns and turns[0]["role"] == "system" else None
    if not turns or len(turns) % 2 == 0:
        raise ValueError(f"render_raw needs user/assistant turns ending with a user turn, got {_roles(messages)}")
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            position = index + (system is not None)
            raise ValueError(
                f"render_raw: message {position} is {message['role']!r}, expected {expected!r} "
                f"(roles: {_roles(messages)})"
            )
    replies = [m["content"] for m in turns[1::2]] + [""]
    text = "\n\n".join(f"User: {user['content']} \n\nAssistant: {reply}" for user, reply in zip(turns[::2], replies))
    return text if system is None else f"{system}\n\n{text}"


def _roles(messages: list[dict[str, str]]) -> str:
    return "[" + ", ".join(m["role"] for m in messages) + "]"
