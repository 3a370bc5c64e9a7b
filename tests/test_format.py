"""`spri-sft format`: records.jsonl → a Hugging Face dataset in TRL's conversational format.

Records are written by hand in the shape `spri-sft generate` writes them; every test builds a
real dataset with `build_dataset` and reads back what it saved.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from datasets import load_dataset, load_from_disk

from spri_sft.errors import UserError
from spri_sft.format import dedupe
from spri_sft.format.build import build_dataset
from spri_sft.format.config import FormatConfig
from spri_sft.format.dedupe import SHINGLE_WORDS, near_duplicates, normalize, word_ngrams

TRUTHFULQA_QUESTION = "What is the smallest country in the world that is at least one square mile in area?"


def make_record(
    number: int,
    prompt: str | None = None,
    *,
    status: str = "accepted",
    response: str | None = "A helpful answer.",
    scores: list[int | None] = (5,),
    finish_reasons: list[str] | None = None,
    mode: str = "spri",
) -> dict:
    """A record as `spri-sft generate` writes it; one response round per entry of `scores`."""
    finish_reasons = finish_reasons or ["stop"] * len(scores)
    rounds = [
        {
            "stage": "principles",
            "round": 1,
            "text": "Be exact.",
            "finish_reason": "stop",
            "critique": "Good.",
            "score": 5,
        }
    ]
    for i, (score, reason) in enumerate(zip(scores, finish_reasons), 1):
        rounds.append(
            {
                "stage": "response",
                "round": i,
                "text": f"version {i}",
                "finish_reason": reason,
                "critique": "ok",
                "score": score,
            }
        )
    return {
        "id": f"rec{number:03d}",
        "prompt": prompt if prompt is not None else f"Write note {number} about keeping a garden",
        "mode": mode,
        "principles": "Be exact.",
        "response": response,
        "status": status,
        "error": None,
        "rounds": rounds,
        "usage": {
            "base": {"model": "base/model-7b", "calls": 2, "prompt_tokens": 100, "completion_tokens": 50},
            "critic": {"model": "critic/judge-8x7b", "calls": 2, "prompt_tokens": 200, "completion_tokens": 20},
        },
    }


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def build(tmp_path: Path, records: list[dict], name: str = "out", **settings) -> tuple[dict, Path]:
    records_file = write_records(tmp_path / f"{name}-records.jsonl", records)
    output_dir = tmp_path / name
    settings.setdefault("validation_fraction", 0.25)
    summary = build_dataset(FormatConfig(records=[str(records_file)], output_dir=str(output_dir), **settings))
    return summary, output_dir


def row_ids(output_dir: Path) -> set[str]:
    splits = load_from_disk(str(output_dir / "hf"))
    return {row_id for split in splits.values() for row_id in split["id"]}


def dropped(output_dir: Path) -> dict[str, tuple[str, str]]:
    lines = (output_dir / "dropped.jsonl").read_text().splitlines()
    return {entry["id"]: (entry["reason"], entry["detail"]) for entry in map(json.loads, lines)}


FILLER = [make_record(n) for n in range(100, 104)]  # clean records, so every build has rows to split


# -- quality filters -------------------------------------------------------------------------


def test_status_filter_drops_exactly_the_other_statuses(tmp_path):
    records = [
        make_record(1, status="accepted"),
        make_record(2, status="max_rounds"),
        make_record(3, status="failed", response=None),
    ] + FILLER
    summary, out = build(tmp_path, records, statuses=["accepted"])
    assert dropped(out) == {"rec002": ("status", "max_rounds"), "rec003": ("status", "failed")}
    assert summary["dropped"]["status"] == 2
    assert "rec001" in row_ids(out)


def test_empty_or_missing_response_is_dropped_and_counted(tmp_path):
    records = [make_record(1, response="  \n"), make_record(2, response=None), make_record(3)] + FILLER
    summary, out = build(tmp_path, records, statuses=["accepted", "failed"])
    assert summary["dropped"]["empty_response"] == 2
    assert set(dropped(out)) == {"rec001", "rec002"}
    assert "rec003" in row_ids(out)


def test_only_a_truncated_final_response_is_dropped(tmp_path):
    final_cut = make_record(1, scores=[2, 5], finish_reasons=["stop", "length"])
    earlier_cut = make_record(2, scores=[2, 5], finish_reasons=["length", "stop"])
    summary, out = build(tmp_path, [final_cut, earlier_cut] + FILLER)
    assert summary["dropped"]["truncated"] == 1
    assert dropped(out) == {"rec001": ("truncated", "round 2")}
    assert "rec002" in row_ids(out)


def test_truncated_records_are_kept_when_drop_truncated_is_off(tmp_path):
    summary, out = build(tmp_path, [make_record(1, finish_reasons=["length"])] + FILLER, drop_truncated=False)
    assert summary["dropped"]["truncated"] == 0
    assert "rec001" in row_ids(out)


def test_min_response_score_judges_the_final_version_and_drops_unscored(tmp_path):
    records = [
        make_record(1, scores=[5]),
        make_record(2, scores=[4]),
        make_record(3, scores=[3]),
        make_record(4, scores=[None]),  # the critic never gave a score
        make_record(5, scores=[5, 2]),  # an earlier version scored 5; the kept one 2
        make_record(6, scores=[2, 4]),
    ] + FILLER
    summary, out = build(tmp_path, records, min_response_score=4)
    assert summary["dropped"]["response_score"] == 3
    assert dropped(out) == {
        "rec003": ("response_score", "score 3"),
        "rec004": ("response_score", "unscored"),
        "rec005": ("response_score", "score 2"),
    }
    assert {"rec001", "rec002", "rec006"} <= row_ids(out)


def test_unscored_records_are_kept_without_min_response_score(tmp_path):
    direct_filler = [dict(record, mode="direct") for record in FILLER]  # a dataset is one mode's records
    summary, out = build(tmp_path, [make_record(1, scores=[None], mode="direct")] + direct_filler)
    assert sum(summary["dropped"].values()) == 0
    assert "rec001" in row_ids(out)


# -- duplicates ------------------------------------------------------------------------------


def test_exact_duplicate_prompts_keep_the_first(tmp_path):
    records = [
        make_record(1, "What causes the seasons on Earth?"),
        make_record(2, "  what CAUSES the seasons on earth "),
        make_record(3, "What causes the seasons... on Earth!?"),
    ] + FILLER
    summary, out = build(tmp_path, records)
    assert summary["dropped"]["duplicate"] == 2
    assert dropped(out) == {"rec002": ("duplicate", "rec001"), "rec003": ("duplicate", "rec001")}
    assert "rec001" in row_ids(out)


def test_near_duplicate_prompts_keep_the_first_and_different_ones_stay(tmp_path):
    base = "Explain in simple terms how a refrigerator moves heat from the inside of the box to the kitchen air"
    records = [
        make_record(1, base),
        make_record(2, base + " please"),  # 19 shingles, 18 shared: Jaccard 0.947
        make_record(3, "Explain in simple terms how a heat pump warms a house in the middle of winter"),
    ] + FILLER
    summary, out = build(tmp_path, records)
    assert summary["dropped"]["near_duplicate"] == 1
    reason, detail = dropped(out)["rec002"]
    assert reason == "near_duplicate" and detail.startswith("rec001")
    assert {"rec001", "rec003"} <= row_ids(out)


def test_near_duplicates_are_kept_when_the_threshold_is_off(tmp_path):
    base = "Explain in simple terms how a refrigerator moves heat from the inside of the box to the kitchen air"
    summary, out = build(
        tmp_path, [make_record(1, base), make_record(2, base + " please")] + FILLER, near_duplicate_threshold=None
    )
    assert summary["dropped"]["near_duplicate"] == 0
    assert {"rec001", "rec002"} <= row_ids(out)


PASSAGE = (
    "The Amazon river carries more water than any other river on Earth, draining a basin of about seven million "
    "square kilometres across nine countries before it reaches the Atlantic Ocean near the city of Belem."
)


def with_context(number: int, instruction: str, context: str) -> dict:
    """A record of a prompt generate made from an instruction and a context (Dolly's `instruction` + `context`)."""
    return {**make_record(number, f"{instruction}\n\n{context}"), "instruction": instruction}


def test_two_questions_about_one_passage_are_not_near_duplicates_by_default(tmp_path):
    records = [
        with_context(1, "How many countries does the river cross?", PASSAGE),
        with_context(2, "Which ocean does the river reach?", PASSAGE),
    ] + FILLER
    summary, out = build(tmp_path, records, near_duplicate_threshold=0.5)
    assert summary["dropped"]["near_duplicate"] == 0
    assert {"rec001", "rec002"} <= row_ids(out)
    assert "both an instruction (the prompt without the context" in (out / "README.md").read_text()


def test_one_generic_instruction_over_two_passages_is_not_a_near_duplicate_by_default(tmp_path):
    records = [
        with_context(1, "Summarize the main points of this passage in two sentences please.", PASSAGE),
        with_context(2, "Summarize the main points of this passage in two sentences, please!", "Another text."),
    ] + FILLER
    summary, out = build(tmp_path, records)
    assert summary["dropped"]["near_duplicate"] == 0
    assert {"rec001", "rec002"} <= row_ids(out)


def test_a_near_copy_of_instruction_and_passage_is_a_near_duplicate_by_default(tmp_path):
    records = [
        with_context(1, "How many countries does the river cross on its way to the sea?", PASSAGE),
        with_context(2, "How many countries does the river cross on its way to the sea ?", PASSAGE + " Indeed."),
    ] + FILLER
    summary, out = build(tmp_path, records)
    reason, detail = dropped(out)["rec002"]
    assert reason == "near_duplicate"
    assert detail.startswith("rec001 (instruction and prompt Jaccard >= 0.9")


def test_the_whole_prompt_counts_two_questions_about_one_passage(tmp_path):
    records = [
        with_context(1, "How many countries does the river cross?", PASSAGE),
        with_context(2, "Which ocean does the river reach?", PASSAGE),
    ] + FILLER
    summary, out = build(tmp_path, records, near_duplicate_threshold=0.5, near_duplicate_field="prompt")
    assert summary["dropped"]["near_duplicate"] == 1
    assert dropped(out)["rec002"][1].startswith("rec001 (prompt Jaccard 0.")


def test_the_instruction_alone_counts_one_generic_instruction_over_two_passages(tmp_path):
    # The cost of comparing instructions alone: a generic one repeats across different contexts.
    records = [
        with_context(1, "Summarize the main points of this passage in two sentences please.", PASSAGE),
        with_context(2, "Summarize the main points of this passage in two sentences, please!", "Another text."),
    ] + FILLER
    summary, out = build(tmp_path, records, near_duplicate_field="instruction")
    assert dropped(out)["rec002"] == ("near_duplicate", "rec001 (instruction Jaccard 1.00)")


def test_records_without_an_instruction_are_compared_whole(tmp_path):
    base = "Explain in simple terms how a refrigerator moves heat from the inside of the box to the kitchen air"
    summary, out = build(tmp_path, [make_record(1, base), make_record(2, base + " please")] + FILLER)
    assert dropped(out)["rec002"][0] == "near_duplicate"


def test_an_unknown_near_duplicate_field_is_refused_naming_the_choices(tmp_path):
    with pytest.raises(
        UserError,
        match=r"near_duplicate_field must be one of instruction\+prompt, instruction, prompt, got 'context'",
    ):
        build(tmp_path, FILLER, near_duplicate_field="context")


def test_records_rewritten_between_formats_two_passes_are_refused_not_misattributed(tmp_path, monkeypatch):
    # As a generate rerun does when it retries failed records: the file loses a line while format reads it.
    from spri_sft.format import build as format_build

    records_file = write_records(tmp_path / "records.jsonl", [make_record(n) for n in range(1, 9)])
    passes = []
    read = format_build.iter_records

    def read_then_rewrite(paths):
        passes.append(paths)
        if len(passes) == 2:
            lines = records_file.read_text().splitlines(keepends=True)
            records_file.write_text("".join(lines[1:]))
        return read(paths)

    monkeypatch.setattr(format_build, "iter_records", read_then_rewrite)
    config = FormatConfig(records=[str(records_file)], output_dir=str(tmp_path / "out"), validation_fraction=0.25)
    with pytest.raises(
        UserError, match=r"records\.jsonl changed while format read it \(record 1 is 'rec002', not 'rec001'"
    ):
        build_dataset(config)


def test_near_duplicates_match_a_brute_force_comparison_of_every_pair():
    rng = random.Random(0)
    words = "the a cat dog sat ran on under mat log red big".split()
    # Lengths from 1 word to 30: a pair's smaller and larger set are found through different prefixes.
    texts = [" ".join(rng.choices(words, k=rng.choice([rng.randint(1, 9), rng.randint(10, 30)]))) for _ in range(300)]
    for threshold in (0.3, 0.5, 0.75, 0.9, 1.0):
        assert near_duplicates(texts, threshold) == brute_force_near_duplicates(texts, threshold), threshold


def brute_force_near_duplicates(
    texts: list[str], threshold: float, also: list[str] | None = None
) -> dict[int, tuple[int, float]]:
    """Every text against every earlier kept one: the best match, the earliest of equals."""

    def jaccard(a: set, b: set) -> float:
        return len(a & b) / len(a | b)

    shingles = [word_ngrams(normalize(text).split(), SHINGLE_WORDS) for text in texts]
    also_shingles = [word_ngrams(normalize(text).split(), SHINGLE_WORDS) for text in also or []]
    found, kept = {}, []
    for i, mine in enumerate(shingles):
        best = None
        for j in kept:
            similarity = jaccard(mine, shingles[j])
            if also is not None:
                similarity = min(similarity, jaccard(also_shingles[i], also_shingles[j]))
            if similarity >= threshold and (best is None or similarity > best[1]):
                best = (j, similarity)
        if best is None:
            kept.append(i)
        else:
            found[i] = best
    return found


def templated_prompts(count: int, seed: int = 0) -> list[str]:
    """Prompts as templated prompt sets make them: a few shared frames, slots of few values, and some
    prompts that repeat an earlier one with a word added, dropped or changed."""
    rng = random.Random(seed)
    frames = [
        "I want you to act as a {a}. I will tell you about {b} and you will explain it to a {c}. "
        "Only reply with the explanation. My first request is {d}",
        "Below is an instruction that describes a task. Write a response that completes it. {a} the text about {b}: {d}",
        "Write a {a} {c} about {b} in {d} paragraphs.",
    ]
    words = "travel guide poet teacher chef river stone cloud summarize rewrite short long one two three".split()
    prompts = []
    for _ in range(count):
        if prompts and rng.random() < 0.3:
            edited = rng.choice(prompts).split()
            edit = rng.randrange(3)
            position = rng.randrange(len(edited))
            if edit == 0:
                edited.insert(position, rng.choice(words))
            elif edit == 1 and len(edited) > 1:
                del edited[position]
            else:
                edited[position] = rng.choice(words)
            prompts.append(" ".join(edited))
        else:
            slots = {name: " ".join(rng.choices(words, k=rng.randint(1, 3))) for name in "abcd"}
            prompts.append(rng.choice(frames).format(**slots))
    return prompts


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9])
def test_near_duplicates_of_templated_prompts_name_the_same_matches_as_a_brute_force_comparison(threshold):
    texts = templated_prompts(400)
    expected = brute_force_near_duplicates(texts, threshold)
    assert len(expected) >= 5  # the set holds near duplicates at this threshold
    assert near_duplicates(texts, threshold) == expected


@pytest.mark.parametrize("threshold", [0.5, 0.8, 0.9])
def test_near_duplicates_in_two_texts_each_match_a_brute_force_comparison(threshold):
    # An instruction and its whole prompt: a pair counts only when it is near duplicate in both.
    instructions = templated_prompts(300, seed=1)
    passages = templated_prompts(300, seed=2)
    rng = random.Random(3)
    prompts = [f"{instruction} {rng.choice(passages[:6])}" for instruction in instructions]
    expected = brute_force_near_duplicates(instructions, threshold, also=prompts)
    assert 1 <= len(expected) < len(brute_force_near_duplicates(instructions, threshold))
    assert near_duplicates(instructions, threshold, also=prompts) == expected


def test_near_duplicates_stay_exact_when_word_ids_no_longer_fit_three_to_an_integer(monkeypatch):
    texts = templated_prompts(200)
    expected = near_duplicates(texts, 0.8)
    monkeypatch.setattr(dedupe, "KEY_LIMIT", 2**10)  # as if the vocabulary had millions of words
    assert near_duplicates(texts, 0.8) == expected


def test_near_duplicates_of_no_texts_are_none():
    assert near_duplicates([], 0.9) == {}


@pytest.fixture(scope="module")
def truthfulqa_file(shared_dir) -> str:
    return str(shared_dir / "data" / "truthfulqa" / "data" / "v0" / "mc_task.json")


# -- output ----------------------------------------------------------------------------------


def test_saved_dataset_is_in_trls_conversational_format_with_provenance(tmp_path):
    from trl.data_utils import is_conversational

    summary, out = build(tmp_path, [make_record(1, "Why is the sky blue?", response="Rayleigh scattering.")] + FILLER)
    splits = load_from_disk(str(out / "hf"))
    assert set(splits) == {"train", "validation"}
    rows = {row["id"]: row for split in splits.values() for row in split}
    assert rows["rec001"] == {
        "messages": [
            {"role": "user", "content": "Why is the sky blue?"},
            {"role": "assistant", "content": "Rayleigh scattering."},
        ],
        "id": "rec001",
        "mode": "spri",
        "principles": "Be exact.",
        "principles_score": 5,
        "response_score": 5,
        "status": "accepted",
        "source_id": None,  # generated without prompts.id_column
    }
    assert is_conversational(rows["rec001"])


def test_system_prompt_comes_first_and_missing_principles_stay_null(tmp_path):
    record = make_record(1, mode="direct", scores=[None]) | {"principles": None}
    direct_filler = [dict(filler, mode="direct") for filler in FILLER]  # a dataset is one mode's records
    summary, out = build(tmp_path, [record] + direct_filler, system_prompt="You are careful.")
    splits = load_from_disk(str(out / "hf"))
    row = next(row for split in splits.values() for row in split if row["id"] == "rec001")
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    assert row["messages"][0]["content"] == "You are careful."
    assert row["principles"] is None and row["response_score"] is None
    assert splits["train"].features["response_score"].dtype == "int32"


def test_jsonl_and_parquet_files_hold_the_same_rows_as_the_saved_dataset(tmp_path):
    summary, out = build(tmp_path, [make_record(n) for n in range(12)])
    splits = load_from_disk(str(out / "hf"))
    from_card = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))  # README.md's configs name the parquet files
    for name, split in splits.items():
        jsonl = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert jsonl == split.to_list()
        assert from_card[name].to_list() == split.to_list()
    assert summary["splits"] == {"train": 9, "validation": 3}


def test_split_is_reproducible_with_the_seed_and_independent_of_record_order(tmp_path):
    records = [make_record(n) for n in range(40)]
    _, first = build(tmp_path, records, name="a", seed=7)
    _, again = build(tmp_path, records[::-1], name="b", seed=7)
    _, other = build(tmp_path, records, name="c", seed=8)

    def validation_ids(out):
        return load_from_disk(str(out / "hf"))["validation"]["id"]

    assert validation_ids(first) == validation_ids(again)
    assert set(validation_ids(first)) != set(validation_ids(other))
    assert len(validation_ids(first)) == 10


def test_every_mode_is_validated_on_the_same_prompts(tmp_path):
    # Two modes' records of the same 30 prompts; each mode's filters drop different records.
    spri = [dict(make_record(n, mode="spri"), id=f"spri{n:03d}") for n in range(30)]
    direct = [dict(make_record(n, mode="direct"), id=f"direct{n:03d}") for n in range(30)]
    for n in (0, 1, 2, 3, 4, 5):
        spri[n]["status"] = "failed"
    for n in (10, 11, 12, 13):
        direct[n]["status"] = "failed"
    _, spri_out = build(tmp_path, spri, name="spri", validation_rows=8)
    _, direct_out = build(tmp_path, direct, name="direct", validation_rows=8)

    def validation_prompts(out):
        return {row["messages"][0]["content"] for row in load_from_disk(str(out / "hf"))["validation"]}

    kept_by_both = {r["prompt"] for r, s in zip(spri, direct) if r["status"] != "failed" and s["status"] != "failed"}
    spri_validation, direct_validation = validation_prompts(spri_out), validation_prompts(direct_out)
    assert spri_validation & kept_by_both == direct_validation & kept_by_both
    assert len(spri_validation | direct_validation) <= 8


def test_the_split_does_not_depend_on_what_the_filters_dropped(tmp_path):
    records = [make_record(n) for n in range(30)]
    _, all_kept = build(tmp_path, records, name="all", validation_rows=6)
    some_failed = [dict(r, status="failed") if n % 3 == 0 else r for n, r in enumerate(records)]
    _, fewer_kept = build(tmp_path, some_failed, name="fewer", validation_rows=6)
    validation = set(load_from_disk(str(all_kept / "hf"))["validation"]["id"])
    kept_ids = {r["id"] for r in some_failed if r["status"] != "failed"}
    assert set(load_from_disk(str(fewer_kept / "hf"))["validation"]["id"]) == validation & kept_ids


def named(record: dict, split: str) -> dict:
    """The record of a prompt whose generate source named its SFT split (`prompts.sources[i].sft_split`)."""
    return dict(record, prompt_source=f"mix-instruct[{split}]", sft_split=split)


def validation_prompts_of(out: Path) -> set[str]:
    return {row["messages"][0]["content"] for row in load_from_disk(str(out / "hf"))["validation"]}


def test_exactly_the_prompts_of_a_validation_source_are_the_validation_split(tmp_path):
    train = [named(make_record(n), "train") for n in range(30)]
    validation = [named(make_record(n), "validation") for n in range(30, 36)]
    summary, out = build(tmp_path, train + validation, validation_rows=6)
    assert validation_prompts_of(out) == {r["prompt"] for r in validation}
    assert summary["splits"] == {"train": 30, "validation": 6}
    assert summary["named_split_prompts"] == {"train": 30, "validation": 6}


def test_named_validation_prompts_stay_there_whatever_validation_rows_asks(tmp_path):
    records = [named(make_record(n), "train") for n in range(20)] + [
        named(make_record(n), "validation") for n in range(20, 25)
    ]
    _, fewer = build(tmp_path, records, name="fewer", validation_rows=2)
    _, no_fraction = build(tmp_path, records, name="none", validation_fraction=0.0)
    assert validation_prompts_of(fewer) == validation_prompts_of(no_fraction) == {r["prompt"] for r in records[20:]}


def test_the_hash_fills_the_validation_split_from_auto_prompts_only(tmp_path):
    named_train = [named(make_record(n), "train") for n in range(20)]
    named_validation = [named(make_record(n), "validation") for n in range(20, 23)]
    auto = [make_record(n) for n in range(23, 43)]
    summary, out = build(tmp_path, named_train + named_validation + auto, validation_rows=8)
    validation = validation_prompts_of(out)
    assert {r["prompt"] for r in named_validation} <= validation and len(validation) == 8
    assert not validation & {r["prompt"] for r in named_train}
    assert len(validation & {r["prompt"] for r in auto}) == 5


def test_a_named_validation_prompt_filtered_out_does_not_pull_a_train_prompt_in(tmp_path):
    train = [named(make_record(n), "train") for n in range(10)]
    validation = [named(make_record(n), "validation") for n in range(10, 14)]
    validation[0]["status"] = "failed"
    summary, out = build(tmp_path, train + validation, validation_rows=4)
    assert validation_prompts_of(out) == {r["prompt"] for r in validation[1:]}
    assert summary["splits"] == {"train": 10, "validation": 3}


def test_the_card_says_which_prompts_their_source_put_in_validation(tmp_path):
    records = [named(make_record(n), "train") for n in range(6)] + [
        named(make_record(n), "validation") for n in range(6, 8)
    ]
    _, out = build(tmp_path, records, validation_rows=2)
    assert (
        "named their split (`sft_split`) are in it: 2 validation and 6 train prompts" in (out / "README.md").read_text()
    )


def test_validation_fraction_zero_writes_a_train_split_only(tmp_path):
    summary, out = build(tmp_path, [make_record(1)], validation_fraction=0.0)
    assert summary["splits"] == {"train": 1}
    assert not (out / "validation.jsonl").exists()


def test_validation_rows_sets_the_validation_split_size_exactly(tmp_path):
    summary, _ = build(tmp_path, [make_record(n) for n in range(40)], validation_rows=7)
    assert summary["splits"] == {"train": 33, "validation": 7}


def test_validation_rows_needs_a_row_left_to_train_on(tmp_path):
    with pytest.raises(UserError, match=r"3 row\(s\) survive .* none of them for the train split"):
        build(tmp_path, [make_record(n) for n in range(3)], validation_rows=3)


def test_fewer_than_two_surviving_rows_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"1 row\(s\) survive the filters \(dropped: 1 status\), none of them for the"):
        build(tmp_path, [make_record(1), make_record(2, status="failed", response=None)])


def test_summary_is_returned_and_written(tmp_path):
    summary, out = build(tmp_path, [make_record(1, status="failed", response=None)] + FILLER)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["records"] == 5 and summary["rows"] == 4
    assert summary["models"] == {"base": {"base/model-7b": 4}, "critic": {"critic/judge-8x7b": 4}}


def test_dataset_card_states_method_models_counts_scores_and_filters(tmp_path, truthfulqa_file):
    from huggingface_hub import DatasetCard

    records = [
        make_record(1, TRUTHFULQA_QUESTION),
        make_record(2, status="failed", response=None),
        make_record(3, scores=[3]),
    ] + FILLER
    _, out = build(tmp_path, records, min_response_score=4, truthfulqa_file=truthfulqa_file)
    card = (out / "README.md").read_text()
    assert "**SPRI**" in card and "`base/model-7b` (4 rows)" in card and "`critic/judge-8x7b` (4 rows)" in card
    assert "| records read | `out-records.jsonl` | | 7 |" in card
    assert "| status | status is one of accepted, max_rounds | 1 | 6 |" in card
    assert "| response_score | the final response's critic score is >= 4 (unscored fails) | 1 | 5 |" in card
    assert "| contamination | " in card and "(see Benchmark contamination) | 1 | 4 |" in card
    assert "| TruthfulQA (`mc_task.json`) | 817 | 1 |" in card
    assert "| 5 | 4 | 4 |" in card  # final scores: response 5 on 4 rows, principles 5 on 4 rows
    assert "| train | 3 |" in card and "| validation | 1 |" in card
    assert DatasetCard.load(out / "README.md").data.configs[0]["data_files"][0] == {
        "split": "train",
        "path": "train.parquet",
    }


def test_dataset_card_warns_when_truthfulqa_was_not_checked(tmp_path):
    _, out = build(tmp_path, FILLER, truthfulqa_file="none")
    assert "not checked against TruthfulQA" in (out / "README.md").read_text()


# -- errors ----------------------------------------------------------------------------------


def test_malformed_json_names_the_file_and_line(tmp_path):
    path = write_records(tmp_path / "records.jsonl", FILLER)
    path.write_text(path.read_text() + '{"id": "torn", "prompt": "Wh\n')
    with pytest.raises(
        UserError, match=rf"{path}:5: malformed JSON line \(.*\); a generate run killed mid-write leaves a torn"
    ):
        build_dataset(FormatConfig(records=[str(path)], output_dir=str(tmp_path / "out")))


def test_a_record_with_an_unknown_sft_split_names_the_file_and_line(tmp_path):
    path = write_records(tmp_path / "records.jsonl", FILLER + [dict(make_record(1), sft_split="test")])
    with pytest.raises(
        UserError, match=rf"{path}:5: field 'sft_split' must be one of auto, train, validation, got 'test'"
    ):
        build_dataset(FormatConfig(records=[str(path)], output_dir=str(tmp_path / "out")))


def test_a_record_missing_a_field_names_the_file_line_and_field(tmp_path):
    record = make_record(1)
    del record["response"]
    path = write_records(tmp_path / "records.jsonl", FILLER[:2] + [record])
    with pytest.raises(UserError, match=rf"{path}:3: record is missing 'response'"):
        build_dataset(FormatConfig(records=[str(path)], output_dir=str(tmp_path / "out")))


def test_a_missing_records_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nope.jsonl: records file not found"):
        build_dataset(FormatConfig(records=[str(tmp_path / "nope.jsonl")], output_dir=str(tmp_path / "out")))


# -- TRL -------------------------------------------------------------------------------------


def test_sft_trainer_trains_on_the_train_split_as_is(tmp_path, tiny_model_dir):
    from trl import SFTConfig, SFTTrainer

    _, out = build(tmp_path, [make_record(n) for n in range(8)], system_prompt="Be brief.")
    train = load_from_disk(str(out / "hf"))["train"]
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"),
        max_steps=1,
        per_device_train_batch_size=2,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=str(tiny_model_dir), args=args, train_dataset=train)
    result = trainer.train()
    assert result.global_step == 1
    assert result.training_loss > 0
