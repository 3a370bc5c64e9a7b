"""Reading prompts from files and mapping their columns, with errors that name file, line and field."""

import json

import pytest

from spri_sft.errors import UserError
from spri_sft.generate.inputs import PromptSource, load_prompts, prompt_origin


def jsonl(tmp_path, rows, name="prompts.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_builtin_prompts_are_used_when_no_source_is_given():
    prompts = load_prompts(PromptSource())
    assert len(prompts) >= 8 and all(p.strip() for p in prompts)


def test_context_column_is_appended_after_a_blank_line(tmp_path):
    path = jsonl(
        tmp_path, [{"instruction": "Summarize this.", "context": "A long text."}, {"instruction": "Hi?", "context": ""}]
    )
    prompts = load_prompts(PromptSource(path=path, prompt_column="instruction", context_column="context"))
    assert prompts == ["Summarize this.\n\nA long text.", "Hi?"]


def test_a_prompt_with_a_context_keeps_its_instruction_apart_for_its_record(tmp_path):
    path = jsonl(
        tmp_path, [{"instruction": "Summarize this.", "context": "A long text."}, {"instruction": "Hi?", "context": ""}]
    )
    prompts = load_prompts(PromptSource(path=path, prompt_column="instruction", context_column="context"))
    assert [prompt_origin(p) for p in prompts] == [{"instruction": "Summarize this."}, {}]


def test_self_instruct_nested_fields(shared_dir):
    source = PromptSource(
        path=str(shared_dir / "data/self-instruct/seed_tasks.jsonl"),
        prompt_column="instruction",
        context_column="instances.0.input",
    )
    prompts = load_prompts(source)
    assert len(prompts) == 175
    assert any("\n\n" in p for p in prompts) and any("\n\n" not in p for p in prompts)


def test_limit_and_seeded_shuffle(tmp_path):
    path = jsonl(tmp_path, [{"prompt": f"question {i}"} for i in range(20)])
    first = load_prompts(PromptSource(path=path, shuffle=True, seed=1, limit=5))
    again = load_prompts(PromptSource(path=path, shuffle=True, seed=1, limit=5))
    other = load_prompts(PromptSource(path=path, shuffle=True, seed=2, limit=5))
    assert first == again and first != other and len(first) == 5
    assert load_prompts(PromptSource(path=path, limit=3)) == ["question 0", "question 1", "question 2"]


def test_duplicate_prompts_are_kept_once(tmp_path):
    path = jsonl(tmp_path, [{"prompt": "same"}, {"prompt": "same"}, {"prompt": "other"}])
    assert load_prompts(PromptSource(path=path)) == ["same", "other"]


def test_csv_json_and_parquet_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "p.csv").write_text("prompt,other\nfrom csv,1\n")
    (tmp_path / "p.json").write_text(json.dumps([{"prompt": "from json"}]))
    pq.write_table(pa.table({"prompt": ["from parquet"]}), tmp_path / "p.parquet")
    for name, expected in [("p.csv", "from csv"), ("p.json", "from json"), ("p.parquet", "from parquet")]:
        assert load_prompts(PromptSource(path=str(tmp_path / name))) == [expected]


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n{"prompt": "broken"\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: malformed JSON line"):
        load_prompts(PromptSource(path=str(path)))


def test_a_prompt_column_no_row_has_is_one_error_naming_the_first_row_and_its_fields(tmp_path):
    path = jsonl(tmp_path, [{"question": "wrong key"}, {"question": "again"}])
    with pytest.raises(
        UserError, match=r"prompts.jsonl:1: missing field 'prompt' \(fields: question\), and no row has it"
    ):
        load_prompts(PromptSource(path=path))


def test_a_context_column_no_row_has_is_an_error_too(tmp_path):
    path = jsonl(tmp_path, [{"instruction": "Sum up.", "input": "A text."}])
    with pytest.raises(
        UserError, match=r"prompts.jsonl:1: missing field 'inputs' \(fields: instruction, input\), and no row"
    ):
        load_prompts(PromptSource(path=path, prompt_column="instruction", context_column="inputs"))


def test_a_row_missing_the_prompt_field_that_others_have_is_skipped_and_counted(tmp_path):
    path = jsonl(tmp_path, [{"prompt": "ok"}, {"question": "wrong key"}])
    prompts = load_prompts(PromptSource(path=path))
    assert prompts == ["ok"]
    assert prompts.report.skipped == {"missing field 'prompt'": 1}
    assert prompts.report.first_skipped == {"missing field 'prompt'": f"{path}:2"}


def test_a_file_whose_every_row_is_empty_is_one_error_with_the_reason(tmp_path):
    path = jsonl(tmp_path, [{"instruction": "   "}, {"instruction": ""}])
    with pytest.raises(
        UserError,
        match=r"prompts.jsonl: no prompts found: every row was skipped \(2 empty prompt, first .*prompts.jsonl:1\)",
    ):
        load_prompts(PromptSource(path=path, prompt_column="instruction"))


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(UserError, match="nowhere.jsonl: prompts file not found"):
        load_prompts(PromptSource(path=str(tmp_path / "nowhere.jsonl")))
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(UserError, match="unsupported prompts file type"):
        load_prompts(PromptSource(path=str(tmp_path / "p.txt")))


def test_dataset_source_loads_a_local_dataset_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "my-dataset"
    folder.mkdir()
    pq.write_table(pa.table({"instruction": ["one", "two"], "context": ["", "ctx"]}), folder / "train.parquet")
    source = PromptSource(dataset=str(folder), split="train", prompt_column="instruction", context_column="context")
    assert load_prompts(source) == ["one", "two\n\nctx"]


def test_unknown_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="cannot load dataset"):
        load_prompts(PromptSource(dataset=str(tmp_path / "no-such-dataset")))


def test_a_csv_with_a_byte_order_mark_reads_its_first_column(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffprompt,source\nfrom a spreadsheet,1\n".encode("utf-8"))
    assert load_prompts(PromptSource(path=str(path))) == ["from a spreadsheet"]


def test_a_jsonl_with_a_byte_order_mark_reads_its_first_line(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes("\ufeff".encode() + b'{"prompt": "first"}\n{"prompt": "second"}\n')
    assert load_prompts(PromptSource(path=str(path))) == ["first", "second"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.csv", b"prompt\nfine\nbad,extra\n", r"p.csv:3: 1 more cell\(s\) than the header has columns"),
        ("p.json", b'[\n  {"prompt": "a"},\n  {"prompt": }\n]\n', r"p.json:3: malformed JSON"),
        ("latin1.jsonl", '{"prompt": "caf\u00e9"}\n'.encode("latin-1"), r"latin1.jsonl: not UTF-8 text"),
    ],
    ids=["csv-extra-cell", "json-syntax", "not-utf8"],
)
def test_a_bad_prompts_file_names_its_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_prompts(PromptSource(path=str(tmp_path / name)))


def test_a_skipped_csv_row_is_named_by_its_line_after_a_quoted_newline(tmp_path):
    (tmp_path / "p.csv").write_bytes(b'prompt,note\nfine,1\n"two\nlines",2\n,3\n')
    prompts = load_prompts(PromptSource(path=str(tmp_path / "p.csv")))
    assert prompts == ["fine", "two\nlines"]
    assert prompts.report.first_skipped == {"empty prompt": f"{tmp_path / 'p.csv'}:5"}


def test_a_json_line_holding_a_unicode_line_separator_stays_one_row(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "one\u2028line"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_prompts(PromptSource(path=str(path))) == ["one\u2028line"]


def test_the_row_reader_names_lines_items_and_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from spri_sft.rows import read_rows

    (tmp_path / "a.jsonl").write_text('{"x": 1}\n\n{"x": 2}\n')
    (tmp_path / "a.json").write_text('{"data": [{"x": 1}, {"x": 2}]}')
    (tmp_path / "a.csv").write_text("x\n1\n2\n")
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "a.parquet")
    assert [r.where for r in read_rows(tmp_path / "a.jsonl")] == ["1", "3"]
    assert [r.where for r in read_rows(tmp_path / "a.json")] == ["item 0", "item 1"]
    assert [r.where for r in read_rows(tmp_path / "a.csv")] == ["2", "3"]
    assert [r.where for r in read_rows(tmp_path / "a.parquet")] == ["row 0", "row 1"]


def test_read_jsonl_ends_a_malformed_line_message_with_the_callers_hint(tmp_path):
    from spri_sft.rows import read_jsonl

    (tmp_path / "records.jsonl").write_text('{"id": "a"}\n{"id": "b", "pro')
    with pytest.raises(UserError, match=r"records.jsonl:2: malformed JSON line \(.*\); rerun generate to repair it$"):
        list(read_jsonl(tmp_path / "records.jsonl", "records file", malformed_hint="rerun generate to repair it"))


def test_read_jsonl_names_the_place_in_the_file_of_a_byte_that_is_not_utf8(tmp_path):
    from spri_sft.rows import read_jsonl

    (tmp_path / "records.jsonl").write_bytes(b'{"id": "a"}\n{"id": "caf\xe9"}\n')  # the \xe9 is byte 23
    with pytest.raises(UserError, match=r"records.jsonl: not UTF-8 text \(byte 23: invalid continuation byte\)$"):
        list(read_jsonl(tmp_path / "records.jsonl", "records file"))


# -- MixInstruct's layout, rows that make no prompt ------------------------------------------


def mixinstruct_row(number: int, instruction: str, input_: str, output: str = "An answer.") -> dict:
    """A row in llm-blender/mix-instruct's layout (its card; candidates shortened to one)."""
    candidate = {
        "decoding_method": "top_p_sampling",
        "model": "some-model",
        "text": "A candidate.",
        "scores": {"bleu": 1.0},
    }
    return {
        "id": f"unified_chip2/{number}",
        "instruction": instruction,
        "input": input_,
        "output": output,
        "candidates": [candidate],
    }


def test_an_empty_instruction_makes_the_input_alone_the_prompt(tmp_path):
    path = jsonl(tmp_path, [
        mixinstruct_row(1, "", "What is the difference between a skeptic and a denier?"),
        mixinstruct_row(2, "Summarize the text.", "Tides follow the moon."),
        mixinstruct_row(3, "Name a prime number.", ""),
    ])  # fmt: skip
    prompts = load_prompts(PromptSource(path=path, prompt_column="instruction", context_column="input"))
    assert prompts == [
        "What is the difference between a skeptic and a denier?",
        "Summarize the text.\n\nTides follow the moon.",
        "Name a prime number.",
    ]
    assert not prompts.report.skipped


def test_rows_that_make_no_prompt_are_skipped_and_counted_by_reason(tmp_path):
    path = tmp_path / "mix.jsonl"
    rows = [
        mixinstruct_row(1, "", "A fine request."),
        mixinstruct_row(2, "", "   "),  # empty everywhere
        mixinstruct_row(3, "", ""),
        {"id": "x", "instruction": 7, "input": "A number for an instruction."},
        {"id": "y", "instruction": "Fine words.", "input": ["not", "text"]},
        ["a", "list", "row"],
        mixinstruct_row(4, "", "A fine request."),  # the same prompt again
        mixinstruct_row(5, "Another", "fine request."),
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = load_prompts(PromptSource(path=str(path), prompt_column="instruction", context_column="input"))
    assert prompts == ["A fine request.", "Another\n\nfine request."]
    report = prompts.report
    assert report.rows == 8
    assert report.skipped == {
        "empty prompt": 2, "'instruction' is not text": 1, "'input' is not text": 1, "not an object (list)": 1, "duplicate prompt": 1,
    }  # fmt: skip
    assert (
        report.first_skipped["empty prompt"] == f"{path}:2" and report.first_skipped["duplicate prompt"] == f"{path}:7"
    )
    assert report.line().startswith("prompts: skipped 6 of 8 rows: 2 empty prompt (first: ")
    assert json.loads(json.dumps(report.as_dict()))["skipped"]["empty prompt"] == 2


def test_a_single_source_gives_prompts_without_an_origin(tmp_path):
    from spri_sft.generate.inputs import prompt_origin

    prompts = load_prompts(PromptSource(path=jsonl(tmp_path, [{"prompt": "one"}])))
    assert prompt_origin(prompts[0]) == {} and prompt_origin("a plain string") == {}
    assert prompts.report.line() == ""


# -- several sources -------------------------------------------------------------------------


def two_split_dataset(tmp_path, train: list[str], validation: list[str]) -> str:
    """A local dataset folder with a train and a validation split in MixInstruct's layout."""
    folder = tmp_path / "mix-instruct"
    folder.mkdir()
    for split, inputs in (("train", train), ("validation", validation)):
        rows = [mixinstruct_row(n, "", text, output=f"answer to {text}") for n, text in enumerate(inputs)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(folder)


def mix_source(dataset: str, train_limit: int, validation_limit: int, **settings) -> PromptSource:
    from spri_sft.generate.inputs import PromptPart

    return PromptSource(
        dataset=dataset, prompt_column="instruction", context_column="input", response_column="output",
        sources=[PromptPart(split="train", limit=train_limit, sft_split="train"),
                 PromptPart(split="validation", limit=validation_limit, sft_split="validation")],
        **settings,
    )  # fmt: skip


def test_two_sources_give_each_part_its_limit_and_each_prompt_its_origin(tmp_path):
    from spri_sft.generate.inputs import prompt_origin

    dataset = two_split_dataset(
        tmp_path, [f"train question {i}" for i in range(6)], [f"held-out question {i}" for i in range(4)]
    )
    prompts = load_prompts(mix_source(dataset, 3, 2))
    assert prompts == [
        "train question 0",
        "train question 1",
        "train question 2",
        "held-out question 0",
        "held-out question 1",
    ]
    assert [prompt_origin(p) for p in prompts] == [{"prompt_source": f"{dataset}[train]", "sft_split": "train"}] * 3 + [
        {"prompt_source": f"{dataset}[validation]", "sft_split": "validation"}
    ] * 2
    assert prompts.report.parts == {
        f"{dataset}[train]": {"prompts": 3, "sft_split": "train"},
        f"{dataset}[validation]": {"prompts": 2, "sft_split": "validation"},
    }
    assert "3 from " in prompts.report.line() and "(sft_split validation)" in prompts.report.line()


def test_a_later_part_skips_the_prompts_an_earlier_part_holds_and_still_fills_its_limit(tmp_path):
    dataset = two_split_dataset(
        tmp_path, ["shared question", "train only"], ["shared question", "held out 1", "held out 2"]
    )
    prompts = load_prompts(mix_source(dataset, 2, 2, shuffle=True, seed=3))
    validation = [p for p in prompts if p.origin["sft_split"] == "validation"]
    assert sorted(validation) == ["held out 1", "held out 2"]
    assert prompts.report.skipped == {"duplicate prompt": 1}
    assert prompts.report.first_skipped["duplicate prompt"].startswith(f"{dataset}[validation]:row ")


def test_each_part_is_shuffled_with_the_seed_before_its_limit(tmp_path):
    dataset = two_split_dataset(tmp_path, [f"train {i}" for i in range(20)], [f"held out {i}" for i in range(20)])
    first, again = (
        load_prompts(mix_source(dataset, 5, 5, shuffle=True, seed=1)),
        load_prompts(mix_source(dataset, 5, 5, shuffle=True, seed=1)),
    )
    assert first == again and first[:5] != [f"train {i}" for i in range(5)]
    assert all(p.startswith("train") for p in first[:5]) and all(p.startswith("held out") for p in first[5:])


def test_oracle_references_come_from_every_part(tmp_path):
    from spri_sft.generate.inputs import load_references

    dataset = two_split_dataset(tmp_path, ["a train question"], ["a held-out question"])
    references = load_references(mix_source(dataset, 1, 1))
    assert references == {
        "a train question": "answer to a train question",
        "a held-out question": "answer to a held-out question",
    }


def test_a_response_column_no_row_has_is_an_error(tmp_path):
    from spri_sft.generate.inputs import load_references

    path = jsonl(tmp_path, [{"prompt": "one", "response": "fine"}])
    with pytest.raises(
        UserError, match=r"prompts.jsonl:1: missing field 'answer' \(fields: prompt, response\), and no row"
    ):
        load_references(PromptSource(path=path, response_column="answer"))


def test_prompts_limit_beside_sources_is_refused(tmp_path):
    dataset = two_split_dataset(tmp_path, ["a"], ["b"])
    with pytest.raises(UserError, match=r"prompts.limit: with prompts.sources, give each source its own limit"):
        load_prompts(mix_source(dataset, 1, 1, limit=2))


def test_sources_are_read_from_yaml_and_their_fields_checked(tmp_path):
    from spri_sft.config import load_config
    from spri_sft.generate.config import GenerateConfig
    from spri_sft.generate.inputs import PromptPart

    good = tmp_path / "good.yaml"
    good.write_text(
        "prompts:\n  dataset: d\n  sources:\n    - {split: train, limit: 5, sft_split: train}\n    - {split: validation}\n"
    )
    config = load_config(GenerateConfig, ["--config", str(good)])
    assert config.prompts.sources == [
        PromptPart(split="train", limit=5, sft_split="train"),
        PromptPart(split="validation"),
    ]
    for body, message in [
        ("- {split: train, splt: x}", r"bad.yaml: field 'prompts.sources': unknown field 'splt'"),
        (
            "- {split: train, sft_split: test}",
            r"bad.yaml: field 'prompts.sources': field 'sft_split': 'test' is not one of",
        ),
        ("- {split: train, limit: -1}", r"bad.yaml: field 'prompts.sources': field 'limit': must be >= 0, got -1"),
        ("- train", r"bad.yaml: field 'prompts.sources': expected a mapping of PromptPart fields, got 'train'"),
    ]:
        (tmp_path / "bad.yaml").write_text(f"prompts:\n  sources:\n    {body}\n")
        with pytest.raises(UserError, match=message):
            load_config(GenerateConfig, ["--config", str(tmp_path / "bad.yaml")])


def test_two_parts_naming_the_same_place_are_refused(tmp_path):
    from spri_sft.generate.inputs import PromptPart

    dataset = two_split_dataset(tmp_path, ["a"], ["b"])
    source = PromptSource(
        dataset=dataset, prompt_column="input", sources=[PromptPart(split="train"), PromptPart(split="train")]
    )
    with pytest.raises(UserError, match=r"prompts.sources: .*\[train\] is listed twice"):
        load_prompts(source)


# -- the user's own id column ----------------------------------------------------------------


def test_id_column_gives_each_prompt_its_rows_id_as_text(tmp_path):
    from spri_sft.generate.inputs import prompt_origin

    path = jsonl(tmp_path, [{"uid": "a-1", "prompt": "first"}, {"uid": 7, "prompt": "second"}])
    prompts = load_prompts(PromptSource(path=path, id_column="uid"))
    assert prompts == ["first", "second"]
    assert [prompt_origin(p) for p in prompts] == [{"source_id": "a-1"}, {"source_id": "7"}]


def test_id_column_reads_parquet_and_csv_ids(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [10, 11], "prompt": ["p one", "p two"]}), tmp_path / "p.parquet")
    (tmp_path / "p.csv").write_text("id,prompt\nrow-1,c one\n")
    parquet = load_prompts(PromptSource(path=str(tmp_path / "p.parquet"), id_column="id"))
    csv = load_prompts(PromptSource(path=str(tmp_path / "p.csv"), id_column="id"))
    assert [p.origin for p in parquet] == [{"source_id": "10"}, {"source_id": "11"}]
    assert [p.origin for p in csv] == [{"source_id": "row-1"}]


def test_id_column_joins_the_origin_of_each_part_of_a_dataset(tmp_path):
    dataset = two_split_dataset(tmp_path, ["train question"], ["held-out question"])  # MixInstruct ids: unified_chip2/N
    prompts = load_prompts(mix_source(dataset, 1, 1, id_column="id"))
    assert [p.origin for p in prompts] == [
        {"prompt_source": f"{dataset}[train]", "sft_split": "train", "source_id": "unified_chip2/0"},
        {"prompt_source": f"{dataset}[validation]", "sft_split": "validation", "source_id": "unified_chip2/0"},
    ]


def test_a_prompt_whose_row_has_no_usable_id_is_skipped_and_counted(tmp_path):
    rows = [{"uid": "ok", "prompt": "kept"}, {"prompt": "no id field"}, {"uid": None, "prompt": "null id"},
            {"uid": " ", "prompt": "blank id"}, {"uid": [1], "prompt": "list id"}, {"uid": True, "prompt": "bool id"}]  # fmt: skip
    path = jsonl(tmp_path, rows)
    prompts = load_prompts(PromptSource(path=path, id_column="uid"))
    assert prompts == ["kept"]
    assert prompts.report.skipped == {"no id in 'uid'": 3, "'uid' is not a text or integer id": 2}
    assert prompts.report.first_skipped["no id in 'uid'"] == f"{path}:2"


def test_an_id_column_no_row_has_is_an_error_naming_the_first_row_and_its_fields(tmp_path):
    path = jsonl(tmp_path, [{"id": 1, "prompt": "a"}])
    with pytest.raises(
        UserError, match=r"prompts.jsonl:1: missing field 'uid' \(fields: id, prompt\), and no row has it"
    ):
        load_prompts(PromptSource(path=path, id_column="uid"))


def test_a_repeated_prompt_under_another_id_is_counted_apart_and_keeps_the_first_rows_id(tmp_path):
    rows = [{"uid": "u1", "prompt": "same"}, {"uid": "u1", "prompt": "same"}, {"uid": "u2", "prompt": "same"}]
    path = jsonl(tmp_path, rows)
    prompts = load_prompts(PromptSource(path=path, id_column="uid"))
    assert prompts == ["same"] and prompts[0].origin == {"source_id": "u1"}
    assert prompts.report.skipped == {"duplicate prompt": 1, "duplicate prompt under another id": 1}
    assert prompts.report.first_skipped["duplicate prompt under another id"] == f"{path}:3, id 'u2', kept as id 'u1'"
    assert "1 duplicate prompt under another id (first: " in prompts.report.line()


def test_an_id_shared_by_distinct_prompts_is_counted(tmp_path):
    path = jsonl(
        tmp_path, [{"uid": "u1", "prompt": "one"}, {"uid": "u1", "prompt": "two"}, {"uid": "u2", "prompt": "three"}]
    )
    prompts = load_prompts(PromptSource(path=path, id_column="uid"))
    assert prompts == ["one", "two", "three"]  # distinct prompts: all generated
    assert prompts.report.repeated_ids == 1
    assert "1 prompt(s) share an id with an earlier prompt (first: " in prompts.report.line()
    assert prompts.report.as_dict()["first_repeated_id"] == f"{path}:2, id 'u1' as at {path}:1"


def test_without_id_column_an_id_field_is_not_carried(tmp_path):
    prompts = load_prompts(PromptSource(path=jsonl(tmp_path, [{"id": "x", "prompt": "one"}])))
    assert prompts[0].origin == {} and "repeated_ids" not in prompts.report.as_dict()
