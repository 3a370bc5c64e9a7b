"""The record: what `spri-sft generate` writes for each prompt, one JSON line of `records.jsonl`.

It is the arrow between generate and everything after it (format, the preference pairs, the viewer,
the pipeline's report), so its fields are named here once: `Record`, its `Round`s (one per version
the loop kept a trace of) and the `RoleUsage` of each role. They are TypedDicts because a record is
a JSON object: building one is building the dict that is written, byte for byte as before.

`check_record` is what a reader may rely on: every field it checks has the type named here (the
required ones are present); a field it does not require may be absent in a record written by hand
or by an older version, so readers `.get` those.
"""

from __future__ import annotations

from typing import Any, TypedDict

from spri_sft.errors import UserError
from spri_sft.generate.inputs import SFT_SPLITS

# The fields a record must have, in the order the refusal lists them.
REQUIRED_FIELDS = ("id", "prompt", "mode", "status", "response", "rounds")
# A record's `status`: its mode's stages all accepted, one ended without acceptance, or the prompt failed.
STATUSES = ("accepted", "max_rounds", "failed")


class _RoundRequired(TypedDict):
    stage: str
    """`principles` (Stage I) or `response` (the answer and its refinements)."""
    round: int
    """1 for the draft, then one more per revision; self-refine's last refinement is `max_rounds + 1`."""
    text: str
    """The version judged in this round (for a mode with no critique, the answer itself)."""
    finish_reason: str
    """How the model ended the version: `stop`, `length` (cut off by max_new_tokens), `dataset` for oracle."""
    critique: str | None
    """The critic's feedback on this version, as passed to the reviser; null when no critique was asked."""
    score: int | None
    """The critic's score 1-5; null when unscored (no score after the retries) or not critiqued."""


class Round(_RoundRequired, total=False):
    """One version of a stage and the critic's verdict on it (`spri_sft.generate.engine`'s loop rules)."""

    score_mode: str
    """How the score was read, when the role's `score` setting is not `parse`: `constrained` or `expected`
    (`parse` when the backend's probe fell back to it)."""
    score_distribution: dict[str, float]
    """Under `expected`: the critic's probability of each digit "1".."5", rounded to 4 places."""
    score_mean: float
    """Under `expected`: the mean of `score_distribution`, the statistic the accept rule compares."""


class _RoleUsageRequired(TypedDict):
    model: str
    """The model the role called."""
    calls: int
    """Its calls for this prompt (score retries included)."""
    prompt_tokens: int
    """Tokens sent, summed over the calls."""
    completion_tokens: int
    """Tokens generated, summed over the calls."""


class RoleUsage(_RoleUsageRequired, total=False):
    """One role's calls and tokens for one prompt (`spri_sft.generate.engine.Usage`)."""

    replayed_calls: int
    """Of `calls`, those read back from the journal of an interrupted run instead of asked again."""


class _RecordRequired(TypedDict):
    id: str
    """The prompt's and the generation settings' hash (`spri_sft.generate.identity.record_id`)."""
    prompt: str
    """The prompt, as sent."""
    mode: str
    """The generation mode's canonical name (`spri_sft.generate.modes`); an older record may carry an alias."""
    status: str
    """One of STATUSES."""
    response: str | None
    """The kept response (the last version of the response stage); null when the prompt failed."""
    rounds: list[Round]
    """Every version, Stage I's then the response's, in order; empty when the prompt failed."""


class Record(_RecordRequired, total=False):
    """One prompt's record, as `spri-sft generate` writes it (keys in this order)."""

    prompt_source: str
    """The name of the prompt source it came from, when the prompts have several `sources`."""
    sft_split: str
    """The SFT split that source names (one of SFT_SPLITS; `auto` leaves it to format's hash)."""
    source_id: str | None
    """The prompt's id in its dataset (`prompts.id_column`), as text, to join rows back to it."""
    instruction: str
    """The prompt field alone, when the prompt also has a context (`prompts.context_column`): the prompt is
    it, a blank line and the context. Absent when the prompt is one field (or from a version before it)."""
    principles: str | None
    """What the critic judged the response against: Stage I's principles, or the fixed rules of a
    critic-scored mode without Stage I; null for a mode with no rubric and for a failed prompt."""
    error: str
    """A failed prompt's error, `TypeName: message`."""
    error_kind: str
    """A failed prompt's `transient` or `permanent` (`spri_sft.generate.run`: what a rerun retries)."""
    usage: dict[str, RoleUsage]
    """Per role (`base`, `critic`) that was called, its calls and tokens."""


class Outcome(TypedDict, total=False):
    """The fields of a Record that running its prompt decides (the engine's result, or a failure):
    principles, response, status, rounds, usage, and a failure's error and error_kind (see Record)."""

    principles: str | None
    response: str | None
    status: str
    error: str
    error_kind: str
    rounds: list[Round]
    usage: dict[str, RoleUsage]


def check_record(record: Any, where: str) -> Record:
    """`record` as a Record, or a UserError naming `where` (FILE:LINE) and the field to fix."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        raise UserError(
            f"{where}: record is missing {', '.join(repr(m) for m in missing)} "
            f"(a record has {', '.join(REQUIRED_FIELDS)}, as `spri-sft generate` writes them)"
        )
    for name, types, expected in (
        ("id", str, "a string"),
        ("prompt", str, "a string"),
        ("response", (str, type(None)), "a string or null"),
        ("rounds", list, "a list"),
    ):
        if not isinstance(record[name], types):
            raise UserError(f"{where}: field '{name}' must be {expected}, got {record[name]!r:.60}")
    if not all(isinstance(r, dict) and "stage" in r for r in record["rounds"]):
        raise UserError(f"{where}: every entry of 'rounds' must be an object with a 'stage'")
    for number, round_ in enumerate(record["rounds"]):
        _check_round(round_, f"rounds[{number}]", where)
    if not isinstance(record.get("source_id"), (str, type(None))):
        raise UserError(f"{where}: field 'source_id' must be a string or null, got {record['source_id']!r:.60}")
    if not isinstance(record.get("instruction", ""), str):
        raise UserError(f"{where}: field 'instruction' must be a string, got {record['instruction']!r:.60}")
    if record.get("sft_split", "auto") not in SFT_SPLITS:
        raise UserError(
            f"{where}: field 'sft_split' must be one of {', '.join(SFT_SPLITS)}, got {record['sft_split']!r:.60}"
        )
    usage = record.get("usage")
    if not isinstance(usage, (dict, type(None))):
        raise UserError(f"{where}: field 'usage' must be an object (role -> its calls and tokens), got {usage!r:.60}")
    for role, counts in (usage or {}).items():
        if not isinstance(counts, dict):
            raise UserError(f"{where}: field 'usage.{role}' must be an object, got {counts!r:.60}")
    return record


def _check_round(round_: dict, name: str, where: str) -> None:
    """The round fields readers compute with: the text (preference pairs), the score and its mean."""
    if not isinstance(round_.get("text"), str):
        raise UserError(f"{where}: field '{name}.text' must be a string, got {round_.get('text')!r:.60}")
    score = round_.get("score")
    if score is not None and (not isinstance(score, int) or isinstance(score, bool)):
        raise UserError(f"{where}: field '{name}.score' must be an integer or null, got {score!r:.60}")
    mean = round_.get("score_mean")
    if mean is not None and (not isinstance(mean, (int, float)) or isinstance(mean, bool)):
        raise UserError(f"{where}: field '{name}.score_mean' must be a number or null, got {mean!r:.60}")


def stage_accepted(record: Record, stage: str, threshold: float) -> bool | None:
    """Whether `stage` ("principles" or "response") ended accepted: its last version's statistic passed
    `threshold` as the loop judged it (`scoring.Verdict.passes`: the digits' mean under `score: expected`,
    else the score; unscored never passes). None when the record has no round of that stage."""
    rounds = [r for r in record["rounds"] if r["stage"] == stage]
    if not rounds:
        return None
    last = rounds[-1]
    statistic = last.get("score_mean", last.get("score"))
    return statistic is not None and statistic >= threshold
