"""The critic's reply format, "Feedback: ... [RESULT] n" (n in 1-5), as the backends enforce and read it.

A role with `score: constrained` or `score: expected` (`EndpointConfig.score`) has its critiques
written in this format by construction, so no reply is left without a score:

* the feedback: generated after the forced prefix "Feedback: " up to the first "[" (the openai
  backend sends `CRITIC_REGEX` as the server's structured output; the transformers backend
  prefills "Feedback: " and cuts the reply at its first "[");
* the score: the digit after "[RESULT] ". `constrained` takes the digit the server sampled under
  the regex (openai) or the likeliest of the five (transformers); `expected` also reads the
  probability of each digit at that position, renormalised over the five digits (openai: the
  `top_logprobs` of a continuation of the text ending "[RESULT] "; transformers: the softmax of the
  five digits' logits at temperature 1), and the loop accepts when their mean >= threshold.

This module is plain text and arithmetic: both backends and the fake server share it.
"""

from __future__ import annotations

import math
import re

FEEDBACK_PREFIX = "Feedback: "
RESULT_MARKER = "[RESULT]"
DIGITS = (1, 2, 3, 4, 5)

# The whole reply: feedback without "[" (so the first "[" starts the marker), then the marker and one digit.
CRITIC_REGEX = r"Feedback: [^\[]*\[RESULT\] [1-5]"
# The continuation of a text that ends "[RESULT] ": one digit.
DIGIT_REGEX = r"[1-5]"

_SCORED = re.compile(r"\[RESULT\] ([1-5])\s*\Z")


def scored_digit(text: str) -> int | None:
    """The digit of a reply in the critic format ("... [RESULT] n" at its end), or None."""
    match = _SCORED.search(text)
    return int(match.group(1)) if match else None


def score_prefix(text: str) -> str:
    """The reply up to and including "[RESULT] ": what the digit is read after. A reply that was cut
    before its marker (max_new_tokens) gets the marker appended to what it has."""
    head = text.split("[", 1)[0].rstrip()
    return f"{head} {RESULT_MARKER} "


def digit_distribution(token_logprobs: dict[str, float]) -> dict[int, float] | None:
    """The probability of each digit 1-5 from one position's top log-probabilities ({token: logprob}),
    renormalised over the digits found; a token counts as digit d when it is d with optional
    whitespace (" 4" and "4" both count, summed). None when no digit is among them."""
    mass: dict[int, float] = {}
    for token, logprob in token_logprobs.items():
        text = token.strip()
        if len(text) == 1 and text.isdigit() and int(text) in DIGITS and logprob is not None:
            mass[int(text)] = mass.get(int(text), 0.0) + math.exp(logprob)
    total = sum(mass.values())
    if not total:
        return None
    return {digit: mass.get(digit, 0.0) / total for digit in DIGITS}


def softmax_distribution(logits: list[float]) -> dict[int, float]:
    """The five digits' logits (or log-probabilities) as a distribution over 1-5."""
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    total = sum(weights)
    return {digit: w / total for digit, w in zip(DIGITS, weights)}


def likeliest(distribution: dict[int, float]) -> int:
    """The most probable digit (the lower one on a tie)."""
    return max(DIGITS, key=lambda d: (distribution.get(d, 0.0), -d))


def mean_score(distribution: dict[int, float]) -> float:
    """The expected score: sum of digit x probability."""
    return sum(digit * p for digit, p in distribution.items())
