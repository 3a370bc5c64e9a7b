"""A stand-in for vLLM's OpenAI-compatible server: `FakeOpenAIServer` behind vLLM's command line.

`ManagedServers` tests start it where they would start vLLM, by setting a `VLLMServer`'s command::

    VLLMServer(model="any", served_model_name="m", command=[sys.executable, "-m", "support.fake_vllm_server"])

It takes the arguments `ManagedServers` passes to vLLM (``--model``, ``--host``, ``--port``,
``--served-model-name``, and ignores the rest), answers ``GET /health`` and the chat and
completions routes, and serves until SIGTERM. Its first log line says whether it received an API
key through ``VLLM_API_KEY`` (never the key), so tests can check the key arrived without it being
written anywhere, and the ``VLLM_CPU_KVCACHE_SPACE`` it got (the KV cache a CPU vLLM would take).
"""

from __future__ import annotations

import argparse
import os

from support.fake_openai_server import FakeOpenAIServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m support.fake_vllm_server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per reply")
    args, _ignored_vllm_args = parser.parse_known_args(argv)
    key_received = "yes" if os.environ.get("VLLM_API_KEY") else "no"
    kv_cache_space = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "unset")
    print(
        f"fake vLLM pid {os.getpid()}; api key received: {key_received}; VLLM_CPU_KVCACHE_SPACE: {kv_cache_space}",
        flush=True,
    )
    server = FakeOpenAIServer(
        host=args.host, port=args.port, model=args.served_model_name or args.model, latency=args.latency
    )
    server.serve_forever(on_ready=lambda url: print(f"listening on {url}", flush=True))


if __name__ == "__main__":
    main()
