"""A model run in this process with transformers, shared by concurrent prompts.

Prompts in flight call `chat()` independently; a micro-batcher collects the requests that
arrive within `batch_wait_ms` (up to `max_concurrency`) into one left-padded `generate()` call,
run in a worker thread so the event loop keeps scheduling other prompts meanwhile.

A role with `prompt_format: chat` has its messages written by the tokenizer's chat template;
one with `prompt_format: raw` has them rendered by `render_raw` and encoded by the tokenizer
alone, which adds a BOS token exactly when the tokenizer's own `encode` does (Mistral and
Llama tokenizers do, Qwen and SmolLM2 do not) - the same rule vLLM applies to a
`/v1/completions` prompt, so a raw prompt reaches the model the same way through either backend.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from spri_sft.errors import UserError
from spri_sft.llm.base import Completion, EndpointConfig, render_raw
from spri_sft.models import resolve_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Sampling:
    """Everything requests must have in common to share one generate() call."""

    temperature: float
    top_p: float
    top_k: int | None
    max_new_tokens: int
    min_new_tokens: int | None
    prompt_format: str

    @classmethod
    def of(cls, config: EndpointConfig) -> _Sampling:
        return cls(
            config.temperature, config.top_p, config.top_k, config.max_new_tokens,
            config.min_new_tokens, config.prompt_format,
        )


class TransformersChat:
    def __init__(self, config: EndpointConfig, shared: _LocalModel | None = None):
        self.model = config.model
        self._sampling = _Sampling.of(config)
        self._local = shared or _LocalModel(config)

    def with_sampling(self, config: EndpointConfig) -> TransformersChat:
        """Another role on the same loaded model, with its own decoding settings and prompt_format."""
        return TransformersChat(config, shared=self._local)

    async def start(self) -> None:
        await self._local.start()
        if self._sampling.prompt_format == "chat" and not self._local.tokenizer.chat_template:
            raise UserError(
                f"{self.model}: the tokenizer has no chat template; use an instruct/chat model, "
                "add a template to its tokenizer_config.json, or set prompt_format: raw"
            )

    async def chat(self, messages: list[dict[str, str]]) -> Completion:
        return await self._local.submit(messages, self._sampling)

    async def close(self) -> None:
        await self._local.close()


class _LocalModel:
    def __init__(self, config: EndpointConfig):
        self.config = config
        self.max_batch = max(1, config.max_concurrency)
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._start_lock = asyncio.Lock()
        self.batch_sizes: list[int] = []  # kept for tests and benchmarks

    async def start(self) -> None:
        async with self._start_lock:
            if self._worker is not None:
                return
            self.model, self.tokenizer = await asyncio.to_thread(_load, self.config)
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._serve())

    async def submit(self, messages: list[dict[str, str]], sampling: _Sampling) -> Completion:
        if self._worker is None:
            await self.start()
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((messages, sampling, future))
        return await future

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        wait = self.config.batch_wait_ms / 1000
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + wait
            while len(batch) < self.max_batch:
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), max(0.0, deadline - loop.time())))
                except asyncio.TimeoutError:
                    break
            groups: dict[_Sampling, list] = {}
            for item in batch:
                groups.setdefault(item[1], []).append(item)
            for sampling, items in groups.items():
                live = [item for item in items if not item[2].cancelled()]
                if not live:
                    continue
                self.batch_sizes.append(len(live))
                try:
                    results = await asyncio.to_thread(self._generate, [m for m, _, _ in live], sampling)
                except Exception as err:  # every caller of the batch gets the failure
                    for _, _, future in live:
                        if not future.done():
                            future.set_exception(err)
                    continue
                for (_, _, future), result in zip(live, results):
                    if not future.done():
                        future.set_result(result)

    def _generate(self, conversations: list[list[dict[str, str]]], sampling: _Sampling) -> list[Completion]:
        import torch

        tokenizer = self.tokenizer
        if sampling.prompt_format == "raw":
            texts = [render_raw(c) for c in conversations]
        else:
            texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        # A chat template already wrote any BOS token, so adding special tokens would double it; a raw
        # prompt gets them exactly as the tokenizer's own encode adds them (module docstring).
        raw = sampling.prompt_format == "raw"
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=raw).to(self.model.device)
        eos_ids = _eos_ids(self.model, tokenizer)
        do_sample = sampling.temperature > 0
        kwargs = dict(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=do_sample,
            pad_token_id=tokenizer.pad_token_id,
            # Every id the reply is cut at below also stops generation, and min_new_tokens holds all of them back.
            eos_token_id=sorted(eos_ids) or None,
        )
        if sampling.min_new_tokens is not None:
            kwargs["min_new_tokens"] = sampling.min_new_tokens
        if do_sample:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k or 0)
        with torch.inference_mode():
            output = self.model.generate(**inputs, **kwargs)
        prompt_width = inputs["input_ids"].shape[1]
        completions = []
        for row, mask in zip(output, inputs["attention_mask"]):
            new = row[prompt_width:].tolist()
            stop = next((i for i, t in enumerate(new) if t in eos_ids), None)
            kept = new if stop is None else new[:stop]
            completions.append(
                Completion(
                    text=tokenizer.decode(kept, skip_special_tokens=True).strip(),
                    prompt_tokens=int(mask.sum()),
                    completion_tokens=len(kept) + (stop is not None),
                    finish_reason="stop" if stop is not None else "length",
                )
            )
        return completions


def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _load(config: EndpointConfig):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(config.model)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
    tokenizer.padding_side = "left"  # generation continues from the right edge of every row
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = config.dtype if config.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), trust_remote_code=config.trust_remote_code
    ).to(device)
    model.eval()
    logger.info("loaded %s on %s (%s)", config.model, device, dtype)
    return model, tokenizer
