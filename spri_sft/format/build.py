"""`spri-sft format`: records.jsonl files in, a Hugging Face SFT dataset in TRL's conversational format out.

Steps, in this order; a record is counted under the first step that drops it. The records files are read
as a stream, twice: steps 1-2 on each record as it is read, keeping of a record that passes only its id,
prompt, mode and source_id; then step 5 builds the rows of the records still kept after steps 3-4. So
format's memory holds the prompts and the rows, never every whole record (docs/benchmarks.md, "Memory").

1. load: every line of every `records` file, in the order given, read by `spri_sft.rows` (a
   blank line is skipped; a malformed line or a record missing a field stops the run with its
   file and line). Records of several generation modes (several files, or one file mixed by a
   version before generate refused a second mode into an output_dir) are refused, naming the modes:
   a dataset is one mode's (the paper trains and compares one model per mode), and deduplication
   would otherwise drop one mode's answer to a prompt as a duplicate of the other's. Format each
   mode's records.jsonl on its own, into its own output_dir.
2. `review`: a reviewer's last decision on the record (`spri-sft view`, `spri_sft.review.decisions`) is
   "exclude": of `review_file`, else of review/decisions.jsonl beside the first records file when there is
   one (`none`: no review). A person's decision comes first, so every record they excluded is counted
   under it, by the reason they gave (`review_reasons`); a "keep" decision is counted and changes nothing.
   Then the quality filters, on the final version of the response (the last `response` round):
   `status`: the record's status is not in `statuses`;
   `empty_response`: the response is missing or blank;
   `truncated`: `drop_truncated` and the final version's finish_reason is "length";
   `response_score`: `min_response_score` is set and the final version's critic score is
   lower, or missing (an unscored round, or a mode without a critic).
3. `contamination`: the prompt (with `contamination_responses`, the response too) covers a benchmark
   document: at least `contamination_threshold` of its words lie in word n-grams (`contamination_ngram`,
   13) the row shares, or, shorter than n words, it is held whole (`spri_sft.format.contamination`).
   The documents (`spri_sft.format.benchmarks`): TruthfulQA's questions, of `truthfulqa_file`, else of
   the Hub dataset, else of the packaged copy (`truthfulqa_file: none` leaves TruthfulQA out), and the
   test and validation documents of every lm-eval task of `lm_eval_tasks` (`spri-sft run` passes the
   tasks it scores). Counted per benchmark; it runs before deduplication so that every contaminated
   record is counted and none can stand in for a clean near duplicate of itself.
4. `duplicate`: the normalized prompt equals an earlier kept one; `near_duplicate`: the word
   3-gram Jaccard similarity of its `near_duplicate_field` to an earlier kept record's is >=
   `near_duplicate_threshold`: by default both its instruction's (which a record keeps apart when
   generate added a context, else its prompt) and its whole prompt's; or `instruction` alone; or
   `prompt` alone (the rules are in `spri_sft.format.dedupe`). The first record of a group is kept.
5. rows: `messages` = [system (if `system_prompt`), user: prompt, assistant: response] and the
   provenance columns `id`, `mode`, `principles` (null without principles), `principles_score`
   and `response_score` (the final versions' critic scores, null when unscored or absent),
   `status` and `source_id` (the prompt row's own id, from generate's `prompts.id_column`; null
   without it).
6. split, keyed on the prompt alone and decided before any filter. A record whose prompt came
   from a generate source that named its SFT split (`sft_split: train | validation`, e.g. the
   paper's MixInstruct validation prompts, drawn from that dataset's own validation split) goes
   to that split (a prompt named both ways is a validation prompt). Among the other prompts
   (`auto`), every distinct normalized prompt gets a rank from sha256(seed, prompt), and the
   lowest-ranked ones are validation prompts too, as many as `validation_rows` (else
   ceil(fraction * all distinct prompts)) asks beyond the named validation prompts. A row goes
   to validation when its prompt is a validation prompt. So every mode generated on the same
   prompts gets the same validation prompts (minus the ones that mode's filters dropped), the
   paper's like-for-like comparison; and the split does not depend on record order or ids.
   A split needs a row on each side (a train split only with `validation_fraction: 0` and no
   named validation prompts).
7. `overlong` (with `tokenizer` and `max_length`, training's max_length): every row is measured in
   the tokenizer's tokens as `spri-sft train` renders it (`spri_sft.format.template`: the training
   chat template, or the model's own with prefix masks; a tokenizer without a chat template gets the
   Alpaca layout, and the count is approximate: training uses Alpaca there only with
   `chat_template_fallback: alpaca`). TRL cuts a row longer than max_length at max_length
   (`truncation_mode: keep_start`), which removes the end of its response: counted per split are
   the rows over max_length, those whose end-of-turn token (the last trained token) is cut off,
   and among them those whose prompt alone (the conversation up to the last assistant message, with
   the generation prompt) reaches max_length, which TRL drops as they keep no trained token. With
   `overlong: drop` every row over max_length is dropped here (and counted under `overlong`); with
   `keep` it stays and summary.json, the card and the printed line say how many lost their
   end-of-turn token. A dropped record gives no preference pair either. Without `tokenizer` and
   `max_length`, nothing is measured and summary.json says so (`lengths.checked: false`).
8. save, in `output_dir` (earlier outputs of this step there are replaced):
     hf/                          `DatasetDict.save_to_disk`: `datasets.load_from_disk(f"{output_dir}/hf")`
     train.jsonl, validation.jsonl        one row per line
     train.parquet, validation.parquet    the card's `configs` name these: `load_dataset(output_dir)` works too
     README.md                    the dataset card: method, models, counts per step, scores, filters
     summary.json                 what `build_dataset` returns
     dropped.jsonl                one line per dropped record: id, reason, detail (and source_id, when it has one;
                                  for `review`, the reviewer's reason as detail, and who and when; for
                                  `contamination`, the benchmark, task, split, doc_id and an excerpt of the
                                  document, the row's field, the coverage and the longest shared run of words)
     config.yaml                  the effective configuration
     preference/                  with `preference`: DPO pairs of the kept records, split as the rows are
                                  (hf/, {train,validation}.jsonl, no_pair.jsonl; `spri_sft.format.preference`)
   and, with `push_to_hub`, the splits and the card go to that Hub dataset repo.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from spri_sft.config import dump_yaml
from spri_sft.errors import UserError
from spri_sft.format.benchmarks import (
    TRUTHFULQA,
    guard_source,
    lm_eval_documents,
    source_questions,
    truthfulqa_documents,
)
from spri_sft.format.card import NOT_MEASURED, lengths_line, render_card
from spri_sft.format.config import COMPARES_INSTRUCTION, NEAR_DUPLICATE_FIELDS, OVERLONG, FormatConfig
from spri_sft.format.contamination import BenchmarkGuard
from spri_sft.format.dedupe import exact_duplicates, near_duplicates, normalize
from spri_sft.format.preference import PREFERENCE_DIR, assemble_preference, preference_pair, save_preference
from spri_sft.generate.record import STATUSES, Record, Round, check_record
from spri_sft.processes import writes_output_dir
from spri_sft.review.decisions import DECISIONS_FILE, Decisions, read_decisions, review_dir_of
from spri_sft.rows import read_jsonl

logger = logging.getLogger(__name__)

# Every drop reason, in the order the steps run; `overlong` only when rows are measured (step 7).
REASONS = (
    "review",
    "status",
    "empty_response",
    "truncated",
    "response_score",
    "contamination",
    "duplicate",
    "near_duplicate",
)
OVERLONG_REASON = "overlong"
ROLES = ("base", "critic")  # the roles whose models the summary names
STAGES = ("response", "principles")  # the stages whose final scores the summary counts
REVIEW_OFF = "none"  # review_file's value that turns the reviewer's decisions off
NO_REASON = "no reason given"  # an exclusion without a reason, in review_reasons
SPLITS = ("train", "validation")


@writes_output_dir  # two formats into one output_dir would interleave their files
def build_dataset(config: FormatConfig) -> dict:
    """Run every step of the module docstring and return the summary (also written to summary.json)."""
    _check(config)
    review = review_source(config)
    decisions = read_decisions(review) if review is not None else Decisions(Path(REVIEW_OFF), {})
    dropped: list[dict] = []

    def drop(record: dict, reason: str, detail: str = "") -> None:
        dropped.append(dropped_entry(record, reason, detail))

    # Steps 1 and 2 in one pass over the files, a record at a time: of a record that passes them only its
    # brief (id, prompt, mode, source_id, place in the files) is kept, and its row is built in a second pass
    # (step 5), so memory holds the prompts, never every whole record.
    loaded = Loaded(config.seed)
    kept = []
    for position, record in enumerate(iter_records(config.records)):
        loaded.add(record, decisions)
        decision = decisions.get(record["id"])
        if decision is not None and decision["decision"] == "exclude":
            drop(record, "review", decision["reason"] or "")
            dropped[-1].update(who=decision["who"], when=decision["when"])
            continue
        failed = quality_failure(record, config)
        if failed:
            drop(record, *failed)
        else:
            kept.append(brief(record, position, config))
    refuse_several_modes(loaded.modes, config.records)
    _say_records_without_source_id(loaded.without_source_id, loaded.records)
    reviewed = review_counts(review, decisions, loaded.decided)  # said now: a later step may stop the run

    kept, contamination = drop_contaminated(kept, config, drop, dropped)

    duplicates = exact_duplicates([r["prompt"] for r in kept])
    for i, first in duplicates.items():
        drop(kept[i], "duplicate", kept[first]["id"])
    kept = [r for i, r in enumerate(kept) if i not in duplicates]
    if config.near_duplicate_threshold is not None:
        field = config.near_duplicate_field
        compared = [compared_text(r, field) for r in kept]
        also = [r["prompt"] for r in kept] if field == "instruction+prompt" else None
        duplicates = near_duplicates(compared, config.near_duplicate_threshold, also=also)
        for i, (first, similarity) in duplicates.items():
            compared_words = "instruction and prompt Jaccard >=" if also else f"{field} Jaccard"
            detail = f"{kept[first]['id']} ({compared_words} {similarity:.2f})"
            drop(kept[i], "near_duplicate", detail)
        kept = [r for i, r in enumerate(kept) if i not in duplicates]

    rows = read_kept(config, kept)  # the second pass: each kept record's row, and its facts in its brief
    named = loaded.named
    validation = validation_prompts(loaded, config)
    parts = partition(rows, validation)
    lengths = {"checked": False, "why": NOT_MEASURED}
    if measured(config):
        parts, lengths = check_lengths(parts, config, dropped)
        print(f"[spri-sft] format: {lengths_line(lengths)}", flush=True)
        remaining = {row["id"] for part in parts.values() for row in part}
        kept = [
            record for record in kept if record["id"] in remaining
        ]  # a dropped record gives no preference pair either
    splits = split_rows(parts, validation, dropped)

    summary = summarize(config, loaded.records, kept, dropped, splits, named)
    summary["lengths"] = lengths
    summary["review"], summary["review_reasons"] = reviewed
    summary["contamination"] = contamination
    if config.preference:
        pairs, no_pair, summary["preference"] = assemble_preference(
            [record["pair"] for record in kept], validation, config.preference_margin
        )
    card = render_card(summary, config)
    save(splits, summary, card, dropped, config)
    if config.preference:
        with _quiet_datasets():
            save_preference(pairs, no_pair, Path(config.output_dir))
    if config.push_to_hub:
        push(splits, card, config.push_to_hub)
    return summary


def _check(config: FormatConfig) -> None:
    if not config.records:
        raise UserError("records: give at least one records.jsonl file (--records PATH)")
    unknown = sorted(set(config.statuses) - set(STATUSES))
    if unknown or not config.statuses:
        raise UserError(f"statuses: {unknown or '[]'} is not a list of {', '.join(STATUSES)}")
    if not 0 <= config.validation_fraction < 1:
        raise UserError(f"validation_fraction must be in [0, 1), got {config.validation_fraction}")
    if config.validation_rows is not None and config.validation_rows < 1:
        raise UserError(f"validation_rows must be >= 1 or null (use validation_fraction), got {config.validation_rows}")
    threshold = config.near_duplicate_threshold
    if threshold is not None and not 0 < threshold <= 1:
        raise UserError(f"near_duplicate_threshold must be in (0, 1] or null (off), got {threshold}")
    if config.near_duplicate_field not in NEAR_DUPLICATE_FIELDS:
        raise UserError(
            f"near_duplicate_field must be one of {', '.join(NEAR_DUPLICATE_FIELDS)}, got {config.near_duplicate_field!r}"
        )
    if config.contamination_ngram < 1:
        raise UserError(f"contamination_ngram must be >= 1, got {config.contamination_ngram}")
    if not 0 < config.contamination_threshold <= 1:
        raise UserError(f"contamination_threshold must be in (0, 1], got {config.contamination_threshold}")
    if config.preference_margin <= 0:
        raise UserError(
            f"preference_margin must be > 0 (a rejected version scored that much lower), got {config.preference_margin}"
        )
    if (config.tokenizer is None) != (config.max_length is None):
        given, missing = ("tokenizer", "max_length") if config.max_length is None else ("max_length", "tokenizer")
        raise UserError(
            f"{given} is set but {missing} is not: rows are measured with both (training's tokenizer and max_length), "
            "or neither"
        )
    if config.max_length is not None and config.max_length < 1:
        raise UserError(f"max_length must be >= 1 (training's max_length in tokens), got {config.max_length}")
    if config.overlong not in OVERLONG:
        raise UserError(f"overlong must be one of {', '.join(OVERLONG)}, got {config.overlong!r}")
    if config.training_template not in ("model", "alpaca"):
        raise UserError(
            f"training_template must be model or alpaca (as `spri-sft train`'s), got {config.training_template!r}"
        )


# -- deduplication ---------------------------------------------------------------------------


def compared_text(record: Record, near_duplicate_field: str) -> str:
    """What the near-duplicate step compares first of a record: its instruction (its prompt, when generate kept no
    instruction apart: a prompt without a context, or a record from before), or its whole prompt."""
    if near_duplicate_field in COMPARES_INSTRUCTION:
        return record.get("instruction") or record["prompt"]
    return record["prompt"]


# -- benchmark contamination ---------------------------------------------------------------


def drop_contaminated(kept: list[Record], config: FormatConfig, drop, dropped: list[dict]) -> tuple[list, dict]:
    """Step 3: drop every row whose prompt (and, with contamination_responses, response) covers a benchmark
    document (`spri_sft.format.contamination`); the counts per benchmark, for summary.json and the card."""
    source = guard_source(config.truthfulqa_file)  # the file, else the Hub, else the packaged copy; None: `none`
    documents = truthfulqa_documents(source_questions(source)) if source is not None else []
    if source is None:
        logger.warning("truthfulqa_file: none: rows are not checked against TruthfulQA")
    documents += lm_eval_documents(config.lm_eval_tasks, config.lm_eval_include_path, config.lm_eval_include_defaults)
    benchmarks = ([TRUTHFULQA] if source is not None else []) + list(dict.fromkeys(config.lm_eval_tasks))
    fields = ["prompt", "response"] if config.contamination_responses else ["prompt"]
    summary = {
        "ngram": config.contamination_ngram,
        "threshold": config.contamination_threshold,
        "fields": fields,
        "truthfulqa_source": source.described if source is not None else None,  # the card names it
        "benchmarks": {},
    }
    if not documents:
        return kept, summary
    guard = BenchmarkGuard(documents, config.contamination_ngram, config.contamination_threshold)
    clean, found = [], Counter()
    by_field = [guard.match_all([record.get(field) for record in kept], field) for field in fields]
    for record, *matches in zip(kept, *by_field):
        matches = [match for match in matches if match is not None]
        if not matches:
            clean.append(record)
            continue
        match = max(matches, key=lambda match: match.coverage)  # the prompt's on a tie
        drop(record, "contamination", match.detail())
        dropped[-1].update(match.entry())
        found[match.document.benchmark] += 1
    summary["benchmarks"] = {
        name: {"documents": guard.counts[name], "empty": guard.empty[name], "dropped": found[name]}
        for name in benchmarks
    }
    print(f"[spri-sft] format: {contamination_line(summary, len(kept))}", flush=True)
    return clean, summary


def contamination_line(contamination: dict, checked: int) -> str:
    """One sentence of the guard's counts: printed by format."""
    counts = ", ".join(
        f"{name} {entry['dropped']} (of {entry['documents']:,} documents)"
        for name, entry in contamination["benchmarks"].items()
    )
    dropped = sum(entry["dropped"] for entry in contamination["benchmarks"].values())
    return (
        f"{dropped} of {checked} rows overlap a benchmark and were dropped "
        f"({' and '.join(contamination['fields'])} vs {contamination['ngram']}-word n-grams): {counts}"
    )


# -- load ------------------------------------------------------------------------------------


TORN_LINE = "a generate run killed mid-write leaves a torn last line, which rerunning it repairs; otherwise fix or remove the line"


def read_records(paths: list[str]) -> list[Record]:
    return list(iter_records(paths))


def iter_records(paths: list[str]) -> Iterator[Record]:
    """Every record of the files, in order, one at a time (step 1)."""
    for path in map(Path, paths):
        if not path.is_file():
            raise UserError(f"{path}: records file not found (the records.jsonl of a `spri-sft generate` run)")
        for row in read_jsonl(path, "records file", malformed_hint=TORN_LINE):
            yield check_record(row.value, f"{path}:{row.where}")


class Loaded:
    """What the first pass learns of every record read, for the steps that need all of them: the modes (step 1),
    the records without a source_id, the ids with a review decision, and the prompts the split chooses among
    (rule 6: the named splits, and every other distinct normalized prompt's rank, kept instead of its text)."""

    def __init__(self, seed: int):
        self.seed = seed
        self.records = self.without_source_id = 0
        self.modes: Counter[str] = Counter()
        self.decided: set[str] = set()
        self.named: dict[str, str] = {}  # normalized prompt -> the split its generate source named
        self.ranks: set[bytes] = set()  # _prompt_rank of every distinct normalized prompt

    def add(self, record: Record, decisions: Decisions) -> None:
        self.records += 1
        self.modes[record["mode"]] += 1
        self.without_source_id += record.get("source_id") is None
        if record["id"] in decisions:
            self.decided.add(record["id"])
        prompt = normalize(record["prompt"])
        self.ranks.add(_prompt_rank(prompt, self.seed))
        split = record.get("sft_split", "auto")
        if split != "auto":
            self.named[prompt] = "validation" if "validation" in (split, self.named.get(prompt)) else split


def brief(record: Record, position: int, config: FormatConfig) -> dict:
    """What the steps after the filters read of a record until its row is built: the row is built in a second
    pass, from the record at `position` (its place among every record of the files)."""
    found = {"id": record["id"], "prompt": record["prompt"], "mode": record["mode"], "position": position}
    if record.get("source_id") is not None:
        found["source_id"] = record["source_id"]
    if config.contamination_responses:
        found["response"] = record["response"]  # step 3 checks it too
    if record.get("instruction") and config.near_duplicate_field in COMPARES_INSTRUCTION:
        found["instruction"] = record["instruction"]  # step 4 compares it
    return found


def read_kept(config: FormatConfig, kept: list[dict]) -> list[dict]:
    """The second pass over the files (step 5): the row of every kept record, in order. Each brief gets what the
    summary and the preference pairs read of its record: its models, its final scores, its pair (or why none)."""
    wanted = {record["position"]: record for record in kept}
    rows = []
    for position, record in enumerate(iter_records(config.records)):
        found = wanted.get(position)
        if found is None:
            continue
        if record.get("id") != found["id"]:
            raise records_changed(config, f"record {position + 1} is {record.get('id')!r}, not {found['id']!r}")
        rows.append(to_row(record, config.system_prompt))
        found["models"] = {role: ((record.get("usage") or {}).get(role) or {}).get("model") for role in ROLES}
        found["scores"] = {
            stage: final_score(record, stage) for stage in STAGES if final_round(record, stage) is not None
        }
        if config.preference:
            found["pair"] = (record["id"], preference_pair(record, config.preference_margin, config.system_prompt))
    if len(rows) != len(kept):
        raise records_changed(config, f"{len(kept) - len(rows)} kept records are gone")
    return rows


def records_changed(config: FormatConfig, what: str) -> UserError:
    """Rows are built in a second pass by each record's place in the files: a file rewritten in between (a generate
    rerun retrying its failed records) would attach rows and scores to the wrong records."""
    files = ", ".join(config.records)
    return UserError(
        f"{files} changed while format read it ({what} on the second pass): rerun format once nothing writes the records"
    )


def review_source(config: FormatConfig) -> Path | None:
    """The decisions file format obeys (step 2): `review_file`, else review/decisions.jsonl beside the first
    records file when there is one; None when `review_file` is none or there is none."""
    if config.review_file is not None:
        if config.review_file.strip().lower() == REVIEW_OFF:
            return None
        path = Path(config.review_file)
        if not path.is_file():
            raise UserError(
                f"review_file {path}: not found (the decisions.jsonl `spri-sft view` writes in its review/ folder; "
                f"{REVIEW_OFF} turns the review off)"
            )
        return path
    beside = review_dir_of(config.records[0]) / DECISIONS_FILE
    return beside if beside.is_file() else None


def review_counts(review: Path | None, decisions: Decisions, ids: set[str]) -> tuple[dict, dict[str, int]]:
    """The review's counts over the records of `ids` (summary.json's `review` and `review_reasons`), said in one
    line. Decisions on other records (another mode's, in a run's shared file) are not this dataset's: only said."""
    ours = [decision for id, decision in decisions.items() if id in ids]
    excluded = [decision for decision in ours if decision["decision"] == "exclude"]
    reasons = dict(Counter(decision["reason"] or NO_REASON for decision in excluded).most_common())
    counts = {
        "file": None if review is None else str(review),
        "excluded": len(excluded),
        "kept": len(ours) - len(excluded),
    }
    if review is not None:
        why = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
        elsewhere = len(decisions) - len(ours)
        print(
            f"[spri-sft] format: review ({review}): {len(excluded)} records excluded"
            + (f" ({why})" if why else "")
            + f", {counts['kept']} kept by decision"
            + (f"; {elsewhere} decisions are on records not in these files" if elsewhere else ""),
            flush=True,
        )
        if decisions.torn_bytes:
            logger.warning(
                "%s: ignored a torn last line (%d bytes) left by an interrupted write", review, decisions.torn_bytes
            )
    return counts, reasons


def refuse_several_modes(modes: Counter[str], paths: list[str]) -> None:
    """One dataset is one mode's records (step 1): refuse records of several `modes` (mode -> records), naming them."""
    if len(modes) > 1:
        counts = ", ".join(f"{count} {mode}" for mode, count in modes.most_common())
        raise UserError(
            f"records: {', '.join(paths)} hold records of {len(modes)} generation modes ({counts}); a dataset is "
            "one mode's: format each mode's records.jsonl on its own, into its own --output_dir"
        )


# -- filter ----------------------------------------------------------------------------------


def final_round(record: Record, stage: str) -> Round | None:
    """The last round of `stage` ("principles" or "response"): the version that was kept."""
    rounds = [r for r in record["rounds"] if r["stage"] == stage]
    return rounds[-1] if rounds else None


def final_score(record: Record, stage: str) -> int | None:
    last = final_round(record, stage)
    return None if last is None else last.get("score")


def quality_failure(record: Record, config: FormatConfig) -> tuple[str, str] | None:
    """(reason, detail) of the first quality filter the record fails, or None."""
    if record["status"] not in config.statuses:
        return "status", str(record["status"])
    if record["response"] is None or not record["response"].strip():
        return "empty_response", ""
    last = final_round(record, "response")
    if config.drop_truncated and last is not None and last.get("finish_reason") == "length":
        return "truncated", f"round {last.get('round')}"
    if config.min_response_score is not None:
        score = final_score(record, "response")
        if score is None or score < config.min_response_score:
            return "response_score", "unscored" if score is None else f"score {score}"
    return None


# -- rows and split --------------------------------------------------------------------------


def features():
    from datasets import Features, List, Value

    return Features(
        {
            "messages": List({"role": Value("string"), "content": Value("string")}),
            "id": Value("string"),
            "mode": Value("string"),
            "principles": Value("string"),
            "principles_score": Value("int32"),
            "response_score": Value("int32"),
            "status": Value("string"),
            "source_id": Value("string"),
        }
    )


def to_row(record: Record, system_prompt: str | None) -> dict:
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
    return {
        "messages": messages,
        "id": record["id"],
        "mode": record["mode"],
        "principles": record.get("principles"),
        "principles_score": final_score(record, "principles"),
        "response_score": final_score(record, "response"),
        "status": record["status"],
        "source_id": record.get("source_id"),
    }


def dropped_entry(record: dict, reason: str, detail: str) -> dict:
    """A line of dropped.jsonl for a record (or its row): its id, why, and its source_id when it has one."""
    entry = {"id": record["id"], "reason": reason, "detail": detail}
    if record.get("source_id") is not None:
        entry["source_id"] = record["source_id"]
    return entry


def _say_records_without_source_id(without: int, records: int) -> None:
    """Records of one set where some carry a source_id and some do not: the ones without were generated before
    prompts.id_column was set (a rerun keeps finished records as they are), and their rows cannot be joined back."""
    if 0 < without < records:
        logger.warning(
            "%d of %d records carry no source_id (generated before prompts.id_column was set?): their rows' "
            "source_id is null",
            without,
            records,
        )


class ValidationPrompts:
    """The validation split's prompts (rule 6): `prompt in it` for a normalized prompt. The ones named for
    validation are held as text; the hash's choice, often most of them, as their ranks."""

    def __init__(self, named: set[str], ranks: set[bytes], seed: int):
        self.named, self.ranks, self.seed = named, ranks, seed

    def __contains__(self, normalized_prompt: str) -> bool:
        return normalized_prompt in self.named or _prompt_rank(normalized_prompt, self.seed) in self.ranks

    def __len__(self) -> int:
        return len(self.named) + len(self.ranks)


def validation_prompts(loaded: Loaded, config: FormatConfig) -> ValidationPrompts:
    """The prompts of the validation split, chosen among every loaded record's prompt (rule 6): the ones named
    for validation, then the hash's choice among the prompts not named."""
    chosen = {prompt for prompt, split in loaded.named.items() if split == "validation"}
    named = {_prompt_rank(prompt, config.seed) for prompt in loaded.named}
    hashed = sorted(loaded.ranks - named)
    if config.validation_rows is not None:
        wanted = config.validation_rows
    else:
        wanted = math.ceil(config.validation_fraction * len(loaded.ranks))
    return ValidationPrompts(chosen, set(hashed[: max(0, wanted - len(chosen))]), config.seed)


def _prompt_rank(normalized_prompt: str, seed: int) -> bytes:
    """The prompt's place in the hash's order (rule 6): sha256(seed, prompt), compared as bytes."""
    return hashlib.sha256(f"{seed}\0{normalized_prompt}".encode()).digest()


def partition(rows: list[dict], validation: ValidationPrompts) -> dict[str, list[dict]]:
    """The rows of each split (rule 6): validation when the row's prompt is a validation prompt."""
    if not validation:  # validation_fraction 0 and no prompt named for validation
        return {"train": list(rows)}
    parts: dict[str, list[dict]] = {"train": [], "validation": []}
    for row in rows:
        prompt = normalize(next(m["content"] for m in row["messages"] if m["role"] == "user"))
        parts["validation" if prompt in validation else "train"].append(row)
    return parts


def split_rows(parts: dict[str, list[dict]], validation: ValidationPrompts, dropped: list[dict]):
    from datasets import DatasetDict

    empty = [name for name, part in parts.items() if not part]
    if empty:
        counts = Counter(d["reason"] for d in dropped)
        why = ", ".join(f"{n} {reason}" for reason, n in counts.items()) or "none dropped"
        rows = sum(len(part) for part in parts.values())
        raise UserError(
            f"{rows} row(s) survive the filters (dropped: {why}), none of them for the {empty[0]} split "
            f"({len(validation)} validation prompts of the records): loosen the filters, add records, or lower "
            "validation_rows / set validation_fraction 0 for a train split only"
        )
    # Sorted by id: the rows' order in a split does not depend on the order records were written in.
    return DatasetDict({name: _dataset(sorted(part, key=lambda row: row["id"])) for name, part in parts.items()})


ROWS_PER_TABLE = 10_000  # rows turned into Arrow at once: from_list's copies of them in between stay this small


def _dataset(rows: list[dict]):
    """`Dataset.from_list(rows)`, built a slice at a time."""
    from datasets import Dataset, concatenate_datasets

    slices = [
        Dataset.from_list(rows[start : start + ROWS_PER_TABLE], features=features())
        for start in range(0, len(rows), ROWS_PER_TABLE)
    ]
    if len(slices) == 1:
        return slices[0]
    joined = concatenate_datasets(slices)
    joined.reset_format()  # concatenate_datasets names every column in the format; from_list names none
    return joined


# -- lengths ---------------------------------------------------------------------------------


def measured(config: FormatConfig) -> bool:
    """Whether step 7 runs: training's tokenizer and max_length are both given."""
    return config.tokenizer is not None and config.max_length is not None


@dataclass(frozen=True)
class RowLength:
    tokens: int  # the whole row, as training tokenizes it
    end_of_turn: int  # tokens up to and including the last assistant turn's end-of-turn token


class RowMeter:
    """Measures rows in tokens as `spri-sft train` renders them, with the student's tokenizer.

    The template is training's (`choose_training_template` with `training_template`; Alpaca for a
    tokenizer without one, `approximate` then); a template that cannot be marked is measured by
    prefix rendering, as training masks it (`encode_with_prefix_masks`). The end-of-turn token is the
    last special token of the assistant mask (`<|im_end|>`, `<end_of_turn>`, `<|eot_id|>`, EOS: what
    training checks is trained), not a newline some templates train after it; a mask without one
    ends at its last token.
    """

    BATCH = 512

    def __init__(self, name: str, training_template: str = "model"):
        import functools

        from transformers import AutoTokenizer

        from spri_sft.format.template import UnmarkableTemplateError, choose_training_template, encode_with_prefix_masks
        from spri_sft.models import resolve_model

        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model(name, setting="tokenizer"))
        except (OSError, ValueError) as err:
            raise UserError(
                f"tokenizer {name}: cannot be loaded ({str(err).splitlines()[0][:200]}); give the student's model "
                "directory or Hub id (training's model_name_or_path), or unset tokenizer and max_length"
            ) from None
        own = tokenizer.chat_template
        own = own.get("default") if isinstance(own, dict) else own
        self.approximate = training_template == "model" and not own
        self.encode = None
        try:
            chosen = choose_training_template(tokenizer, fallback="alpaca", template=training_template)
        except UnmarkableTemplateError:
            self.encode = functools.partial(encode_with_prefix_masks, tokenizer)
            self.template = "the model's own chat template (assistant turns found by prefix rendering)"
        else:
            tokenizer.chat_template = chosen.text
            self.template = chosen.source
        self.tokenizer = tokenizer
        self.special = set(tokenizer.all_special_ids)
        self.special |= {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}

    def measure(self, conversations: list[list[dict]]) -> list[RowLength]:
        found = []
        for start in range(0, len(conversations), self.BATCH):
            batch = conversations[start : start + self.BATCH]
            if self.encode is not None:
                encoded = [self.encode(conversation) for conversation in batch]
                ids, masks = [e["input_ids"] for e in encoded], [e["assistant_masks"] for e in encoded]
            else:
                encoded = self.tokenizer.apply_chat_template(
                    batch, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
                )
                ids, masks = encoded["input_ids"], encoded["assistant_masks"]
            for row_ids, mask in zip(ids, masks):
                trained = [i for i, bit in enumerate(mask) if bit] or [len(row_ids) - 1]
                ends = [i for i in trained if row_ids[i] in self.special] or trained
                found.append(RowLength(len(row_ids), ends[-1] + 1))
        return found

    def prompt_tokens(self, conversation: list[dict]) -> int:
        """Tokens before the last assistant message's content: the conversation up to it, generation prompt added."""
        last = max(i for i, message in enumerate(conversation) if message["role"] == "assistant")
        encoded = self.tokenizer.apply_chat_template(
            conversation[:last], tokenize=True, return_dict=True, add_generation_prompt=True
        )
        return len(encoded["input_ids"])


def check_lengths(parts: dict[str, list[dict]], config: FormatConfig, dropped: list[dict]) -> tuple[dict, dict]:
    """Step 7: measure every row; drop the ones over max_length under `overlong: drop`; the counts per split."""
    meter = RowMeter(config.tokenizer, config.training_template)
    limit = config.max_length
    counts = {key: {} for key in ("rows", "over_max_length", "lost_eos", "prompt_too_long", "dropped")}
    longest = 0
    kept_parts = {}
    for name, part in parts.items():
        lengths = meter.measure([row["messages"] for row in part])
        over = [(row, length) for row, length in zip(part, lengths) if length.tokens > limit]
        prompts = {row["id"]: meter.prompt_tokens(row["messages"]) for row, _ in over}
        counts["rows"][name] = len(part)
        counts["over_max_length"][name] = len(over)
        counts["lost_eos"][name] = sum(length.end_of_turn > limit for _, length in over)
        counts["prompt_too_long"][name] = sum(prompts[row["id"]] >= limit for row, _ in over)
        longest = max([longest, *(length.tokens for length in lengths)])
        if config.overlong == "drop":
            for row, length in over:
                detail = f"{length.tokens} tokens > max_length {limit} (prompt {prompts[row['id']]})"
                dropped.append(dropped_entry(row, OVERLONG_REASON, detail))
            cut = {row["id"] for row, _ in over}
            part = [row for row in part if row["id"] not in cut]
        counts["dropped"][name] = counts["rows"][name] - len(part)
        kept_parts[name] = part
    lengths = {
        "checked": True,
        "max_length": limit,
        "tokenizer": config.tokenizer,
        "template": meter.template,
        "approximate": meter.approximate,
        "policy": config.overlong,
        **counts,
        "longest": longest,
    }
    return kept_parts, lengths


def summarize(config, records: int, kept, dropped, splits, named) -> dict:
    """The summary of `records` read, of which `kept` (their briefs, as `read_kept` filled them) are the rows."""

    def models(role: str) -> dict[str, int]:
        found = Counter(r["models"][role] for r in kept)
        found.pop(None, None)
        return dict(found.most_common())

    def scores(stage: str) -> dict[str, int]:
        found = Counter(str(r["scores"][stage]) for r in kept if stage in r["scores"])
        return dict(sorted(found.items()))

    counts = Counter(d["reason"] for d in dropped)
    reasons = REASONS + ((OVERLONG_REASON,) if measured(config) else ())
    return {
        "records": records,
        "dropped": {reason: counts[reason] for reason in reasons},
        "rows": len(kept),
        "splits": {name: len(split) for name, split in splits.items()},
        # Distinct prompts whose split their generate source named (rule 6); the others' split is hashed.
        "named_split_prompts": {name: sum(split == name for split in named.values()) for name in SPLITS},
        "modes": dict(Counter(r["mode"] for r in kept).most_common()),
        "models": {"base": models("base"), "critic": models("critic")},
        "final_score": {"response": scores("response"), "principles": scores("principles")},
        "output_dir": str(config.output_dir),
    }


# -- save ------------------------------------------------------------------------------------


def save(splits, summary: dict, card: str, dropped: list[dict], config: FormatConfig) -> None:
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(output_dir / "hf", ignore_errors=True)
    shutil.rmtree(output_dir / PREFERENCE_DIR, ignore_errors=True)  # rewritten after this when `preference` is set
    for name in SPLITS:
        for suffix in (".jsonl", ".parquet"):
            (output_dir / f"{name}{suffix}").unlink(missing_ok=True)
    with _quiet_datasets():
        splits.save_to_disk(str(output_dir / "hf"))
        for name, split in splits.items():
            split.to_json(output_dir / f"{name}.jsonl", force_ascii=False)
            split.to_parquet(output_dir / f"{name}.parquet")
    (output_dir / "README.md").write_text(card, encoding="utf-8")
    with (output_dir / "dropped.jsonl").open("w", encoding="utf-8") as handle:
        for entry in dropped:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    dump_yaml(config, output_dir / "config.yaml")


def push(splits, card: str, repo_id: str) -> None:
    """Push the splits (parquet shards) to a Hub dataset repo, then replace the card's text with ours.

    `DatasetDict.push_to_hub` writes the card's metadata (configs, dataset_info) that `load_dataset`
    reads on the Hub; only the text below it is ours, since our metadata names local files.
    """
    from huggingface_hub import DatasetCard

    splits.push_to_hub(repo_id)
    hub_card = DatasetCard.load(repo_id, repo_type="dataset")
    hub_card.text = card.split("\n---\n", 1)[1] if card.startswith("---\n") else card
    hub_card.push_to_hub(repo_id, repo_type="dataset", commit_message="Dataset card from spri-sft format")


@contextlib.contextmanager
def _quiet_datasets():
    """No `datasets` progress bars for these sub-second writes; restores the caller's setting."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
