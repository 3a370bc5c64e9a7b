"""LLM backends behind one small async interface: `await backend.chat(messages) -> Completion`."""

from spri_sft.llm.base import ChatBackend, Completion, EndpointConfig, render_raw
from spri_sft.llm.factory import build_backend, build_backends

__all__ = ["ChatBackend", "Completion", "EndpointConfig", "build_backend", "build_backends", "render_raw"]
