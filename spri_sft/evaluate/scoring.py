"""Summed log-likelihoods of several continuations of one context, as lm-eval's HFLM computes them.

Tokenization copies `lm_eval.api.model.TemplateLM._encode_pair` and `HFLM.tok_encode`:

* trailing whitespace of the context moves to the front of the continuation;
* the continuation's tokens are `encode(context + continuation)[len(encode(context)):]`, and the
  model reads `encode(context) + continuation_tokens` (so a token merged across the boundary is
  handled exactly as lm-eval handles it);
* `encode` is the tokenizer's own `encode`, with HFLM's `add_bos_token` (lm-eval >= 0.4.9.2, PR #3347):
  None (the default) keeps the tokenizer's default special tokens (a BOS only where the tokenizer
  adds one); False adds none; True adds them and a BOS in front where the tokenizer would not
  (HFLM loads its tokenizer with `add_bos_token=True`, which makes it prepend one). Whatever the
  setting, a text already starting with the BOS string (or EOS where there is no BOS: HFLM's
  `prefix_token_id`) gets no special tokens. lm-eval before 0.4.9.2 had no None: causal models got
  False, Gemma models True, the same as these two settings give (for a text not starting with BOS);
* each token's log-probability is `log_softmax` of the logits in the model's dtype, and a
  choice's score is their float sum.

What differs is only the arithmetic's order. Instead of lm-eval's one full `context + choice`
pass per choice:

* the token prefix that all contexts share (TruthfulQA's six-pair preamble, ~170 tokens) runs
  once per evaluation and its KV cache is reused (`share_prefix`); a context is only continued
  from it when its own tokens start with exactly the shared ids;
* each question is *packed* into one row: its own context tail, then every choice but its last
  token, one after another, each token at the position it has in `context + choice`. A 4D
  attention mask lets a tail token see the prefix and the tail before it, and a choice token see
  the prefix, the whole tail and its own choice before it, never another choice: every scored
  position reads exactly the tokens it reads in lm-eval's pass. No choice is padded, and the
  context runs once per question instead of once per choice;
* several questions (up to `batch_size` choices in all) share a forward pass, sorted by packed
  length so that the left padding between rows stays small; a pad sees only itself and the
  prefix, and nothing sees a pad.

A question is scored lm-eval's way instead, one full pass per choice, when one of its sequences is
longer than the model's maximum length (lm-eval's left truncation) or than the shortest attention
window of its layers (`attention_window`: Gemma-2's sliding layers, Mistral with `sliding_window`).
The packed mask is full causal attention, which a sliding-window layer computes only while no query
is `window` or more positions after a key it reads; a longer question in a packed row would read
keys its sliding layers never see. A model with layers that are no attention at all (linear
attention, recurrent state) has every question scored that way, and shares no prefix.

In float64 this gives lm-eval's numbers to ~1e-11 on TruthfulQA MC2 (masked attention weights are
exactly 0). In float32 the summation order of the CPU kernels depends on tensor shapes, so
per-choice log-likelihoods move by a few 1e-6 relative (about as much as lm-eval's own move when
only its batch size changes) and a per-question MC2 value by up to ~1e-5.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from spri_sft.models import attention_window, cache_argument

_CACHE = cache_argument()


@dataclass
class _Packed:
    """One question as one row: `tail` (context tokens after the shared prefix), then each choice but its last token."""

    index: int
    tail: list[int]
    continuations: list[list[int]]
    prefix: int  # tokens of the shared prefix under the tail (0: the whole context is the tail)

    @property
    def length(self) -> int:
        return len(self.tail) + sum(len(c) - 1 for c in self.continuations)

    @property
    def scored(self) -> int:
        """Positions whose logits are read: the tail's last token and every choice token."""
        return 1 + sum(len(c) - 1 for c in self.continuations)


class ChoiceScorer:
    """Scores continuations of contexts: each context once, its choices packed beside it, several per pass."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        batch_size: int = 32,
        max_length: int | None = None,
        add_bos_token: bool | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.add_bos_token = add_bos_token
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self._prefix_text = tokenizer.decode(prefix_id) if prefix_id is not None else None
        self.max_length = max_length or _model_max_length(model, tokenizer)
        self.window = attention_window(model.config)
        self.scored_alone = 0  # questions scored one pass per choice (too long for max_length or the window)
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self._shared: tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]] | None = None  # ids, per-layer K/V
        self._logits_to_keep = _accepts_logits_to_keep(model)
        self.shared_prefix_hits = 0

    # --- tokenization, as HFLM ---------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        if self._prefix_text and text.startswith(self._prefix_text):
            return self.tokenizer.encode(text, add_special_tokens=False)
        if self.add_bos_token is None:
            return self.tokenizer.encode(text)
        ids = self.tokenizer.encode(text, add_special_tokens=self.add_bos_token)
        bos = self.tokenizer.bos_token_id
        if self.add_bos_token and bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids  # what a tokenizer loaded with add_bos_token=True (as HFLM loads it) writes
        return ids

    def starts_with_bos(self, text: str) -> bool:
        """Whether `text` is encoded with the tokenizer's BOS first (the setting's, or one the text itself holds)."""
        bos = self.tokenizer.bos_token_id
        return bos is not None and self.encode(text)[:1] == [bos]

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
        self._shared = None
        if len(encoded) < 2 or self.window == 0:
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
            return 0
        # A plain cache keeps every prefix token in every layer (a sliding layer's own cache keeps only the last
        # `window` - 1): a question reusing it is one that fits the window, whose every key is in reach.
        cache = DynamicCache()
        ids = torch.tensor([shared], dtype=torch.long, device=self.device)
        self.model(input_ids=ids, use_cache=True, **{_CACHE: cache})
        self._shared = (shared, [(layer.keys, layer.values) for layer in cache.layers])
        return len(shared)

    def score(self, context: str, continuations: list[str]) -> list[float]:
        """Summed log-likelihood of each continuation given `context`."""
        return self.score_many([(context, continuations)])[0]

    @torch.inference_mode()
    def score_many(
        self, items: list[tuple[str, list[str]]], on_scored: Callable[[int], None] | None = None
    ) -> list[list[float]]:
        """For each (context, continuations): the summed log-likelihood of each continuation, in order.

        `on_scored(n)` is called as each group of n items is done (for a progress bar): not in input order.
        """
        results: list[list[float] | None] = [None] * len(items)
        packed: list[_Packed] = []
        for index, (context, continuations) in enumerate(items):
            pairs = [self.encode_pair(context, c) for c in continuations]
            context_enc = pairs[0][0]
            conts = [cont for _, cont in pairs]
            for i, cont in enumerate(conts):
                if not cont:
                    raise ValueError(f"continuation {continuations[i]!r} has no tokens of its own")
            if any(not self._packs(len(context_enc) + len(c) - 1) for c in conts):
                results[index] = [self._score_alone(context_enc, c) for c in conts]
                self.scored_alone += 1
                if on_scored:
                    on_scored(1)
                continue
            shared = self._shared
            if shared and len(context_enc) > len(shared[0]) and context_enc[: len(shared[0])] == shared[0]:
                self.shared_prefix_hits += 1
                packed.append(_Packed(index, context_enc[len(shared[0]) :], conts, len(shared[0])))
            else:
                packed.append(_Packed(index, context_enc, conts, 0))

        # Rows of one pass share their prefix; sorted by length, neighbours pad each other little.
        packed.sort(key=lambda p: (p.prefix, p.length))
        batch: list[_Packed] = []
        choices = 0
        for row in packed:
            if batch and (row.prefix != batch[0].prefix or choices + len(row.continuations) > self.batch_size):
                self._score_rows(batch, results, on_scored)
                batch, choices = [], 0
            batch.append(row)
            choices += len(row.continuations)
        if batch:
            self._score_rows(batch, results, on_scored)
        return results  # type: ignore[return-value]

    def _score_rows(self, rows: list[_Packed], results: list[list[float] | None], on_scored: Any) -> None:
        prefix = rows[0].prefix
        width = max(r.length for r in rows)
        n_rows = len(rows)
        ids = torch.full((n_rows, width), self._pad_id, dtype=torch.long)
        positions = torch.zeros((n_rows, width), dtype=torch.long)
        sees = torch.zeros((n_rows, width, width), dtype=torch.bool)  # query token -> key token, within the rows
        layout = []  # per row: where the tail ends, and where each choice's tokens start
        for r, row in enumerate(rows):
            pad = width - row.length  # left padding: every row's scored tokens end at the same column
            sees[r, range(pad), range(pad)] = True  # a pad sees itself (and the prefix): no empty softmax row
            t = len(row.tail)
            ids[r, pad : pad + t] = torch.tensor(row.tail)
            positions[r, pad : pad + t] = torch.arange(prefix, prefix + t)
            sees[r, pad : pad + t, pad : pad + t] = torch.ones(t, t, dtype=torch.bool).tril()
            start, starts = pad + t, []
            for cont in row.continuations:
                n = len(cont) - 1
                ids[r, start : start + n] = torch.tensor(cont[:-1], dtype=torch.long)
                positions[r, start : start + n] = torch.arange(prefix + t, prefix + t + n)
                sees[r, start : start + n, pad : pad + t] = True
                sees[r, start : start + n, start : start + n] = torch.ones(n, n, dtype=torch.bool).tril()
                starts.append(start)
                start += n
            layout.append((pad + t - 1, starts))
        # An additive float mask, as both the eager and the SDPA attention read it; the prefix is seen by all.
        mask = torch.zeros((n_rows, 1, width, prefix + width), dtype=self.dtype)
        mask[:, 0, :, prefix:].masked_fill_(~sees, torch.finfo(self.dtype).min)
        kwargs: dict[str, Any] = {}
        if prefix:
            cache = DynamicCache()
            for layer, (keys, values) in enumerate(self._shared[1]):  # type: ignore[index]
                rows_keys, rows_values = (t.expand(n_rows, -1, -1, -1).contiguous() for t in (keys, values))
                cache.update(rows_keys, rows_values, layer)
            kwargs[_CACHE] = cache
        keep = max(r.scored for r in rows)
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = keep  # the last `keep` columns hold every scored position of every row
        logits = self.model(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device), position_ids=positions.to(self.device),
            use_cache=prefix > 0, **kwargs,
        ).logits  # fmt: skip
        logprobs = torch.log_softmax(logits[:, -keep:], dim=-1)
        offset = width - keep  # column of logprobs[:, 0]
        for r, (row, (tail_end, starts)) in enumerate(zip(rows, layout)):
            first = logprobs[r, tail_end - offset]  # predicts each continuation's first token
            scores = []
            for cont, start in zip(row.continuations, starts):
                target = torch.tensor(cont, device=self.device)
                rest = (
                    logprobs[r, start - offset : start - offset + len(cont) - 1]
                    .gather(-1, target[1:, None])
                    .squeeze(-1)
                )
                scores.append(float(torch.cat([first[target[:1]], rest]).sum()))
            results[row.index] = scores
        if on_scored:
            on_scored(len(rows))

    def _packs(self, inputs: int) -> bool:
        """Whether a sequence of `inputs` model inputs (context and choice but its last token) scores packed exactly."""
        return inputs <= self.max_length and (self.window is None or inputs <= self.window)

    def _score_alone(self, context_enc: list[int], cont: list[int]) -> float:
        """lm-eval's path: one pass of context + choice, no mask of ours (the model's own causal or sliding-window
        one), the last max_length + 1 tokens kept (left truncation), the last one dropped."""
        inp = (context_enc + cont)[-(self.max_length + 1) :][:-1]
        logits = self.model(input_ids=torch.tensor([inp], device=self.device)).logits[0]
        logprobs = torch.log_softmax(logits[len(inp) - len(cont) :], dim=-1)
        return float(logprobs.gather(-1, torch.tensor(cont, device=self.device)[:, None]).sum())


def _accepts_logits_to_keep(model: Any) -> bool:
    """Whether the (PEFT-wrapped) model's forward can skip the logits of positions nobody reads."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


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
