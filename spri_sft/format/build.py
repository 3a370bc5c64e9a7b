"""`spri-sft format`: records.jsonl files in, a Hugging Face SFT dataset in TRL's conversational format out.

Steps, in this order; a record is counted under the first step that drops it:

1. load: every line of every `records` file, in the order given, read by `spri_sft.rows` (a
   blank line is skipped; a malformed line or a record missing a field stops the run with its
   file and line).
2. quality filters, on the final version of the response (the last `response` round):
   `status`: the record's status is not in `statuses`;
   `empty_response`: the response is missing or blank;
   `truncated`: `drop_truncated` and the final version's finish_reason is "length";
   `response_score`: `min_response_score` is set and the final version's critic score is
   lower, or missing (an unscored round, or a mode without a critic).
3. `truthfulqa`: the prompt overlaps a question of `truthfulqa_file` (the rule is in
   `spri_sft.format.contamination`). It runs before deduplication so that every contaminated
   record is counted and none can stand in for a clean near duplicate of itself.
4. `duplicate`: the normalized prompt equals an earlier kept one; `near_duplicate`: its word
   3-gram Jaccard similarity to an earlier kept prompt is >= `near_duplicate_threshold` (the
   rules are in `spri_sft.format.dedupe`). The first record of a group is kept.
5. rows: `messages` = [system (if `system_prompt`), user: prompt, assistant: response] and the
   provenance columns `id`, `mode`, `principles` (null without principles), `principles_score`
   and `response_score` (the final versions' critic scores, null when unscored or absent) and
   `status`.
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
7. save, in `output_dir` (earlier outputs of this step there are replaced):
     hf/                          `DatasetDict.save_to_disk`: `datasets.load_from_disk(f"{output_dir}/hf")`
     train.jsonl, validation.jsonl        one row per line
     train.parquet, validation.parquet    the card's `configs` name these: `load_dataset(output_dir)` works too
     README.md                    the dataset card: method, models, counts per step, scores, filters
     summary.json                 what `build_dataset` returns
     dropped.jsonl                one line per dropped record: id, reason, detail
     config.yaml                  the effective configuration
     preference/                  with `preference`: DPO pairs of the kept records, split as the rows are
                                  (hf/, {train,validation}.jsonl, no_pair.jsonl; `spri_sft.format.preference`)
   and, with `push_to_hub`, the splits and the card go to that Hub dataset repo.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import logging
import shutil
from collections import Counter
from pathlib import Path

from spri_sft.config import dump_yaml
from spri_sft.errors import UserError
from spri_sft.format.card import render_card
from spri_sft.format.config import STATUSES, FormatConfig
from spri_sft.format.contamination import TruthfulQAGuard, read_questions
from spri_sft.format.dedupe import exact_duplicates, near_duplicates, normalize
from spri_sft.format.preference import PREFERENCE_DIR, build_preference, save_preference
from spri_sft.generate.inputs import SFT_SPLITS
from spri_sft.rows import read_jsonl

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = ("id", "prompt", "mode", "status", "response", "rounds")
# Every drop reason, in the order the steps run.
REASONS = ("status", "empty_response", "truncated", "response_score", "truthfulqa", "duplicate", "near_duplicate")
SPLITS = ("train", "validation")


def build_dataset(config: FormatConfig) -> dict:
    """Run every step of the module docstring and return the summary (also written to summary.json)."""
    _check(config)
    records = read_records(config.records)
    dropped: list[dict] = []

    def drop(record: dict, reason: str, detail: str = "") -> None:
        dropped.append({"id": record["id"], "reason": reason, "detail": detail})

    kept = []
    for record in records:
        failed = quality_failure(record, config)
        if failed:
            drop(record, *failed)
        else:
            kept.append(record)

    questions = None
    if config.truthfulqa_file:
        questions = read_questions(config.truthfulqa_file)
        guard = TruthfulQAGuard(questions, config.contamination_ngram, config.contamination_threshold)
        clean = []
        for record in kept:
            question = guard.match(record["prompt"])
            if question is None:
                clean.append(record)
            else:
                drop(record, "truthfulqa", question)
        kept = clean
    else:
        logger.warning("no --truthfulqa_file given: prompts are not checked against TruthfulQA")

    duplicates = exact_duplicates([r["prompt"] for r in kept])
    for i, first in duplicates.items():
        drop(kept[i], "duplicate", kept[first]["id"])
    kept = [r for i, r in enumerate(kept) if i not in duplicates]
    if config.near_duplicate_threshold is not None:
        duplicates = near_duplicates([r["prompt"] for r in kept], config.near_duplicate_threshold)
        for i, (first, similarity) in duplicates.items():
            drop(kept[i], "near_duplicate", f"{kept[first]['id']} (Jaccard {similarity:.2f})")
        kept = [r for i, r in enumerate(kept) if i not in duplicates]

    rows = [to_row(record, config.system_prompt) for record in kept]
    named = named_splits(records)
    validation = validation_prompts(records, config, named)
    splits = split_rows(rows, validation, config, dropped)

    summary = summarize(config, records, kept, dropped, splits, questions, named)
    if config.preference:
        pairs, no_pair, summary["preference"] = build_preference(
            kept, validation, config.preference_margin, config.system_prompt
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
    if config.contamination_ngram < 1:
        raise UserError(f"contamination_ngram must be >= 1, got {config.contamination_ngram}")
    if not 0 < config.contamination_threshold <= 1:
        raise UserError(f"contamination_threshold must be in (0, 1], got {config.contamination_threshold}")
    if config.preference_margin <= 0:
        raise UserError(f"preference_margin must be > 0 (a rejected version scored that much lower), got {config.preference_margin}")


# -- load ------------------------------------------------------------------------------------


TORN_LINE = "a generate run killed mid-write leaves a torn last line, which rerunning it repairs; otherwise fix or remove the line"


def read_records(paths: list[str]) -> list[dict]:
    records = []
    for path in map(Path, paths):
        if not path.is_file():
            raise UserError(f"{path}: records file not found (the records.jsonl of a `spri-sft generate` run)")
        for row in read_jsonl(path, "records file", malformed_hint=TORN_LINE):
            records.append(_check_record(row.value, f"{path}:{row.where}"))
    return records


def _check_record(record, where: str) -> dict:
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
    if record.get("sft_split", "auto") not in SFT_SPLITS:
        raise UserError(f"{where}: field 'sft_split' must be one of {', '.join(SFT_SPLITS)}, got {record['sft_split']!r:.60}")
    return record


# -- filter ----------------------------------------------------------------------------------


def final_round(record: dict, stage: str) -> dict | None:
    """The last round of `stage` ("principles" or "response"): the version that was kept."""
    rounds = [r for r in record["rounds"] if r["stage"] == stage]
    return rounds[-1] if rounds else None


def final_score(record: dict, stage: str) -> int | None:
    last = final_round(record, stage)
    return None if last is None else last.get("score")


def quality_failure(record: dict, config: FormatConfig) -> tuple[str, str] | None:
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
        }
    )


def to_row(record: dict, system_prompt: str | None) -> dict:
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
    }


def named_splits(records: list[dict]) -> dict[str, str]:
    """Normalized prompt -> the SFT split its generate source named (train or validation; rule 6)."""
    named: dict[str, str] = {}
    for record in records:
        split = record.get("sft_split", "auto")
        if split != "auto":
            prompt = normalize(record["prompt"])
            named[prompt] = "validation" if "validation" in (split, named.get(prompt)) else split
    return named


def validation_prompts(records: list[dict], config: FormatConfig, named: dict[str, str]) -> set[str]:
    """The normalized prompts of the validation split, chosen among every loaded record's prompt (rule 6):
    the ones `named` for validation, then the hash's choice among the prompts not named."""
    chosen = {prompt for prompt, split in named.items() if split == "validation"}
    prompts = {normalize(record["prompt"]) for record in records}
    hashed = sorted(prompts - set(named), key=lambda text: _prompt_rank(text, config.seed))
    if config.validation_rows is not None:
        wanted = config.validation_rows
    else:
        wanted = math.ceil(config.validation_fraction * len(prompts))
    return chosen | set(hashed[: max(0, wanted - len(chosen))])


def _prompt_rank(normalized_prompt: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\0{normalized_prompt}".encode()).hexdigest()


def split_rows(rows: list[dict], validation: set[str], config: FormatConfig, dropped: list[dict]):
    from datasets import Dataset, DatasetDict

    if not validation:  # validation_fraction 0 and no prompt named for validation
        parts = {"train": rows}
    else:
        parts = {"train": [], "validation": []}
        for row in rows:
            prompt = normalize(next(m["content"] for m in row["messages"] if m["role"] == "user"))
            parts["validation" if prompt in validation else "train"].append(row)
    empty = [name for name, part in parts.items() if not part]
    if empty:
        counts = Counter(d["reason"] for d in dropped)
        why = ", ".join(f"{n} {reason}" for reason, n in counts.items()) or "none dropped"
        raise UserError(
            f"{len(rows)} row(s) survive the filters (dropped: {why}), none of them for the {empty[0]} split "
            f"({len(validation)} validation prompts of the records): loosen the filters, add records, or lower "
            "validation_rows / set validation_fraction 0 for a train split only"
        )
    # Sorted by id: the rows' order in a split does not depend on the order records were written in.
    return DatasetDict(
        {name: Dataset.from_list(sorted(part, key=lambda row: row["id"]), features=features()) for name, part in parts.items()}
    )


def summarize(config, records, kept, dropped, splits, questions, named) -> dict:
    def models(role: str) -> dict[str, int]:
        found = Counter(((r.get("usage") or {}).get(role) or {}).get("model") for r in kept)
        found.pop(None, None)
        return dict(found.most_common())

    def scores(stage: str) -> dict[str, int]:
        found = Counter(str(final_score(r, stage)) for r in kept if final_round(r, stage) is not None)
        return dict(sorted(found.items()))

    counts = Counter(d["reason"] for d in dropped)
    return {
        "records": len(records),
        "dropped": {reason: counts[reason] for reason in REASONS},
        "rows": len(kept),
        "splits": {name: len(split) for name, split in splits.items()},
        # Distinct prompts whose split their generate source named (rule 6); the others' split is hashed.
        "named_split_prompts": {name: sum(split == name for split in named.values()) for name in SPLITS},
        "modes": dict(Counter(r["mode"] for r in kept).most_common()),
        "models": {"base": models("base"), "critic": models("critic")},
        "final_score": {"response": scores("response"), "principles": scores("principles")},
        "truthfulqa_questions": None if questions is None else len(questions),
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
