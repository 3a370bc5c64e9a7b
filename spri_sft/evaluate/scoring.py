"""Summed log-likelihoods of several continuations of one context, as lm-eval's HFLM computes them.

Tokenization copies `lm_eval.api.model.TemplateLM._encode_pair` and `HFLM.tok_encode`:

* trailing whitespace of the context moves to the front of the continuation;
* the continuation's tokens are `encode(context + continuation)[len(encode(context)):]`, and the
  model reads `encode(context) + continuation_tokens` (so a token merged across the boundary is
  handled exactly as lm-eval handles it);
* `encode` is the tokenizer's own `encode` with its default special tokens (a BOS only where the
  tokenizer adds one), except that a text already starting with the BOS string (or EOS where
  there is no BOS: HFLM's `prefix_token_id`) gets no special tokens;
* each token's log-probability is `log_softmax` of the logits in the model's dtype, and a
  choice's score is their float sum.

What differs is only the arithmetic's order. Instead of lm-eval's one full `context + choice`
pass per choice: the token prefix that all contexts share (TruthfulQA's six-pair preamble, ~170
tokens) runs once per evaluation and its KV cache is reused (`share_prefix`); each context's own
tail runs once on a copy of it; then the choices run together in one batch on top of the
context's cache (repeated once per choice). Choices are right-padded; under the causal mask a pad
only sees tokens before it, and no scored position sees a pad. A context is only continued from
the shared cache when its own tokens start with exactly the shared ids. A sequence longer than
the model's maximum length falls back to lm-eval's own left truncation, one choice at a time.

In float64 this gives lm-eval's numbers to ~1e-11 on TruthfulQA MC2. In float32 the summation
order of the CPU kernels depends on tensor shapes, so per-choice log-likelihoods move by a few
1e-5 (about as much as lm-eval's own move when only its batch size changes) and a per-question
MC2 value by up to ~1e-5.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast

# transformers 5 renamed `past_key_values` (input and output) to `cache`; older releases know only the first.
_CACHE = "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


class ChoiceScorer:
    """Scores continuations of a shared context with one context pass and batched choices."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 32, max_length: int | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.device = next(model.parameters()).device
        prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self._prefix_text = tokenizer.decode(prefix_id) if prefix_id is not None else None
        self.max_length = max_length or _model_max_length(model, tokenizer)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self._shared: tuple[list[int], Any] | None = None  # token ids every context starts with, and their KV cache
        self.shared_prefix_hits = 0

    # --- tokenization, as HFLM ---------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        if self._prefix_text and text.startswith(self._prefix_text):
            return self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.encode(text)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if not context:
            raise ValueError("an empty context is not supported")
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        whole = self.encode(context + continuation)
        context_enc = self.encode(context)
        return context_enc, whole[len(context_enc) :]

    # --- scoring -------------------------------------------------------------------------------

    @torch.inference_mode()
    def share_prefix(self, contexts: list[str], min_tokens: int = 16) -> int:
        """Run the longest token prefix common to all `contexts` once and reuse its KV cache for each.

        TruthfulQA's six-pair preamble is ~90% of every prompt. A context only reuses the cache when its
        own tokens start with exactly these ids, so the model always reads the same tokens. Returns the
        prefix length (0: nothing worth sharing).
        """
        encoded = [self.encode(c.rstrip()) for c in contexts]
        if len(encoded) < 2:
            return 0
        shared = encoded[0]
        for ids in encoded[1:]:
            n = 0
            for a, b in zip(shared, ids):
                if a != b:
                    break
                n += 1
            shared = shared[:n]
        shared = shared[:-1]  # keep at least one token of each context for the pass that predicts the answer
        if len(shared) < min_tokens:
            self._shared = None
            return 0
        out = self.model(input_ids=torch.tensor([shared], dtype=torch.long, device=self.device), use_cache=True)
        self._shared = (shared, getattr(out, _CACHE))
        return len(shared)

    def _run_context(self, context_enc: list[int]) -> Any:
        shared = self._shared
        if shared and len(context_enc) > len(shared[0]) and context_enc[: len(shared[0])] == shared[0]:
            self.shared_prefix_hits += 1
            tail = torch.tensor([context_enc[len(shared[0]) :]], dtype=torch.long, device=self.device)
            return self.model(input_ids=tail, use_cache=True, **{_CACHE: copy.deepcopy(shared[1])})
        ids = torch.tensor([context_enc], dtype=torch.long, device=self.device)
        return self.model(input_ids=ids, use_cache=True)

    @torch.inference_mode()
    def score(self, context: str, continuations: list[str]) -> list[float]:
        """Summed log-likelihood of each continuation given `context`."""
        pairs = [self.encode_pair(context, c) for c in continuations]
        context_enc = pairs[0][0]
        conts = [cont for _, cont in pairs]
        for i, cont in enumerate(conts):
            if not cont:
                raise ValueError(f"continuation {continuations[i]!r} has no tokens of its own")
        if any(len(context_enc) + len(c) > self.max_length + 1 for c in conts):
            return [self._score_truncated(context_enc, c) for c in conts]

        out = self._run_context(context_enc)
        first = torch.log_softmax(out.logits[0, -1], dim=-1)  # predicts each continuation's first token
        cache = getattr(out, _CACHE)

        scores: list[float | None] = [None] * len(conts)
        longer = [i for i, c in enumerate(conts) if len(c) > 1]
        for i, c in enumerate(conts):
            if len(c) == 1:
                scores[i] = float(first[c[0]].reshape(1).sum())
        longer.sort(key=lambda i: -len(conts[i]))
        for start in range(0, len(longer), self.batch_size):
            chunk = longer[start : start + self.batch_size]
            width = len(conts[chunk[0]]) - 1
            batch = torch.full((len(chunk), width), self._pad_id, dtype=torch.long, device=self.device)
            for row, i in enumerate(chunk):
                batch[row, : len(conts[i]) - 1] = torch.tensor(conts[i][:-1], device=self.device)
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(chunk))
            logits = self.model(input_ids=batch, use_cache=True, **{_CACHE: past}).logits
            logprobs = torch.log_softmax(logits, dim=-1)
            for row, i in enumerate(chunk):
                cont = torch.tensor(conts[i], device=self.device)
                rest = logprobs[row, : len(cont) - 1].gather(-1, cont[1:, None]).squeeze(-1)
                scores[i] = float(torch.cat([first[cont[:1]], rest]).sum())
        return scores  # type: ignore[return-value]

    def _score_truncated(self, context_enc: list[int], cont: list[int]) -> float:
        """lm-eval's path for a too-long sequence: keep the last max_length + 1 tokens, drop the last."""
        inp = (context_enc + cont)[-(self.max_length + 1) :][:-1]
        logits = self.model(input_ids=torch.tensor([inp], device=self.device)).logits[0]
        logprobs = torch.log_softmax(logits[len(inp) - len(cont) :], dim=-1)
        return float(logprobs.gather(-1, torch.tensor(cont, device=self.device)[:, None]).sum())


def _model_max_length(model: Any, tokenizer: Any) -> int:
    """lm-eval's `resolve_max_length`: the (text) config's length attributes, the tokenizer's, else 2048."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    value = getattr(tokenizer, "model_max_length", None)
    if value is not None and value != 1000000000000000019884624838656:  # transformers' "unset"
        return int(value)
    return 2048
