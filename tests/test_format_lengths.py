"""`spri-sft format` with training's tokenizer and max_length: rows over it are counted per split, and dropped or kept.

Every test builds a real dataset with `build_dataset` from hand-written records and measures its rows with a
real tokenizer: the tiny model's (ChatML, its training template verified against it) or a family fixture's
(support.families: Gemma-2-it, Qwen2.5, Mistral v0.3's prefix-masked template, Llama-3.1 in Alpaca).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import load_from_disk
from support.families import FAMILIES
from support.tiny_model import build_tiny_model
from test_format import FILLER, build, make_record

from spri_sft.errors import UserError
from spri_sft.format.build import RowMeter, build_dataset
from spri_sft.format.config import FormatConfig

LONG = "word " * 300  # hundreds of tokens in every tokenizer here; the filler rows have a few dozen


def rows_by_id(output_dir: Path) -> dict[str, str]:
    """Row id -> its split, as saved."""
    splits = load_from_disk(str(output_dir / "hf"))
    return {row_id: name for name, split in splits.items() for row_id in split["id"]}


def dropped(output_dir: Path) -> dict[str, tuple[str, str]]:
    lines = (output_dir / "dropped.jsonl").read_text().splitlines()
    return {entry["id"]: (entry["reason"], entry["detail"]) for entry in map(json.loads, lines)}


def total(counts: dict[str, int]) -> int:
    return sum(counts.values())


def test_a_row_with_a_long_response_is_counted_and_dropped(tmp_path, tiny_model_dir, capsys):
    records = [make_record(1, response=LONG)] + FILLER
    summary, out = build(tmp_path, records, tokenizer=str(tiny_model_dir), max_length=64)

    lengths = summary["lengths"]
    assert lengths["checked"] and lengths["policy"] == "drop" and lengths["max_length"] == 64
    assert total(lengths["rows"]) == 5
    assert total(lengths["over_max_length"]) == total(lengths["lost_eos"]) == total(lengths["dropped"]) == 1
    assert total(lengths["prompt_too_long"]) == 0
    assert lengths["longest"] > 300
    assert dropped(out)["rec001"][0] == "overlong"
    assert "rec001" not in rows_by_id(out)
    assert summary["dropped"]["overlong"] == 1 and summary["rows"] == 4 == total(summary["splits"])
    printed = [line for line in capsys.readouterr().out.splitlines() if "max_length" in line]
    assert printed == [
        f"[spri-sft] format: 1 of 5 rows exceed max_length=64 tokens of `{tiny_model_dir}` "
        "(1 would lose their end-of-turn token, 0 keep no trained token) and were dropped"
    ]


def test_the_counts_are_per_split(tmp_path, tiny_model_dir):
    records = [make_record(n, response=LONG) for n in range(1, 9)] + [make_record(n) for n in range(100, 108)]
    summary, out = build(tmp_path, records, tokenizer=str(tiny_model_dir), max_length=64, overlong="keep")

    split_of = rows_by_id(out)
    lengths = summary["lengths"]
    for name in ("train", "validation"):
        long_rows = sum(split_of[f"rec{n:03d}"] == name for n in range(1, 9))
        assert lengths["over_max_length"][name] == lengths["lost_eos"][name] == long_rows
        assert lengths["rows"][name] == summary["splits"][name]
    assert 0 < lengths["over_max_length"]["validation"] < 8


def test_kept_rows_over_max_length_say_how_many_lost_their_end_of_turn_token(tmp_path, tiny_model_dir, capsys):
    records = [make_record(1, response=LONG), make_record(2, response=LONG)] + FILLER
    summary, out = build(tmp_path, records, tokenizer=str(tiny_model_dir), max_length=64, overlong="keep")

    lengths = summary["lengths"]
    assert total(lengths["over_max_length"]) == total(lengths["lost_eos"]) == 2
    assert total(lengths["dropped"]) == 0 and summary["dropped"]["overlong"] == 0
    assert {"rec001", "rec002"} <= set(rows_by_id(out))
    assert "(2 lost their end-of-turn token, 0 keep no trained token and are dropped by TRL) and were kept" in (
        capsys.readouterr().out
    )
    card = (out / "README.md").read_text()
    assert "| overlong | off (overlong: keep) | 0 | 6 |" in card
    assert "2 of 6 rows exceed max_length=64 tokens" in card


def test_a_prompt_that_alone_reaches_max_length_is_counted(tmp_path, tiny_model_dir):
    records = [make_record(1, prompt="Summarize this: " + LONG), make_record(2, response=LONG)] + FILLER
    summary, out = build(tmp_path, records, tokenizer=str(tiny_model_dir), max_length=64, overlong="keep")

    lengths = summary["lengths"]
    assert total(lengths["over_max_length"]) == total(lengths["lost_eos"]) == 2
    assert total(lengths["prompt_too_long"]) == 1


def test_a_row_over_only_by_what_follows_its_end_of_turn_token_keeps_it(tmp_path, tiny_model_dir):
    # The tiny model's ChatML writes "\n" after <|im_end|>: cut there, the row still ends its turn.
    record = make_record(1, response="A short answer.")
    meter = RowMeter(str(tiny_model_dir))
    messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
    (length,) = meter.measure([messages])
    assert length.end_of_turn == length.tokens - 1

    keep_end = dict(tokenizer=str(tiny_model_dir), overlong="keep", validation_fraction=0)
    summary, _ = build(tmp_path, [record], name="newline", max_length=length.tokens - 1, **keep_end)
    assert summary["lengths"]["over_max_length"] == {"train": 1} and summary["lengths"]["lost_eos"] == {"train": 0}
    summary, _ = build(tmp_path, [record], name="eos", max_length=length.tokens - 2, **keep_end)
    assert summary["lengths"]["lost_eos"] == {"train": 1}


@pytest.mark.parametrize(
    ("family", "template"),
    [
        ("gemma-2-it", "model"),
        ("qwen2.5-instruct", "model"),
        ("mistral-v0.3-instruct", "model"),  # a template that cannot be marked: prefix rendering
        ("llama-3.1", "alpaca"),
    ],
)
def test_the_end_of_turn_token_is_the_one_the_family_trains(family, template, family_dir):
    meter = RowMeter(str(family_dir(family)), template)
    conversation = [{"role": "user", "content": "What is rain?"}, {"role": "assistant", "content": "Water falling."}]
    (length,) = meter.measure([conversation])
    ids = (meter.encode or _marked_ids(meter))(conversation)["input_ids"]

    assert length.tokens == len(ids)
    assert meter.tokenizer.convert_ids_to_tokens(ids[length.end_of_turn - 1]) == FAMILIES[family].end_of_turn
    assert meter.prompt_tokens(conversation) < length.end_of_turn


def _marked_ids(meter: RowMeter):
    return lambda conversation: meter.tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)


def test_a_tokenizer_without_a_chat_template_is_measured_in_alpaca_and_called_approximate(tmp_path):
    model = build_tiny_model(tmp_path / "no-template", chat_template=None)
    summary, out = build(tmp_path, [make_record(1, response=LONG)] + FILLER, tokenizer=str(model), max_length=256)

    lengths = summary["lengths"]
    assert lengths["approximate"] and lengths["template"].startswith("Alpaca")
    assert total(lengths["over_max_length"]) == 1
    assert "approximate: the tokenizer has no chat template" in (out / "README.md").read_text()


def test_nothing_over_max_length_is_said_as_zero(tmp_path, tiny_model_dir, capsys):
    summary, out = build(tmp_path, FILLER, tokenizer=str(tiny_model_dir), max_length=1024)

    assert total(summary["lengths"]["over_max_length"]) == 0 and summary["dropped"]["overlong"] == 0
    printed = capsys.readouterr().out
    assert f"[spri-sft] format: 0 of 4 rows exceed max_length=1024 tokens of `{tiny_model_dir}`" in printed


def test_without_tokenizer_and_max_length_nothing_is_measured_and_the_summary_says_so(tmp_path, capsys):
    summary, out = build(tmp_path, [make_record(1, response=LONG)] + FILLER)

    assert summary["lengths"]["checked"] is False and "not measured" in summary["lengths"]["why"]
    assert "overlong" not in summary["dropped"] and summary["rows"] == 5
    assert "max_length" not in capsys.readouterr().out
    assert "## Row lengths\n\nNot checked" in (out / "README.md").read_text()
    assert json.loads((out / "summary.json").read_text())["lengths"]["checked"] is False


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tokenizer": "some/model"}, "tokenizer is set but max_length is not"),
        ({"max_length": 512}, "max_length is set but tokenizer is not"),
        ({"tokenizer": "x", "max_length": 512, "overlong": "truncate"}, "overlong must be one of drop, keep"),
    ],
)
def test_length_settings_that_cannot_work_are_one_line_errors(tmp_path, settings, message):
    with pytest.raises(UserError, match=message):
        build_dataset(FormatConfig(records=[str(tmp_path / "r.jsonl")], output_dir=str(tmp_path / "o"), **settings))


def test_a_tokenizer_that_cannot_be_loaded_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="tokenizer .*missing-model: no such local directory"):
        build(tmp_path, FILLER, tokenizer=str(tmp_path / "missing-model"), max_length=64)
