"""Keep TruthfulQA questions out of SFT data.

The rule: a prompt overlaps a TruthfulQA question when at least `threshold` of the question's
distinct word n-grams (of the normalized text, see `dedupe.normalize`) occur in the prompt.
A question of fewer than n words is one n-gram, so it overlaps a prompt that contains it whole,
word for word. A normalized exact match always overlaps (every n-gram is found), and so does a
prompt that wraps the question in other text ("Answer briefly: <question>"), or keeps most of
it; a prompt that only shares common words or short phrases with a question does not.

Which questions guard, by the one TruthfulQA source rule (`spri_sft.truthfulqa_data`): format's
`truthfulqa_file` when given (the upstream `mc_task.json`, the packaged `mc_task.json.gz`, the
generation task's `TruthfulQA.csv`, whose `Question` column is all the guard reads, or any .json /
.jsonl / .parquet with a `question` field per row, the Hub dataset's layout), else the Hub dataset,
else the packaged copy; `truthfulqa_file: none` turns the guard off.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path

from spri_sft.errors import UserError
from spri_sft.format.dedupe import normalize, word_ngrams
from spri_sft.models import cache_dir
from spri_sft.truthfulqa_data import OFF, TruthfulQASource, choose_source, hub_rows, read_file_rows


def guard_source(truthfulqa_file: str | None) -> TruthfulQASource | None:
    """Format's `truthfulqa_file` by the one rule: the file, else the Hub, else the packaged copy (written to the
    spri-sft cache, never beside the dataset); None when it is `none` (the guard is off)."""
    if truthfulqa_file is not None and truthfulqa_file.strip().lower() == OFF:
        return None
    directory = cache_dir() / "truthfulqa"
    return choose_source(truthfulqa_file, directory=directory, setting="truthfulqa_file", purpose="guard")


def source_questions(source: TruthfulQASource) -> list[str]:
    """The questions of a source: its file's, or the Hub dataset's."""
    if source.file is not None:
        return read_questions(source.file)
    return [str(row.value["question"]) for row in hub_rows(source.dataset, source.split)]


def read_questions(path: str | Path) -> list[str]:
    """The questions of a TruthfulQA file (a `.gz` read as the file inside), in file order, read by `spri_sft.rows`
    (every problem names the file and its line, item or row)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: TruthfulQA file not found (set --truthfulqa_file to mc_task.json or TruthfulQA.csv)")
    questions = []
    for row in read_file_rows(path, what="TruthfulQA file")[0]:
        question = row.value.get("question", row.value.get("Question")) if isinstance(row.value, dict) else None
        if not isinstance(question, str):
            raise UserError(f"{path}:{row.where}: no 'question' (or CSV 'Question') field")
        questions.append(question)
    if not questions:
        raise UserError(f"{path}: holds no questions")
    return questions


class TruthfulQAGuard:
    """Finds the TruthfulQA question a prompt overlaps, by the rule of the module docstring."""

    def __init__(self, questions: list[str], ngram: int, threshold: float):
        if ngram < 1:
            raise UserError(f"contamination_ngram must be >= 1, got {ngram}")
        if not 0 < threshold <= 1:
            raise UserError(f"contamination_threshold must be in (0, 1], got {threshold}")
        self.questions = questions
        self.ngram = ngram
        self.total: list[int] = []  # per question: its distinct n-grams
        self.needed: list[int] = []  # per question: how many of them a prompt must hold to overlap it
        self.index: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for number, question in enumerate(questions):
            grams = word_ngrams(normalize(question).split(), ngram)
            self.total.append(len(grams))
            # 1e-9: 0.28 * 25 is 7.000000000000001 in floating point, and ceil() of that is 8.
            self.needed.append(max(1, math.ceil(threshold * len(grams) - 1e-9)))
            for gram in grams:
                self.index[gram].append(number)
        self.lengths = sorted({len(gram) for gram in self.index if gram})

    def match(self, prompt: str) -> str | None:
        """The question the prompt overlaps most (by fraction of its n-grams found), or None."""
        words = normalize(prompt).split()
        hits: Counter[int] = Counter()
        for length in self.lengths:
            grams = {tuple(words[i : i + length]) for i in range(len(words) - length + 1)}
            for gram in grams:
                hits.update(self.index.get(gram, ()))
        overlapping = [(count / self.total[q], q) for q, count in hits.items() if count >= self.needed[q]]
        return self.questions[max(overlapping)[1]] if overlapping else None
