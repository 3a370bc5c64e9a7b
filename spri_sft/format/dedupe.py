"""Prompt normalization, and exact and near duplicate prompts.

* `normalize`: Unicode NFKC, lowercase, every run of punctuation or whitespace becomes one space
  (so "Well-known?" and "well known" are equal), stripped.
* Exact duplicates: equal normalized prompts.
* Near duplicates: the Jaccard similarity of two prompts' sets of word 3-gram shingles (of the
  normalized text) is >= the threshold. A prompt of fewer than 3 words is one shingle. 3-grams
  rather than the 5-grams used for web documents because prompts are short: a 12-word prompt
  has only 8 five-gram shingles, so one changed word would already cost half of them.

Near duplicates are found exactly, without comparing every pair, by prefix filtering (Chaudhuri
et al., 2006; Bayardo et al., 2007): with every set's shingles in one global order, two sets of
Jaccard similarity >= t always share a shingle within the first `|s| - ceil(t * |s|) + 1`
shingles of each set `s`. Only kept prompts' prefixes are indexed, and only prompts sharing a
prefix shingle are compared in full; ordering rarest first keeps those candidates few.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter, defaultdict

SHINGLE_WORDS = 3
_NOT_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    return _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def word_ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    """The set of word n-grams; a text shorter than n words is one n-gram of all its words."""
    if len(words) <= n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def exact_duplicates(texts: list[str]) -> dict[int, int]:
    """{index of a duplicate: index of the first text with the same normalized form}."""
    first: dict[str, int] = {}
    found = {}
    for i, text in enumerate(texts):
        key = normalize(text)
        if key in first:
            found[i] = first[key]
        else:
            first[key] = i
    return found


def near_duplicates(texts: list[str], threshold: float) -> dict[int, tuple[int, float]]:
    """{index of a near duplicate: (index of the earlier kept text it matches, Jaccard similarity)}.

    Texts are taken in order; a text matching no earlier kept text is kept, so of a group of near
    duplicates the first one stays.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    shingles = [word_ngrams(normalize(text).split(), SHINGLE_WORDS) for text in texts]
    frequency = Counter(s for text_shingles in shingles for s in text_shingles)
    rank = {s: r for r, s in enumerate(sorted(frequency, key=lambda s: (frequency[s], s)))}

    index: dict[int, list[int]] = defaultdict(list)  # shingle rank -> kept texts with it in their prefix
    found: dict[int, tuple[int, float]] = {}
    for i, mine in enumerate(shingles):
        ranked = sorted(rank[s] for s in mine)
        # 1e-9: 0.28 * 25 is 7.000000000000001 in floating point, and ceil() of that is 8.
        prefix = ranked[: len(ranked) - math.ceil(threshold * len(ranked) - 1e-9) + 1]
        match = _best_match(mine, prefix, index, shingles, threshold)
        if match is None:
            for r in prefix:
                index[r].append(i)
        else:
            found[i] = match
    return found


def _best_match(mine, prefix, index, shingles, threshold) -> tuple[int, float] | None:
    best = None
    seen = set()
    for r in prefix:
        for j in index.get(r, ()):
            if j in seen:
                continue
            seen.add(j)
            theirs = shingles[j]
            shared = len(mine & theirs)
            similarity = shared / (len(mine) + len(theirs) - shared)
            if similarity >= threshold and (best is None or similarity > best[1]):
                best = (j, similarity)
    return best
