"""Read the integer score (1-5) and the feedback out of a critic's reply.

The preferred form is Prometheus-2's: "Feedback: ... [RESULT] 4". Instruct models drift from
it, so a few common variants are accepted too ("Score: 4", "Rating: 4/5", "**Score**: 4 out
of 5", a reply that is only a number). A number that is not introduced as a score ("5 reasons")
is never taken for one, and a score outside 1-5 counts as no score.
"""

from __future__ import annotations

import re

MIN_SCORE, MAX_SCORE = 1, 5

_NUMBER = r"[\(\[\*\s:=]*(\d+(?:\.0+)?)(?!\.\d)(?:\s*(?:/|out of)\s*(\d+))?"
_RESULT = re.compile(r"\[\s*RESULT\s*\]" + _NUMBER, re.IGNORECASE)
_LABELLED = re.compile(r"\b(?:score|rating|grade)\b[\*\s]*(?:is)?" + _NUMBER, re.IGNORECASE)
_BARE = re.compile(r"^[\s\*\(\[]*(\d)(?:\s*/\s*5)?[\s\*\)\]\.]*$")
_FEEDBACK_PREFIX = re.compile(r"^\s*(?:#+\s*)?\**feedback\**\s*:?\s*", re.IGNORECASE)


def parse_score(reply: str) -> int | None:
    """The score in `reply`, or None when it has no score in 1-5."""
    for pattern in (_RESULT, _LABELLED):
        matches = list(pattern.finditer(reply))
        if matches:
            # The last one: critics often restate the rubric ("Score 1: ...") before scoring.
            return _in_range(matches[-1])
    bare = _BARE.match(reply)
    return _in_range(bare) if bare else None


def parse_feedback(reply: str) -> str:
    """The critique text without the score marker or the "Feedback:" label."""
    text = re.split(r"\[\s*RESULT\s*\]", reply, flags=re.IGNORECASE)[0]
    return _FEEDBACK_PREFIX.sub("", text).strip()


def _in_range(match: re.Match) -> int | None:
    value = int(float(match.group(1)))
    scale = match.group(2) if match.re.groups >= 2 else None
    if scale is not None and int(scale) != MAX_SCORE:
        return None
    return value if MIN_SCORE <= value <= MAX_SCORE else None
