"""Prompt normalization, and exact and near duplicate prompts.

* `normalize`: Unicode NFKC, lowercase, every run of punctuation or whitespace becomes one space
  (so "Well-known?" and "well known" are equal), stripped.
* Exact duplicates: equal normalized prompts.
* Near duplicates: the Jaccard similarity of two prompts' sets of word 3-gram shingles (of the
  normalized text) is >= the threshold. A prompt of fewer than 3 words is one shingle. 3-grams
  rather than the 5-grams used for web documents because prompts are short: a 12-word prompt
  has only 8 five-gram shingles, so one changed word would already cost half of them.

Near duplicates are found exactly, without comparing every pair, by prefix filtering (Chaudhuri
et al., 2006; Bayardo et al., 2007): with every set's shingles in one global order, rarest first,
two sets of Jaccard similarity >= t share their rarest common shingle within the first
`|s| - ceil(t * |s|) + 1` shingles of the larger set and the first `|s| - ceil(2t / (1 + t) * |s|) + 1`
of the smaller. Only kept prompts' prefixes are indexed, a shingle no other prompt has never is, and
the positional filter (Xiao et al., 2008) drops a candidate whose shingles after the first shared
one cannot reach the threshold; the candidates left are compared in full. Shingles are integers in
numpy arrays (`ShingleRanks`), so the pass is a few sorts plus those comparisons.

Exact rather than MinHash LSH (`datasketch`), by measurement (`scripts/bench_format.py`,
docs/benchmarks.md): on templated prompts, LSH's bands fill with prompts of one template (Jaccard
0.6-0.85: under the threshold, yet likely to share a band), so it confirmed more candidates, and
took longer, than this pass, which besides misses no pair at the threshold. Its costly case is
prompts of one short template whose slots take few values, where even the rarest shingles are
shared by many prompts (the benchmark's `slots` family).
"""

from __future__ import annotations

import re
import unicodedata
from array import array
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

SHINGLE_WORDS = 3
KEY_LIMIT = 2**63 - 1  # shingle keys are int64
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


def near_duplicates(texts: list[str], threshold: float, also: list[str] | None = None) -> dict[int, tuple[int, float]]:
    """{index of a near duplicate: (index of the earlier kept text it matches best, Jaccard similarity)}.

    Texts are taken in order; a text matching no earlier kept text is kept, so of a group of near
    duplicates the first one stays. Of several kept texts it matches, the most similar is named (the
    earliest of equals). With `also` (a second text per index, e.g. the whole prompt beside its
    instruction), a match must reach the threshold in both, and its similarity is the lower of the two.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if not texts:
        return {}
    shingles = ShingleRanks.of(texts)
    sizes = shingles.sizes.tolist()
    # Of two texts of Jaccard >= t, the smaller shares >= 2t / (1 + t) of its shingles, the larger >= t of
    # its own, so their rarest shared shingle is within the smaller's short prefix and the larger's long
    # one. 1e-9: 0.28 * 25 is 7.000000000000001 in floating point, and ceil() of that is 8.
    longs = (shingles.sizes - np.ceil(threshold * shingles.sizes - 1e-9).astype(np.int64) + 1).tolist()
    short_share = 2 * threshold / (1 + threshold)
    shorts = (shingles.sizes - np.ceil(short_share * shingles.sizes - 1e-9).astype(np.int64) + 1).tolist()
    unique = shingles.unique_counts.tolist()
    starts = shingles.offsets.tolist()
    ranks = shingles.ranks

    # A shared shingle's rank -> (kept text, the shingle's position in it), for the kept texts' long
    # prefixes (looked up with a text's short prefix: kept texts at least its size) and short ones
    # (looked up with its long prefix: kept texts at most its size).
    long_index: dict[int, list[tuple[int, int]]] = {}
    short_index: dict[int, list[tuple[int, int]]] = {}
    sets: dict[int, set[int]] = {}  # the kept texts compared so far, as sets of shingle ranks
    share = threshold / (1 + threshold)  # Jaccard >= t  <=>  shared >= t / (1 + t) * (|a| + |b|)
    found: dict[int, tuple[int, float]] = {}
    also_sets: dict[int, set[tuple[str, ...]]] = {}

    def also_similarity(i: int, j: int) -> float:
        # Only for pairs already near duplicates in `texts`: few, so plain sets of word shingles do.
        for k in (i, j):
            if k not in also_sets:
                also_sets[k] = word_ngrams(normalize(also[k]).split(), SHINGLE_WORDS)
        mine, theirs = also_sets[i], also_sets[j]
        shared = len(mine & theirs)
        return shared / (len(mine) + len(theirs) - shared)

    for i in np.flatnonzero(shingles.unique_counts < longs).tolist():
        # A shingle no other text has can neither find a candidate nor be found: the prefix's
        # shared shingles follow its unique ones (rarest first), and only they are looked up.
        start, size, first = starts[i], sizes[i], unique[i]
        long_prefix = ranks[start + first : start + longs[i]].tolist()
        short_prefix = long_prefix[: max(shorts[i] - first, 0)]
        candidates = set()
        for prefix, index, larger in ((short_prefix, long_index, True), (long_prefix, short_index, False)):
            for position, rank in enumerate(prefix, first):
                kept = index.get(rank)
                if kept is None:
                    continue
                left = size - position
                for j, theirs_at in kept:
                    theirs = sizes[j]
                    if (theirs < size) if larger else (theirs > size):
                        continue  # the other lookup finds it, if anything does
                    # Positional filter (Xiao et al., 2008): at the rarest shingle two texts share, they
                    # share at most the shorter of what follows it, itself included. A later shared
                    # shingle gives a smaller bound, so one that fails here never passes there.
                    theirs_left = theirs - theirs_at
                    if (left if left < theirs_left else theirs_left) >= share * (size + theirs) - 1e-9:
                        candidates.add(j)
        best = None
        if candidates:
            mine = set(ranks[start : start + size].tolist())
            for j in sorted(candidates):
                theirs = sets.get(j)
                if theirs is None:
                    theirs = sets[j] = set(ranks[starts[j] : starts[j] + sizes[j]].tolist())
                shared = len(mine & theirs)
                similarity = shared / (size + sizes[j] - shared)
                if similarity >= threshold and also is not None:
                    similarity = min(similarity, also_similarity(i, j))
                if similarity >= threshold and (best is None or similarity > best[1]):
                    best = (j, similarity)
        if best is None:
            for position, rank in enumerate(long_prefix, first):
                long_index.setdefault(rank, []).append((i, position))
            for position, rank in enumerate(short_prefix, first):
                short_index.setdefault(rank, []).append((i, position))
        else:
            found[i] = best
    return found


@dataclass
class ShingleRanks:
    """Every text's distinct shingles as integer ranks in one global order, rarest first (by how many
    texts have the shingle, then by first appearance): text i's ranks are
    `ranks[offsets[i] : offsets[i] + sizes[i]]`, ascending, and the first `unique_counts[i]` of them
    are shingles no other text has. Integers in numpy arrays rather than sets of word tuples: a
    tuple per shingle and a sort of every distinct shingle by a Python key were what made 50,000
    prompts take minutes and a gigabyte."""

    ranks: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    unique_counts: np.ndarray

    @classmethod
    def of(cls, texts: list[str]) -> ShingleRanks:
        word_ids: defaultdict[str, int] = defaultdict()
        word_ids.default_factory = word_ids.__len__  # a new word gets the next id
        words = array("q")
        lengths = array("q")
        for text in texts:
            found = [word_ids[word] for word in normalize(text).split()]
            words.extend(found)
            lengths.append(len(found))
        count = len(lengths)
        lengths = np.frombuffer(lengths, dtype=np.int64) if count else np.zeros(0, np.int64)
        words = np.frombuffer(words, dtype=np.int64) if len(words) else np.zeros(0, np.int64)

        # Each text's words followed by SHINGLE_WORDS padding ids (one no word has), so that a text of
        # fewer words than a shingle is one shingle of all its words, as `word_ngrams` makes it.
        pad = len(word_ids)
        base = pad + 1
        text_of_word = np.repeat(np.arange(count), lengths)
        padded = np.full(len(words) + SHINGLE_WORDS * count, pad, dtype=np.int64)
        padded[np.arange(len(words)) + SHINGLE_WORDS * text_of_word] = words
        padded_starts = np.concatenate(([0], np.cumsum(lengths + SHINGLE_WORDS)[:-1])).astype(np.int64)
        per_text = np.maximum(lengths - SHINGLE_WORDS + 1, 1)
        owner = np.repeat(np.arange(count), per_text)
        first = np.concatenate(([0], np.cumsum(per_text)[:-1])).astype(np.int64)
        positions = np.repeat(padded_starts, per_text) + np.arange(len(owner)) - np.repeat(first, per_text)
        del text_of_word, words, first

        # A shingle's key: its word ids in base `base`, exact (no hashing) while that fits in 63 bits;
        # beyond, the leading words' key is replaced by its rank among the distinct ones first.
        key = padded[positions]
        for offset in range(1, SHINGLE_WORDS):
            if key.size and int(key.max()) >= KEY_LIMIT // base - 1:
                key = np.unique(key, return_inverse=True)[1].astype(np.int64)
            key = key * base + padded[positions + offset]
        del padded, positions
        distinct, shingle = np.unique(key, return_inverse=True)
        del key
        kinds = len(distinct)
        pairs = np.sort(owner * kinds + shingle.reshape(-1))
        pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]  # each text's distinct shingles
        del owner, shingle
        owner, shingle = np.divmod(pairs, kinds)
        texts_with = np.bincount(shingle, minlength=kinds)
        rank = np.empty(kinds, dtype=np.int64)
        rank[np.lexsort((np.arange(kinds), texts_with))] = np.arange(kinds)
        shared_from = int(np.count_nonzero(texts_with == 1))  # ranks below this: shingles of one text
        ranks = np.sort(owner * kinds + rank[shingle]) % kinds
        sizes = np.bincount(owner, minlength=count)
        unique_counts = np.bincount(owner[ranks < shared_from], minlength=count)
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        return cls(ranks, offsets, sizes, unique_counts)
