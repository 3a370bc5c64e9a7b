"""Preference pairs from the critique trajectories (`spri_sft.format.preference`) and `format --preference`.

Records are written by hand in the shape `spri-sft generate` writes them: the principles rounds, then one
response round per version, the record's `response` being the last version's text.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_from_disk

from spri_sft.errors import UserError
from spri_sft.format.build import build_dataset
from spri_sft.format.config import FormatConfig
from spri_sft.format.dedupe import normalize
from spri_sft.format.preference import NoPair, preference_pair


def make_record(
    number: int,
    versions: list[tuple[str, float | None]],
    *,
    mode: str = "spri",
    status: str = "accepted",
    means: list[float | None] | None = None,
    prompt: str | None = None,
) -> dict:
    """A record whose response went through `versions` (text, critic score) in order; `means` adds each
    round's `score_mean`, as `score: expected` records it."""
    rounds = [
        {
            "stage": "principles",
            "round": 1,
            "text": "Be exact.",
            "finish_reason": "stop",
            "critique": "Poor.",
            "score": 1,
        }
    ]
    for i, (text, score) in enumerate(versions, 1):
        round_ = {
            "stage": "response",
            "round": i,
            "text": text,
            "finish_reason": "stop",
            "critique": "ok",
            "score": score,
        }
        if means is not None and means[i - 1] is not None:
            round_ |= {"score_mode": "expected", "score_mean": means[i - 1]}
        rounds.append(round_)
    return {
        "id": f"rec{number:03d}",
        "prompt": prompt if prompt is not None else f"Explain step {number} of pruning a rose bush",
        "mode": mode,
        "principles": "Be exact.",
        "response": versions[-1][0],
        "status": status,
        "error": None,
        "rounds": rounds,
        "usage": {},
    }


# -- the pair of one record ----------------------------------------------------------------------


def test_chosen_is_the_final_response_and_rejected_the_lowest_scored_earlier_version():
    record = make_record(1, [("draft", 2), ("worse revision", 1), ("final", 4)])

    pair = preference_pair(record, margin=1)

    assert pair["prompt"] == [{"role": "user", "content": record["prompt"]}]
    assert pair["chosen"] == [{"role": "assistant", "content": "final"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "worse revision"}]
    assert (pair["chosen_score"], pair["rejected_score"]) == (4, 1)
    assert (pair["chosen_round"], pair["rejected_round"]) == (3, 2)
    assert (pair["mode"], pair["record_id"]) == ("spri", "rec001")


def test_a_tie_among_the_lowest_scored_versions_goes_to_the_earliest():
    pair = preference_pair(make_record(1, [("first draft", 2), ("second draft", 2), ("final", 5)]), margin=1)
    assert pair["rejected"][0]["content"] == "first draft"


def test_a_gap_equal_to_the_margin_makes_a_pair_and_a_smaller_one_does_not():
    record = make_record(1, [("draft", 3), ("final", 4)])

    assert preference_pair(record, margin=1)["rejected_score"] == 3
    assert preference_pair(record, margin=2) == NoPair("within_margin", "final 4, widest gap 1 < 2")


def test_score_mean_is_the_score_when_the_critic_recorded_one():
    # score: expected records the likeliest digit and the mean; the accept rule, and so the pair, use the mean.
    record = make_record(1, [("draft", 4), ("final", 4)], means=[3.1, 4.4])

    pair = preference_pair(record, margin=1)

    assert pair["rejected"][0]["content"] == "draft"
    assert pair["chosen_score"] == pytest.approx(4.4) and pair["rejected_score"] == pytest.approx(3.1)


def test_the_system_prompt_comes_first_in_the_prompt():
    pair = preference_pair(make_record(1, [("draft", 1), ("final", 5)]), margin=1, system_prompt="Be kind.")
    assert [m["role"] for m in pair["prompt"]] == ["system", "user"]
    assert pair["prompt"][0]["content"] == "Be kind."


@pytest.mark.parametrize(
    ("versions", "reason"),
    [
        ([("only answer", None)], "single_version"),  # direct, self-instruct, oracle
        ([("only answer", 5)], "single_version"),  # accepted at the first critique
        ([("draft", 2), ("refined, never critiqued", None)], "final_unscored"),  # self-refine's last refinement
        ([("draft", None), ("final", 5)], "earlier_unscored"),
        ([("draft", 4), ("final", 4)], "within_margin"),
        ([("draft", 5), ("final", 2)], "within_margin"),  # max_rounds: the kept version scored lower
        ([("final", 1), ("final", 5)], "same_text"),  # a revision that repeated the draft
        ([("   ", 1), ("final", 5)], "same_text"),
    ],
)
def test_a_record_without_a_pair_says_why(versions, reason):
    assert preference_pair(make_record(1, versions), margin=1).reason == reason


def test_principles_rounds_never_make_a_pair():
    # The principles stage scored 1 and the response 5 at its only version: there is no earlier response.
    assert preference_pair(make_record(1, [("final", 5)]), margin=1).reason == "single_version"


# -- spri-sft format --preference ---------------------------------------------------------------


def build(tmp_path: Path, records: list[dict], **settings) -> tuple[dict, Path]:
    records_file = tmp_path / "records.jsonl"
    records_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    output_dir = tmp_path / "out"
    settings.setdefault("validation_fraction", 0.25)
    summary = build_dataset(
        FormatConfig(records=[str(records_file)], output_dir=str(output_dir), preference=True, **settings)
    )
    return summary, output_dir


def paired_records(count: int) -> list[dict]:
    return [make_record(i, [(f"draft {i}", 2), (f"final answer {i}", 4)]) for i in range(count)]


def test_format_writes_pairs_beside_the_sft_data_and_counts_the_records_without_one(tmp_path):
    records = paired_records(8) + [
        make_record(8, [("one shot", None)]),  # one version only, as a mode without a critic writes
        make_record(9, [("draft", 4), ("final", 4)]),
        make_record(10, [("draft", 1), ("final", 5)], status="failed"),  # dropped by the SFT filters first
    ]

    summary, output_dir = build(tmp_path, records)

    preference = summary["preference"]
    assert preference["pairs"] == 8 and preference["records"] == 10
    assert preference["no_pair"] == {
        "single_version": 1, "final_unscored": 0, "earlier_unscored": 0, "within_margin": 1, "same_text": 0,
    }  # fmt: skip
    splits = load_from_disk(str(output_dir / "preference" / "hf"))
    assert sum(len(split) for split in splits.values()) == 8
    assert {split: len(rows) for split, rows in splits.items()} == preference["splits"]
    no_pair = [json.loads(line) for line in (output_dir / "preference" / "no_pair.jsonl").read_text().splitlines()]
    assert {(entry["id"], entry["reason"]) for entry in no_pair} == {
        ("rec008", "single_version"),
        ("rec009", "within_margin"),
    }
    saved = json.loads((output_dir / "summary.json").read_text())
    assert saved["preference"] == preference


def test_a_validation_prompt_of_the_sft_data_is_one_of_the_preference_data(tmp_path):
    summary, output_dir = build(tmp_path, paired_records(12))

    def prompts(directory: Path, column: str) -> dict[str, set[str]]:
        splits = load_from_disk(str(directory))
        return {
            name: {normalize(next(m["content"] for m in row if m["role"] == "user")) for row in split[column]}
            for name, split in splits.items()
        }

    sft = prompts(output_dir / "hf", "messages")
    preference = prompts(output_dir / "preference" / "hf", "prompt")
    assert preference["validation"] and preference["validation"] == sft["validation"]
    assert preference["train"] == sft["train"]


def test_without_a_validation_pair_the_preference_data_has_a_train_split_only(tmp_path):
    # Every record of a validation prompt (the hash picks 1 of 4) falls within the margin, so only train pairs.
    records = paired_records(4)
    summary, _ = build(tmp_path, records)
    validation_id = next(iter(load_from_disk(str(tmp_path / "out" / "hf"))["validation"]["id"]))
    for record in records:
        if record["id"] == validation_id:
            record["rounds"][1]["score"] = 4

    summary, output_dir = build(tmp_path, records)

    assert summary["preference"]["splits"] == {"train": 3}
    assert list(load_from_disk(str(output_dir / "preference" / "hf"))) == ["train"]


def test_without_any_pair_no_preference_dataset_is_written(tmp_path):
    summary, output_dir = build(tmp_path, [make_record(i, [(f"answer {i}", 5)]) for i in range(4)])

    assert summary["preference"]["pairs"] == 0 and summary["preference"]["no_pair"]["single_version"] == 4
    assert not (output_dir / "preference" / "hf").exists()
    assert (output_dir / "hf").is_dir()  # the SFT data is written all the same


def test_a_margin_that_is_not_positive_is_refused(tmp_path):
    with pytest.raises(UserError, match="preference_margin"):
        build(tmp_path, paired_records(4), preference_margin=0)


def test_stock_dpo_trainer_reads_the_preference_data(tmp_path, tiny_model_dir):
    from trl import DPOConfig, DPOTrainer

    _, output_dir = build(tmp_path, paired_records(8))
    splits = load_from_disk(str(output_dir / "preference" / "hf"))
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2, use_cpu=True, bf16=False,
        gradient_checkpointing=False, report_to="none", save_strategy="no", dataloader_num_workers=0,
    )  # fmt: skip

    trainer = DPOTrainer(model=str(tiny_model_dir), args=args, train_dataset=splits["train"])

    example, tokenizer = trainer.train_dataset[0], trainer.processing_class
    assert "final answer" in tokenizer.decode(example["chosen_ids"])
    assert "draft" in tokenizer.decode(example["rejected_ids"])
    # The conversational rows were rendered with the chat template: each completion ends its turn with EOS.
    assert tokenizer.eos_token_id in example["chosen_ids"] and tokenizer.eos_token_id in example["rejected_ids"]
    assert trainer.train().training_loss > 0
