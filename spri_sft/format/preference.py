"""Preference pairs from the critique trajectories: a DPO dataset at no extra model call.

Every critic-scored record keeps each version of its response (its `rounds` of stage "response",
each with its text and the critic's verdict). A pair is the record's final response against an
earlier version the critic scored clearly lower:

* chosen: the final response, the one the SFT row holds; its score is the final version's;
* a version's score is the accept rule's statistic (`spri_sft.generate.scoring.Verdict`): the mean of
  the critic's digit distribution under `score: expected` (`score_mean`), else the integer score;
* rejected: among the earlier versions scored at least `preference_margin` below the chosen one, not
  blank and not the chosen text itself, the lowest-scored (the earliest on a tie): the widest gap the
  trajectory offers.

A record without a pair is counted under the first reason that applies:
  `single_version`: one response version (direct, self-instruct, oracle, or accepted at the first critique);
  `final_unscored`: the final version has no score (self-refine's last refinement, an unscored critique);
  `earlier_unscored`: no earlier version has a score;
  `within_margin`: every scored earlier version is less than `preference_margin` below the final one;
  `same_text`: the only versions far enough below repeat the final text (or are blank).

Rows are in TRL's conversational preference format, which `trl.DPOTrainer` reads as is: `prompt`
(the system message when the format uses one, then the user message), `chosen` and `rejected`
(one assistant message each), plus `chosen_score`, `rejected_score`, `chosen_round`,
`rejected_round`, `mode` and `record_id`. They are split like the SFT rows, on the prompt
(`spri_sft.format.build`, rule 6), so a validation prompt of the SFT data is one here too.

Imports: `spri_sft.format.dedupe` (prompt normalization), `spri_sft.generate.record` (the records, as
`spri_sft.format.build.read_records` checked them), `datasets` (inside the functions).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path

from spri_sft.format.dedupe import normalize
from spri_sft.generate.record import Record, Round

logger = logging.getLogger(__name__)

# Every no-pair reason, in the order they are tried.
NO_PAIR_REASONS = ("single_version", "final_unscored", "earlier_unscored", "within_margin", "same_text")
PREFERENCE_DIR = "preference"


@dataclass(frozen=True)
class NoPair:
    """Why a record gives no pair: one of NO_PAIR_REASONS, and a detail for no_pair.jsonl."""

    reason: str
    detail: str = ""


def version_score(round_: Round) -> float | None:
    """The critic's statistic for one version: the accept rule's (score_mean under `expected`, else score)."""
    mean = round_.get("score_mean")
    if mean is not None:
        return float(mean)
    score = round_.get("score")
    return None if score is None else float(score)


def preference_pair(record: Record, margin: float, system_prompt: str | None = None) -> dict | NoPair:
    """The record's preference row (module docstring), or why it has none."""
    versions = [r for r in record["rounds"] if r["stage"] == "response"]
    if len(versions) < 2:
        return NoPair("single_version")
    final, earlier = versions[-1], versions[:-1]
    chosen_score = version_score(final)
    if chosen_score is None:
        return NoPair("final_unscored", f"round {final.get('round')}")
    scored = [(version_score(v), v) for v in earlier if version_score(v) is not None]
    if not scored:
        return NoPair("earlier_unscored", f"{len(earlier)} earlier version(s)")
    low_enough = [(score, v) for score, v in scored if score <= chosen_score - margin]
    if not low_enough:
        best_gap = chosen_score - min(score for score, _ in scored)
        return NoPair("within_margin", f"final {chosen_score:g}, widest gap {best_gap:g} < {margin:g}")
    chosen_text = record["response"]
    distinct = [(s, v) for s, v in low_enough if v["text"].strip() and v["text"].strip() != chosen_text.strip()]
    if not distinct:
        return NoPair("same_text", f"{len(low_enough)} version(s) far enough below repeat the final text or are blank")
    # min() keeps the first of equal keys: the earliest version among the lowest-scored.
    rejected_score, rejected = min(distinct, key=lambda pair: pair[0])
    prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prompt.append({"role": "user", "content": record["prompt"]})
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen_text}],
        "rejected": [{"role": "assistant", "content": rejected["text"]}],
        "chosen_score": chosen_score,
        "rejected_score": rejected_score,
        "chosen_round": final.get("round"),
        "rejected_round": rejected.get("round"),
        "mode": record["mode"],
        "record_id": record["id"],
    }


def preference_pairs(found: list[tuple[str, dict | NoPair]]):
    """(pair rows, no-pair entries {id, reason, detail}) of each (record id, its `preference_pair`), in order."""
    pairs, no_pair = [], []
    for record_id, pair in found:
        if isinstance(pair, NoPair):
            no_pair.append({"id": record_id, "reason": pair.reason, "detail": pair.detail})
        else:
            pairs.append(pair)
    return pairs, no_pair


def features():
    from datasets import Features, List, Value

    message = List({"role": Value("string"), "content": Value("string")})
    return Features(
        {
            "prompt": message,
            "chosen": message,
            "rejected": message,
            "chosen_score": Value("float32"),
            "rejected_score": Value("float32"),
            "chosen_round": Value("int32"),
            "rejected_round": Value("int32"),
            "mode": Value("string"),
            "record_id": Value("string"),
        }
    )


def split_pairs(pairs: list[dict], validation_prompts: Container[str]) -> dict[str, list[dict]]:
    """train/validation by the SFT split's validation prompts (normalized); a split without pairs is left out,
    since a trainer cannot evaluate on an empty one (the train entry then names the splits there are)."""
    parts: dict[str, list[dict]] = {"train": [], "validation": []}
    for pair in pairs:
        user = next(m["content"] for m in pair["prompt"] if m["role"] == "user")
        parts["validation" if normalize(user) in validation_prompts else "train"].append(pair)
    # Sorted by record id, as the SFT rows are: the order does not depend on the order records were written in.
    return {name: sorted(part, key=lambda p: p["record_id"]) for name, part in parts.items() if part}


def assemble_preference(found: list[tuple[str, dict | NoPair]], validation_prompts: Container[str], margin: float):
    """(splits of pair rows, no-pair entries, the summary's `preference` entry) of the records format kept: each
    as (its id, its `preference_pair`), computed as format read it (the records themselves are not kept)."""
    pairs, no_pair = preference_pairs(found)
    splits = split_pairs(pairs, validation_prompts)
    counts = Counter(entry["reason"] for entry in no_pair)
    summary = {
        "margin": margin,
        "records": len(found),
        "pairs": len(pairs),
        "splits": {name: len(part) for name, part in splits.items()},
        "no_pair": {reason: counts[reason] for reason in NO_PAIR_REASONS},
        "modes": dict(Counter(p["mode"] for p in pairs).most_common()),
        "gap": _gap_summary(pairs),
    }
    return splits, no_pair, summary


def _gap_summary(pairs: list[dict]) -> dict | None:
    if not pairs:
        return None
    gaps = sorted(p["chosen_score"] - p["rejected_score"] for p in pairs)
    return {"min": round(gaps[0], 4), "median": round(gaps[len(gaps) // 2], 4), "max": round(gaps[-1], 4)}


def save_preference(splits: dict[str, list[dict]], no_pair: list[dict], output_dir: Path) -> Path | None:
    """Write <output_dir>/preference/: hf/ (load_from_disk), {split}.jsonl and no_pair.jsonl; earlier ones are
    replaced. Without a training pair nothing is written but no_pair.jsonl, and None is returned."""
    from datasets import Dataset, DatasetDict

    directory = output_dir / PREFERENCE_DIR
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    with (directory / "no_pair.jsonl").open("w", encoding="utf-8") as handle:
        for entry in no_pair:
            handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
    if "train" not in splits:
        logger.warning(
            "preference: no training pair (see %s); no preference dataset written", directory / "no_pair.jsonl"
        )
        return None
    if "validation" not in splits:
        logger.warning("preference: no validation pair; the preference dataset has a train split only")
    dataset = DatasetDict({name: Dataset.from_list(part, features=features()) for name, part in splits.items()})
    dataset.save_to_disk(str(directory / "hf"))
    for name, split in dataset.items():
        split.to_json(directory / f"{name}.jsonl", force_ascii=False)
    return directory / "hf"
