"""Read the integer score (1-5) and the feedback out of a critic's reply.

The patterns, tried in this order, the first that finds a score in 1-5 wins:

1. a score marker, the first one: `[RESULT] 4`, `[RESULT]: 4`, `RESULT: 4`, `[SCORE] 4`,
   `[Score: 4]` (Prometheus-2's format and the SPRI authors' `extract_evaluation_score`);
2. a bracketed number at the very end, `... [4]`; `Overall Score: 4` on its own line;
3. a declared score, the last one: a label (score, rating, grade) joined to its number by
   `:`, `=`, `is` or `of` ("Score: 4/5", "**Score:** 3 out of 5", "the score is 5",
   "a score of 4"), unless a negation or comparison comes first in its clause ("not a score
   of 5", "higher than a score of 3"), a range follows ("a score of 4 or 5") or it is
   hypothetical ("a score of 2 would be unfair");
4. a reply that is only a number ("4", "**5**").

A label and a number with nothing between them is a rubric reference, not a verdict: "meets
Score 4 but not Score 5" and a restated "Score 1: ..." line give no score. A number with a
decimal part ("4.5") or on another scale ("8/10") or outside 1-5 is no score either.

That is `score: parse`. A critic role with `score: constrained | expected` has its reply written
in the critic format by its backend (`spri_sft.llm.critic_format`), so the score comes with the
reply; `Verdict` holds either kind and states the accept rule's statistic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from spri_sft.llm.critic_format import mean_score

MIN_SCORE, MAX_SCORE = 1, 5

# A number, optionally "x.0", optionally "/ 5" or "out of 5"; never the start of "4.5".
_NUMBER = r"(\d+(?:\.0+)?)(?![\.,]\d)(?!\d)(?:\s*(?:/|out of)\s*(\d+))?"
_MARKERS = [
    re.compile(r"\[\s*(?:RESULT|SCORE)\s*\][\s:=\*\(\[]*" + _NUMBER, re.IGNORECASE),
    re.compile(r"\bRESULT\s*:[\s\*\(\[]*" + _NUMBER, re.IGNORECASE),
    re.compile(r"\[\s*Score\s*:\s*" + _NUMBER + r"\s*\]", re.IGNORECASE),
]
_ENDINGS = [
    re.compile(r"\[\s*" + _NUMBER + r"\s*\]\W*\Z"),
    re.compile(r"(?:^|\n)\W*Overall\s+Score\W*:\W*" + _NUMBER, re.IGNORECASE),
]
_DECLARED = re.compile(
    r"\b(?:score|rating|grade)\b\**\s*(?::|=|\bis\b|\bof\b)[\s\*:]*(?:\bis\b\s*)?"
    + _NUMBER
    + r"(?!\s*(?:-|–|to|or|and)\s*\d)(?!\s+(?:would|could|might)\b)",
    re.IGNORECASE,
)
# Words that make a declared score hypothetical or a comparison when they come before it in its clause.
_NEGATION = re.compile(
    r"\b(?:not|never|than|below|above|short\s+of|instead\s+of|rather)\b|n't",
    re.IGNORECASE,
)
_CLAUSE_BREAK = re.compile(r"[\.\!\?;\n]|\bbut\b", re.IGNORECASE)
_BARE = re.compile(r"^[\s\*\(\[]*(\d)(?:\s*/\s*5)?[\s\*\)\]\.]*$")
_FEEDBACK_PREFIX = re.compile(r"^\s*(?:#+\s*)?\**feedback\**\s*:?\s*", re.IGNORECASE)


def parse_score(reply: str) -> int | None:
    """The score in `reply`, or None when it has no score in 1-5."""
    for pattern in _MARKERS + _ENDINGS:
        for match in pattern.finditer(reply):
            score = _in_range(match)
            if score is not None:
                return score
    declared = [m for m in _DECLARED.finditer(reply) if not _negated(reply, m.start())]
    for match in reversed(declared):
        # The last one: critics often restate the rubric before they score.
        score = _in_range(match)
        if score is not None:
            return score
    bare = _BARE.match(reply)
    return _in_range(bare) if bare else None


def parse_feedback(reply: str) -> str:
    """The critique text without the score marker or the "Feedback:" label."""
    text = re.split(r"\[\s*RESULT\s*\]", reply, flags=re.IGNORECASE)[0]
    return _FEEDBACK_PREFIX.sub("", text).strip()


def released_feedback(reply: str) -> str:
    """The feedback exactly as the SPRI authors' scripts pass it to the refiner: the text before the
    first `[RESULT]`, stripped (`extract_evaluation_feedback`); the "Feedback:" label stays."""
    return reply.split("[RESULT]")[0].strip()


def _negated(reply: str, start: int) -> bool:
    clause = _CLAUSE_BREAK.split(reply[max(0, start - 80) : start])[-1]
    return bool(_NEGATION.search(clause))


def _in_range(match: re.Match) -> int | None:
    value = int(float(match.group(1)))
    scale = match.group(2) if match.re.groups >= 2 else None
    if scale is not None and int(scale) != MAX_SCORE:
        return None
    return value if MIN_SCORE <= value <= MAX_SCORE else None


@dataclass(frozen=True)
class Verdict:
    """One critique: the feedback the refiner gets, its score, and how it was scored.

    The accept rule's statistic: under `score: expected` (a digit distribution is present), the mean
    of the distribution, so a version passes when sum(d * p(d)) >= threshold; otherwise the integer
    score (None never passes). `score` is then the likeliest digit, kept for the histograms."""

    feedback: str
    score: int | None
    distribution: dict[int, float] | None = None
    # The score mode used, recorded only for a role whose `score` setting is not "parse" (it may
    # still be "parse" there, when the server failed the start-up probe).
    mode: str | None = None

    @property
    def mean(self) -> float | None:
        return None if self.distribution is None else mean_score(self.distribution)

    def passes(self, threshold: float) -> bool:
        statistic = self.mean if self.distribution is not None else self.score
        return statistic is not None and statistic >= threshold

    def round_fields(self) -> dict:
        """This critique's fields of a round record (the extra ones only when scored other than by parsing)."""
        fields: dict = {"critique": self.feedback, "score": self.score}
        if self.mode is not None:
            fields["score_mode"] = self.mode
        if self.distribution is not None:
            fields["score_distribution"] = {str(d): round(p, 4) for d, p in sorted(self.distribution.items())}
            fields["score_mean"] = round(self.mean, 4)
        return fields
