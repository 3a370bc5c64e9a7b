"""Builds the base and critic backends from their settings, sharing what two roles can share.

The implementations are imported only when a role needs them: a transformers-only run never
imports the HTTP client, an HTTP-only run never imports torch.
"""

from __future__ import annotations

from spri_sft.errors import UserError
from spri_sft.llm.base import ChatBackend, EndpointConfig


def build_backends(base: EndpointConfig, critic: EndpointConfig) -> tuple[ChatBackend, ChatBackend]:
    """Build the base and critic backends. Roles on the same local model load it once; roles on the
    same server URLs share one connection pool, so `max_concurrency` bounds each server, not each role.
    A shared backend keeps each role's own decoding settings and prompt_format (`with_sampling`)."""
    base_backend = _build(base)
    if _same_resource(base, critic):
        return base_backend, base_backend.with_sampling(critic)
    return base_backend, _build(critic)


def build_backend(config: EndpointConfig) -> ChatBackend:
    """One role's backend on its own (GRPO's critic: the model being trained is not a backend); `transformers`
    loads its own copy of the model, which nothing but this backend ever holds."""
    return _build(config)


def _same_resource(a: EndpointConfig, b: EndpointConfig) -> bool:
    if a.backend != b.backend:
        return False
    if a.backend == "openai":
        return sorted(a.base_url) == sorted(b.base_url) and a.api_key_env == b.api_key_env
    return (a.model, a.device, a.dtype, a.trust_remote_code) == (b.model, b.device, b.dtype, b.trust_remote_code)


def _build(config: EndpointConfig) -> ChatBackend:
    if config.backend == "vllm":  # `spri_sft.generate.servers` turns it into an openai role once its server runs
        raise UserError(
            f"backend vllm ({config.model}): start its server first (spri_sft.generate.servers.ServedModels)"
        )
    if config.backend == "openai":
        from spri_sft.llm.openai_http import OpenAIChat

        return OpenAIChat(config)
    from spri_sft.llm.transformers_local import TransformersChat

    return TransformersChat(config)
