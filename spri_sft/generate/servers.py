"""Roles with `backend: vllm`: start their vLLM servers, and talk to them as OpenAI-compatible ones.

A role that says `backend: vllm` names the model it wants (`model`, the name that also enters
record ids) and how to serve it (`vllm:`, a `spri_sft.serve.VLLMServer`: tensor_parallel_size,
devices, replicas, ...). `ServedModels` starts the servers a generation needs, at its first
request for them, and turns each such role into an `openai` role on the started server's URLs,
so concurrency, replicas, retries and pacing are those of the OpenAI-compatible backend. The
served name is the role's `model`, so a record made through a managed server has the id it would
have through any other server of that model.

Roles naming the same server config (base and critic on one model) share one server. Servers
stay up until `close()`: `spri-sft run` keeps them across its modes' generations and stops them
before training needs the GPUs; `spri-sft generate` alone stops them when it ends. Stopping is
also guaranteed on Ctrl-C, SIGTERM, errors and a killed parent (see `spri_sft.serve.vllm`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from spri_sft.llm.base import EndpointConfig
from spri_sft.serve import ManagedServers, VLLMServer


class ServedModels:
    """The vLLM servers of `backend: vllm` roles, started on first need, one per distinct config."""

    def __init__(self, log_dir: str | Path):
        self.log_dir = Path(log_dir)
        self._running: list[tuple[VLLMServer, ManagedServers, list[str]]] = []

    def endpoints(self, *roles: EndpointConfig, prompts_in_flight: int | None = None) -> list[EndpointConfig]:
        """Each role as it is, or, for a `vllm` role, as an `openai` role on its (started) server.

        A server's processes each get at most `max_concurrency` requests at once (the largest of the roles
        it serves: they share one connection pool), and never more than the `prompts_in_flight` (generate's
        max_concurrent_prompts: a prompt waits on one call at a time); that sizes a CPU server's KV cache."""
        vllm_roles = [role for role in roles if role.backend == "vllm"]
        wanted = [server_for(role) for role in vllm_roles]
        missing = [s for i, s in enumerate(wanted) if s not in wanted[:i] and self._urls(s) is None]
        if missing:
            in_flight = []
            for server in missing:
                concurrency = max(role.max_concurrency for role, w in zip(vllm_roles, wanted) if w == server)
                in_flight.append(concurrency if prompts_in_flight is None else min(concurrency, prompts_in_flight))
            servers = ManagedServers(missing, log_dir=self.log_dir, requests_in_flight=in_flight).start()
            self._running += [(s, servers, servers.base_urls[i]) for i, s in enumerate(missing)]
        return [self._as_openai(role) if role.backend == "vllm" else role for role in roles]

    @property
    def pids(self) -> list[int]:
        """The process groups of the started servers (one per replica)."""
        return [pid for servers in {id(m): m for _, m, _ in self._running}.values() for pid in servers.pids]

    def check_alive(self) -> None:
        """Raise `UserError` when a started server has died (its log's last lines quoted)."""
        for servers in {id(m): m for _, m, _ in self._running}.values():
            servers.check_alive()

    def close(self) -> None:
        for servers in {id(m): m for _, m, _ in self._running}.values():
            servers.stop()
        self._running.clear()

    def __enter__(self) -> ServedModels:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _urls(self, server: VLLMServer) -> list[str] | None:
        return next((urls for running, _, urls in self._running if running == server), None)

    def _as_openai(self, role: EndpointConfig) -> EndpointConfig:
        server = server_for(role)
        return dataclasses.replace(
            role,
            backend="openai",
            base_url=self._urls(server),
            api_key_env=server.api_key_env or role.api_key_env,
        )


def server_for(role: EndpointConfig) -> VLLMServer:
    """The server a `vllm` role asks for: its `vllm:` settings, serving `model` under that name.

    `vllm.model` may point at a local copy of the weights (a directory); left empty, the role's
    model is resolved like the in-process backend resolves it (a local directory, the Hub id, or the
    embedded default converted once into the cache)."""
    settings = role.vllm
    model = settings.model
    if not model:
        from spri_sft.models import resolve_model

        model = str(resolve_model(role.model))
    return dataclasses.replace(settings, model=model, served_model_name=settings.served_model_name or role.model)
