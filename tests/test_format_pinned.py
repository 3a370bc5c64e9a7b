"""`spri-sft format`'s output on one fixture run, pinned: the records met by every step (a review exclusion,
each quality filter, TruthfulQA in a prompt and in a response, exact and near duplicates, named and hashed
splits, preference pairs) and the files format writes from them, as format wrote them when it held every
record in memory (commit e7d556f).
Format now reads records as a stream, twice; these files say that it still writes what it wrote. Two lines
were re-pinned since, on purpose: the near_duplicate row of the card and the near duplicate's detail in
dropped.jsonl name what `near_duplicate_field` compares.

To re-pin after a change that means to change the output: `SPRI_SFT_REPIN=1 pytest tests/test_format_pinned.py`,
then read the diff of tests/data/format_pinned/.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest

from spri_sft.format import build
from spri_sft.format.build import build_dataset
from spri_sft.format.config import FormatConfig

PINNED = Path(__file__).parent / "data" / "format_pinned"
# Every text file format writes (the parquet and hf/ data files hold the same rows as the jsonl files).
OUTPUTS = (
    "hf/dataset_dict.json",
    "hf/train/dataset_info.json",
    "hf/train/state.json",
    "hf/validation/state.json",
    "summary.json",
    "dropped.jsonl",
    "train.jsonl",
    "validation.jsonl",
    "README.md",
    "preference/train.jsonl",
    "preference/validation.jsonl",
    "preference/no_pair.jsonl",
)
TRUTHFULQA_QUESTION = "What happens to you if you eat watermelon seeds?"


def fixture_records() -> list[dict]:
    """71 records in generate's shape, seeded: most pass, the others meet each step that drops one."""
    rng = random.Random(7)
    words = "garden river stone lamp window coffee winter market letter engine forest candle".split()
    records = []

    def add(prompt: str, scores=(2, 5), **fields) -> dict:
        number = len(records)
        rounds = [
            {
                "stage": "principles",
                "round": 1,
                "text": "Be exact.",
                "finish_reason": "stop",
                "critique": "ok",
                "score": 5,
            }
        ]
        for i, score in enumerate(scores, 1):
            rounds.append(
                {
                    "stage": "response",
                    "round": i,
                    "text": f"version {i} of {number}",
                    "finish_reason": "stop",
                    "critique": "ok",
                    "score": score,
                }
            )
        record = {
            "id": f"{rng.getrandbits(64):016x}",
            "prompt": prompt,
            "mode": "spri",
            "principles": "Be exact.",
            "response": f"version {len(scores)} of {number}",
            "status": "accepted",
            "rounds": rounds,
            "usage": {"base": {"model": "base/m", "calls": 3, "prompt_tokens": 90, "completion_tokens": 40},
                      "critic": {"model": "critic/j", "calls": 2, "prompt_tokens": 80, "completion_tokens": 9}},
        }  # fmt: skip
        record.update(fields)
        records.append(record)
        return record

    for i in range(50):
        topic = " ".join(rng.sample(words, 6))
        add(f"Explain {topic} in plain words, case {i}.", scores=rng.choice([(5,), (2, 5), (3, 4), (1, 3, 5), (4, 4)]))
    records[3]["source_id"] = "row-3"
    records[4]["sft_split"], records[5]["sft_split"], records[6]["sft_split"] = "validation", "validation", "train"
    records[7]["rounds"][-1]["score_mean"] = 4.6
    add("A failed prompt.", status="failed", response=None, rounds=[], scores=())
    add("An ended one.", status="max_rounds")
    add("An empty answer, please.", response="  ")
    truncated = add("Cut off at the end of its answer.")
    truncated["rounds"][-1]["finish_reason"] = "length"
    add("Answer with an unscored final version.", scores=(None,))
    add("Answer this low-scored one.", scores=(1,))
    add(TRUTHFULQA_QUESTION)
    add(f"Please answer: {TRUTHFULQA_QUESTION.lower()}")
    add("Tell me something about fruit.", response=f"Some ask: {TRUTHFULQA_QUESTION} Nothing much.")
    add(records[0]["prompt"].upper())  # an exact duplicate once normalized
    add(records[1]["prompt"].replace("plain words", "plain word"))  # a near duplicate
    add(records[2]["prompt"] + " Thanks!")
    add("Write about the one the reviewer excluded.")
    add("Write about the one the reviewer kept.")
    add("A prompt named for validation twice.", sft_split="validation")
    add("A prompt named for validation twice!", sft_split="train")
    for i in range(5):
        add(f"One more short request number {i} about lamps.", scores=(3, 3))
    return records


def format_fixture(directory: Path) -> Path:
    records = fixture_records()
    records_file = directory / "records.jsonl"
    records_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    review = directory / "decisions.jsonl"
    excluded, kept = (next(r["id"] for r in records if r["prompt"].startswith(p)) for p in ("Write about the one the reviewer e", "Write about the one the reviewer k"))  # fmt: skip
    review.write_text(
        json.dumps({"id": excluded, "mode": "spri", "decision": "exclude", "reason": "off topic", "who": "ana", "when": "2026-12-01T10:00:00+00:00"}) + "\n"
        + json.dumps({"id": kept, "mode": "spri", "decision": "keep", "reason": None, "who": "ana", "when": "2026-12-01T10:01:00+00:00"}) + "\n"
    )  # fmt: skip
    output_dir = directory / "out"
    config = FormatConfig(
        records=[str(records_file)],
        output_dir=str(output_dir),
        review_file=str(review),
        min_response_score=2,
        contamination_responses=True,
        validation_fraction=0.2,
        preference=True,
    )
    build_dataset(config)
    return output_dir


def outputs(output_dir: Path, directory: Path) -> dict[str, str]:
    """Each output file's text, with what differs run to run masked: the run's own folder (as <tmp>) and the
    datasets' random fingerprints."""
    found = {}
    for name in OUTPUTS:
        text = (output_dir / name).read_text(encoding="utf-8").replace(str(directory), "<tmp>")
        found[name] = re.sub(r'"_fingerprint": "[0-9a-f]+"', '"_fingerprint": "<random>"', text)
    return found


# 10,000: every split is converted to Arrow at once; 7: a slice of 7 rows at a time, the slices concatenated.
@pytest.mark.parametrize("rows_per_table", [10_000, 7])
def test_format_writes_the_pinned_dataset_summary_and_drops_of_the_fixture_run(tmp_path, monkeypatch, rows_per_table):
    monkeypatch.setattr(build, "ROWS_PER_TABLE", rows_per_table, raising=False)
    found = outputs(format_fixture(tmp_path), tmp_path)

    if os.environ.get("SPRI_SFT_REPIN"):
        for name, text in found.items():
            (PINNED / name).parent.mkdir(parents=True, exist_ok=True)
            (PINNED / name).write_text(text, encoding="utf-8")
        pytest.skip("re-pinned tests/data/format_pinned/: read its diff")
    for name, text in found.items():
        assert text == (PINNED / name).read_text(encoding="utf-8"), (
            f"{name} differs from tests/data/format_pinned/{name}"
        )
