"""A model run in this process with transformers, shared by concurrent prompts.

Prompts in flight call `chat()` independently; a micro-batcher collects the requests that
arrive within `batch_wait_ms` (up to `max_concurrency`) into one left-padded `generate()` call,
run in a worker thread so the event loop keeps scheduling other prompts meanwhile. The token
prefix a batch's prompts share (a stage's template) is run once and its KV cache copied to each
row (`_shared_prefix_inputs`, full-attention models); replies are those of a left-padded batch.

A role with `prompt_format: chat` has its messages written by the tokenizer's chat template;
one with `prompt_format: raw` has them rendered by `render_raw` and encoded by the tokenizer
alone, which adds a BOS token exactly when the tokenizer's own `encode` does (Mistral and
Llama tokenizers do, Qwen and SmolLM2 do not) - the same rule vLLM applies to a
`/v1/completions` prompt, so a raw prompt reaches the model the same way through either backend.

Critiques of a role with `score: constrained | expected` (`critique()`; the format is in
`spri_sft.llm.critic_format`) are generated after a prefilled "Feedback: " and cut at their first
"["; then the text up to " [RESULT]" is scored with each of " 1" ... " 5" appended, in one forward
pass when the five continuations differ only in their last token (else each continuation's
log-probability is summed over its own tokens). `constrained` writes the likeliest digit;
`expected` also keeps the softmax over the five (temperature 1, as vLLM's logprobs are).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from spri_sft.errors import UserError
from spri_sft.llm.base import Completion, EndpointConfig, render_raw
from spri_sft.llm.critic_format import DIGITS, FEEDBACK_PREFIX, RESULT_MARKER, likeliest, softmax_distribution
from spri_sft.models import attention_window, cache_argument, resolve_model

logger = logging.getLogger(__name__)

# Shorter common prefixes are left in the padded batch: running one costs a forward pass of its own.
SHARED_PREFIX_MIN = 32


@dataclass(frozen=True)
class _Sampling:
    """Everything requests must have in common to share one generate() call."""

    temperature: float
    top_p: float
    top_k: int | None
    max_new_tokens: int
    min_new_tokens: int | None
    prompt_format: str
    # A critique's score mode ("constrained" or "expected"); None for a plain chat request.
    critique: str | None = None

    @classmethod
    def of(cls, config: EndpointConfig) -> _Sampling:
        return cls(
            config.temperature,
            config.top_p,
            config.top_k,
            config.max_new_tokens,
            config.min_new_tokens,
            config.prompt_format,
        )


class TransformersChat:
    def __init__(self, config: EndpointConfig, shared: _LocalModel | None = None):
        self.model = config.model
        self.score_setting = config.score
        self.score_mode = config.score  # the model's own logits can always be read: no fallback
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

    async def critique(self, messages: list[dict[str, str]]) -> Completion:
        """A critique in the critic format, its score set (module docstring)."""
        return await self._local.submit(messages, replace(self._sampling, critique=self.score_mode))

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
        self.shared_prefix_tokens: list[int] = []  # per generate() call that shared one (tests, benchmarks)

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
            texts = [
                tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations
            ]
        if sampling.critique:
            texts = [text + FEEDBACK_PREFIX for text in texts]
        # A chat template already wrote any BOS token, so adding special tokens would double it; a raw
        # prompt gets them exactly as the tokenizer's own encode adds them (module docstring).
        raw = sampling.prompt_format == "raw"
        encoded = [tokenizer(text, add_special_tokens=raw)["input_ids"] for text in texts]
        inputs = self._shared_prefix_inputs(encoded)
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
        if sampling.critique:
            completions = self._score_critiques(texts, completions, sampling)
        return completions

    def _shared_prefix_inputs(self, encoded: list[list[int]]) -> dict:
        """generate()'s inputs for these prompts' token ids, their common prefix run once.

        A stage sends every prompt the same template (the embedded default's principles stage: six
        seed pairs; its 8 built-in prompts share 717 of their ~747 tokens), so a batch's rows share a
        long token prefix. It runs once, its KV cache is copied to every row, and each row's own tail
        follows it after that row's padding: rows read `prefix, pads, tail`, the pads masked out and
        position ids counted over real tokens only (as generate() derives them from the attention
        mask), so every row attends to exactly its own tokens at their own positions, as in a
        left-padded batch (the same replies up to float rounding: the prefix ran at batch size 1).

        Only for models whose every layer keeps a plain full-attention cache: a sliding window counts
        cache slots, pads included, and a recurrent or linear-attention state would read the pads, so
        such a model (and remote code, whose cache handling is its own) gets a left-padded batch, as
        does a batch of one or one sharing under SHARED_PREFIX_MIN tokens.
        """
        import torch
        from transformers import DynamicCache

        device, pad_id = self.model.device, self.tokenizer.pad_token_id
        shared = _common_prefix(encoded)[: min(len(ids) for ids in encoded) - 1]  # every row keeps a token to run
        cache = None
        if len(encoded) > 1 and len(shared) >= SHARED_PREFIX_MIN and not self.config.trust_remote_code:
            if attention_window(self.model.config) is None:  # every layer plain full attention
                cache = DynamicCache(config=self.model.config)
        if cache is None:
            input_ids, attention_mask = _left_padded(encoded, pad_id, device)
            return {"input_ids": input_ids, "attention_mask": attention_mask}
        with torch.inference_mode():  # the decoder alone: nobody reads the prefix's logits
            self.model.base_model(
                input_ids=torch.tensor([shared], device=device), use_cache=True, **{cache_argument(): cache}
            )
        cache.batch_repeat_interleave(len(encoded))
        tails = [ids[len(shared) :] for ids in encoded]
        width = max(len(tail) for tail in tails)
        input_ids = torch.tensor([shared + [pad_id] * (width - len(t)) + t for t in tails], device=device)
        attention_mask = torch.tensor(
            [[1] * len(shared) + [0] * (width - len(t)) + [1] * len(t) for t in tails], device=device
        )
        self.shared_prefix_tokens.append(len(shared))
        return {"input_ids": input_ids, "attention_mask": attention_mask, cache_argument(): cache}

    def _score_critiques(self, texts: list[str], replies: list[Completion], sampling: _Sampling) -> list[Completion]:
        """Each reply (generated after "Feedback: ") cut at its first "[" and given its digit after "[RESULT] "."""
        feedbacks = [reply.text.split("[", 1)[0].strip() for reply in replies]
        prefixes = [f"{text}{feedback} {RESULT_MARKER}" for text, feedback in zip(texts, feedbacks)]
        scored = []
        for reply, feedback, logprobs in zip(replies, feedbacks, self._digit_logprobs(prefixes, sampling)):
            distribution = softmax_distribution(logprobs)
            digit = likeliest(distribution)
            scored.append(
                replace(
                    reply,
                    text=f"{FEEDBACK_PREFIX}{feedback} {RESULT_MARKER} {digit}",
                    completion_tokens=reply.completion_tokens + 1,
                    score=digit,
                    score_distribution=distribution if sampling.critique == "expected" else None,
                )
            )
        return scored

    def _digit_logprobs(self, prefixes: list[str], sampling: _Sampling) -> list[list[float]]:
        """log p(" d" | prefix) for d in 1-5, per prefix (module docstring)."""
        import torch

        tokenizer = self.tokenizer
        special = sampling.prompt_format == "raw"
        results: list[list[float] | None] = [None] * len(prefixes)
        last_token_rows = []  # (row, shared ids, the five last tokens)
        for row, prefix in enumerate(prefixes):
            candidates = [tokenizer(f"{prefix} {digit}", add_special_tokens=special)["input_ids"] for digit in DIGITS]
            shared = _common_prefix(candidates)
            if shared and all(len(ids) == len(shared) + 1 for ids in candidates):
                last_token_rows.append((row, shared, [ids[-1] for ids in candidates]))
            else:
                results[row] = self._sequence_logprobs(candidates, len(shared))
        if last_token_rows:
            rows = [shared for _, shared, _ in last_token_rows]
            input_ids, attention_mask = _left_padded(rows, tokenizer.pad_token_id, self.model.device)
            # Left padding: positions count real tokens only, as generate() computes them.
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
            with torch.inference_mode():
                logits = (
                    self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
                    .logits[:, -1]
                    .float()
                )
            logprobs = torch.log_softmax(logits, dim=-1)
            for index, (row, _, targets) in enumerate(last_token_rows):
                results[row] = logprobs[index, targets].tolist()
        return results

    def _sequence_logprobs(self, candidates: list[list[int]], start: int) -> list[float]:
        """The log-probability of each candidate's tokens from `start` on (continuations that differ
        in more than one token, or when the tokenizer merges the digit into what precedes it)."""
        import torch

        width = max(len(ids) for ids in candidates)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids in candidates], device=self.model.device)
        attention_mask = torch.tensor(
            [[1] * len(ids) + [0] * (width - len(ids)) for ids in candidates], device=self.model.device
        )
        with torch.inference_mode():
            logprobs = torch.log_softmax(
                self.model(input_ids=input_ids, attention_mask=attention_mask).logits.float(), -1
            )
        totals = []
        for row, ids in enumerate(candidates):
            first = max(start, 1)  # the first token of a sequence has no prediction
            totals.append(sum(logprobs[row, i - 1, ids[i]].item() for i in range(first, len(ids))))
        return totals


def _common_prefix(sequences: list[list[int]]) -> list[int]:
    shared = []
    for tokens in zip(*sequences):
        if any(t != tokens[0] for t in tokens):
            break
        shared.append(tokens[0])
    return shared


def _left_padded(rows: list[list[int]], pad_id: int, device):
    import torch

    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return input_ids, attention_mask


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
