"""The backend interface, its per-role settings, and the factory that builds backends.

A backend turns a list of chat messages into one `Completion`. Both implementations are
asynchronous so that many prompts can be in flight at once: the HTTP backend keeps many
requests open, the transformers backend gathers concurrent requests into batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from spri_sft.models import DEFAULT_MODEL


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    # "stop" when the model ended its turn, "length" when max_new_tokens cut it off.
    finish_reason: str


class ChatBackend(Protocol):
    model: str

    async def start(self) -> None:
        """Load the model or check that the servers answer; raise UserError if they do not."""

    async def chat(self, messages: list[dict[str, str]]) -> Completion: ...

    async def close(self) -> None: ...


@dataclass
class EndpointConfig:
    """One model role (base or critic): which model, served how, decoded how."""

    backend: Literal["transformers", "openai"] = field(
        default="transformers",
        metadata={"help": "'transformers' runs the model in this process; 'openai' calls an OpenAI-compatible server."},
    )
    model: str = field(
        default=DEFAULT_MODEL,
        metadata={"help": "Hub id or local path (transformers), or the served model name (openai)."},
    )
    base_url: list[str] = field(
        default_factory=list,
        metadata={"help": "openai: server URL(s) ending in /v1; several URLs are replicas of one model, spread by load."},
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "openai: environment variable holding the API key (the key is never written anywhere)."},
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature; 0 decodes greedily."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass."})
    top_k: int | None = field(
        default=50,
        metadata={"help": "Top-k sampling; sent as an extra body field to servers (vLLM/TGI accept it; set null for api.openai.com)."},
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Length cap of every reply."})
    max_concurrency: int = field(
        default=32,
        metadata={"help": "openai: requests in flight per server URL; transformers: largest generate() batch."},
    )
    timeout: float = field(default=120.0, metadata={"help": "openai: seconds before one request times out (then retried)."})
    max_retries: int = field(
        default=6, metadata={"help": "openai: retries on 429/5xx/timeouts/connection errors/malformed replies."}
    )
    requests_per_minute: float | None = field(default=None, metadata={"help": "openai: pace requests to this rate."})
    tokens_per_minute: float | None = field(
        default=None, metadata={"help": "openai: pace by estimated prompt + max_new_tokens to this rate."}
    )
    batch_wait_ms: float = field(
        default=20.0, metadata={"help": "transformers: how long a batch waits for more concurrent requests."}
    )
    device: str = field(default="auto", metadata={"help": "transformers: 'auto', 'cpu', 'cuda', 'cuda:1', ..."})
    dtype: str = field(default="auto", metadata={"help": "transformers: 'auto', 'float32', 'bfloat16', 'float16'."})
    trust_remote_code: bool = field(default=False, metadata={"help": "transformers: run code shipped with the model."})

    def decoding(self) -> dict:
        """The settings that change what the model writes (they enter every record id)."""
        return {
            "model": self.model,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_new_tokens": self.max_new_tokens,
        }


def build_backends(base: EndpointConfig, critic: EndpointConfig) -> tuple[ChatBackend, ChatBackend]:
    """Build the base and critic backends. Roles on the same local model load it once; roles on the
    same server URLs share one connection pool, so `max_concurrency` bounds each server, not each role."""
    base_backend = _build(base)
    if _same_resource(base, critic):
        return base_backend, base_backend.with_sampling(critic)
    return base_backend, _build(critic)


def _same_resource(a: EndpointConfig, b: EndpointConfig) -> bool:
    if a.backend != b.backend:
        return False
    if a.backend == "openai":
        return sorted(a.base_url) == sorted(b.base_url) and a.api_key_env == b.api_key_env
    return (a.model, a.device, a.dtype, a.trust_remote_code) == (b.model, b.device, b.dtype, b.trust_remote_code)


def _build(config: EndpointConfig):
    if config.backend == "openai":
        from spri_sft.llm.openai_http import OpenAIChat

        return OpenAIChat(config)
    from spri_sft.llm.transformers_local import TransformersChat

    return TransformersChat(config)
