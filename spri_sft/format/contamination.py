"""Keep benchmark documents out of SFT data: the overlap rule, and the index that finds it fast.

The rule, for a row's text (its prompt; with `contamination_responses`, its response too) and one
benchmark document, both normalized by `dedupe.normalize` (NFKC, lowercase, every run of
punctuation or whitespace one space):

- coverage: the fraction of the document's words that lie inside a word n-gram (n =
  `contamination_ngram`, 13 by default) found in the text too. The row is contaminated when it is
  at least `contamination_threshold` (0.5) for some document. This is open-instruct's n-gram match
  score (decontamination/search.py: the test instance's tokens covered by n-grams it shares with
  one training document, over its length); 13 words is the n-gram GPT-3 filtered its training
  data with (Brown et al. 2020, App. C) and lm-evaluation-harness's own decontamination uses
  (lm_eval/decontamination). A copied document is covered whole; one quoted in part is
  covered as far as the quote goes; texts that only share common phrases shorter than n words
  share no n-gram at all.
- a document of fewer than n words (614 of TruthfulQA's 817 questions) has no n-gram: it is
  covered when the text holds all of it, word for word ("Answer briefly: <question>"), and one of
  fewer than `WHOLE_TEXT_WORDS` words ("Can pigs fly?", "Who are you?") only when it is the whole
  text, since so short a phrase is found in many prompts that never saw the benchmark.

A row is reported with the document it covers most (the first such document on a tie), the
coverage, and the longest run of the document's words it shares. Candidates are found through a
hash index of every document's n-grams (and of the first words of the short ones), then confirmed
on the words themselves, so a hash collision can never drop a row.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterable

import numpy as np

from spri_sft.errors import UserError
from spri_sft.format.dedupe import normalize

WHOLE_TEXT_WORDS = 6  # a shorter document matches only a text that is the whole document
_KEY_WORDS = 3  # short documents are indexed by their first words, this many (at most)
_POSITIONS = 1 << 24  # postings pack (document number, position) into one int


@dataclasses.dataclass(frozen=True)
class Document:
    """One benchmark document: `benchmark` is what the counts are kept per (TruthfulQA, or an lm-eval task as the
    run names it, a group for all its subtasks); `task` and `split` where lm-eval read it, `doc_id` its place there."""

    benchmark: str
    task: str
    split: str
    doc_id: int | str
    text: str


@dataclasses.dataclass(frozen=True)
class Match:
    document: Document
    field: str  # the row's text that covers it: "prompt" or "response"
    coverage: float
    shared: str  # the longest run of the document's (normalized) words the text holds

    def entry(self) -> dict:
        """The fields of this match in a dropped.jsonl line."""
        doc = self.document
        return {
            "benchmark": doc.benchmark,
            "task": doc.task,
            "split": doc.split,
            "doc_id": doc.doc_id,
            "document": excerpt(doc.text),
            "field": self.field,
            "coverage": round(self.coverage, 3),
            "shared": excerpt(self.shared),
        }

    def detail(self) -> str:
        doc = self.document
        where = doc.benchmark if doc.task == doc.benchmark else f"{doc.benchmark}/{doc.task}"
        return (
            f"{where} {doc.split} doc {doc.doc_id}: the {self.field} covers {self.coverage:.0%} of it "
            f"({excerpt(doc.text, 120)!r})"
        )


def excerpt(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class BenchmarkGuard:
    """The documents of every benchmark, indexed to find the one a text covers most (the module's rule)."""

    def __init__(self, documents: Iterable[Document], ngram: int, threshold: float):
        if ngram < 1:
            raise UserError(f"contamination_ngram must be >= 1, got {ngram}")
        if not 0 < threshold <= 1:
            raise UserError(f"contamination_threshold must be in (0, 1], got {threshold}")
        self.ngram, self.threshold = ngram, threshold
        self.documents: list[Document] = []
        self.lengths: list[int] = []  # per document: its normalized words
        self.counts: Counter[str] = Counter()  # per benchmark: documents indexed
        hashes = array("q")  # of every document's n-grams, and beside each its packed (document, position)
        packed = array("q")
        self.short: dict[int, list[int]] = defaultdict(list)  # first-words hash of a short document -> documents
        self.whole: dict[str, int] = {}  # normalized text of a very short document -> the first such document
        self.empty: Counter[str] = Counter()  # per benchmark: documents with no words, which nothing can cover
        for document in documents:
            self._add(document, hashes, packed)
        # Two sorted numpy arrays rather than a dict: 16 bytes per n-gram instead of ~200 (a dict entry and its list).
        keys = np.frombuffer(hashes, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        self.keys, self.postings = keys[order], np.frombuffer(packed, dtype=np.int64)[order]

    def _add(self, document: Document, hashes: array, packed: array) -> None:
        words = normalize(document.text).split()
        if not words:
            self.empty[document.benchmark] += 1
            return
        number = len(self.documents)
        if len(words) >= _POSITIONS:
            raise UserError(f"{document.benchmark} doc {document.doc_id}: over {_POSITIONS} words, too long to index")
        self.documents.append(document)
        self.lengths.append(len(words))
        self.counts[document.benchmark] += 1
        n = self.ngram
        if len(words) >= n:
            for position in range(len(words) - n + 1):
                hashes.append(hash(tuple(words[position : position + n])))
                packed.append(number * _POSITIONS + position)
        elif len(words) >= WHOLE_TEXT_WORDS:
            self.short[hash(tuple(words[:_KEY_WORDS]))].append(number)
        else:
            self.whole.setdefault(" ".join(words), number)

    def match(self, text: str | None, field: str = "prompt") -> Match | None:
        """The document `text` covers most, when that coverage reaches the threshold; else None."""
        return self.match_all([text], field)[0]

    def match_all(self, texts: list[str | None], field: str = "prompt") -> list[Match | None]:
        """`match` of every text, the n-grams of a batch of texts looked up at once (one sorted search of the
        documents' n-gram hashes per batch rather than one per text)."""
        matches: list[Match | None] = []
        for start in range(0, len(texts), self.BATCH):
            batch = [normalize(text).split() if text else [] for text in texts[start : start + self.BATCH]]
            postings = self._postings(batch)
            matches += [self._best(words, postings[i], field) for i, words in enumerate(batch)]
        return matches

    BATCH = 1024

    def _postings(self, batch: list[list[str]]) -> list[list[int]]:
        """Per text, the packed (document, position) of every document n-gram whose hash one of its n-grams has."""
        n = self.ngram
        grams, owners = [], []
        for i, words in enumerate(batch):
            for start in range(len(words) - n + 1):
                grams.append(hash(tuple(words[start : start + n])))
                owners.append(i)
        found: list[list[int]] = [[] for _ in batch]
        if not grams or not len(self.keys):
            return found
        grams = np.array(grams, dtype=np.int64)
        order = np.argsort(grams)  # sorted needles search ~6x faster: they walk the keys in order, cache-friendly
        first = np.empty_like(order)
        first[order] = np.searchsorted(self.keys, grams[order])
        hit = first < len(self.keys)
        hit[hit] = self.keys[first[hit]] == grams[hit]
        for index in np.flatnonzero(hit).tolist():
            position = int(first[index])
            while position < len(self.keys) and self.keys[position] == grams[index]:  # every document holding it
                found[owners[index]].append(int(self.postings[position]))
                position += 1
        return found

    def _best(self, words: list[str], postings: list[int], field: str) -> Match | None:
        n = self.ngram
        found: dict[int, float] = {}  # document -> coverage
        exact = self.whole.get(" ".join(words))
        if exact is not None:
            found[exact] = 1.0
        if self.short:
            for start in range(len(words) - _KEY_WORDS + 1):
                for number in self.short.get(hash(tuple(words[start : start + _KEY_WORDS])), ()):
                    found.setdefault(number, 1.0)
        covered: dict[int, set[int]] = defaultdict(set)
        for value in postings:
            number, position = divmod(value, _POSITIONS)
            covered[number].update(range(position, position + n))
        for number, positions in covered.items():
            found[number] = len(positions) / self.lengths[number]
        best = None
        for number in sorted(found, key=lambda number: (-found[number], number)):
            if found[number] < self.threshold:
                break
            confirmed = self._confirm(number, words, field)  # on the words: hashes only propose candidates
            if confirmed is not None and (best is None or confirmed.coverage > best.coverage):
                best = confirmed
            if best is not None and best.coverage >= found[number]:
                break
        return best

    def _confirm(self, number: int, words: list[str], field: str) -> Match | None:
        document = self.documents[number]
        doc_words = normalize(document.text).split()
        n = self.ngram
        if len(doc_words) < n:
            found = (
                words == doc_words
                if len(doc_words) < WHOLE_TEXT_WORDS
                else any(words[i : i + len(doc_words)] == doc_words for i in range(len(words) - len(doc_words) + 1))
            )
            return Match(document, field, 1.0, " ".join(doc_words)) if found else None
        grams = {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
        inside = [False] * len(doc_words)
        for position in range(len(doc_words) - n + 1):
            if tuple(doc_words[position : position + n]) in grams:
                inside[position : position + n] = [True] * n
        coverage = sum(inside) / len(doc_words)
        if coverage < self.threshold:
            return None
        return Match(document, field, coverage, " ".join(_longest_run(doc_words, inside)))


def _longest_run(words: list[str], inside: list[bool]) -> list[str]:
    """The longest run of `words` whose `inside` flags are set (the first of the longest)."""
    best_start, best_length, start = 0, 0, None
    for i, flag in enumerate([*inside, False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            if i - start > best_length:
                best_start, best_length = start, i - start
            start = None
    return words[best_start : best_start + best_length]
