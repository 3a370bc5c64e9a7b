"""Reading prompts from files and mapping their columns, with errors that name file, line and field."""

import json

import pytest

from spri_sft.errors import UserError
from spri_sft.generate.inputs import PromptSource, load_prompts


def jsonl(tmp_path, rows, name="prompts.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_builtin_prompts_are_used_when_no_source_is_given():
    prompts = load_prompts(PromptSource())
    assert len(prompts) >= 8 and all(p.strip() for p in prompts)


def test_context_column_is_appended_after_a_blank_line(tmp_path):
    path = jsonl(tmp_path, [{"instruction": "Summarize this.", "context": "A long text."}, {"instruction": "Hi?", "context": ""}])
    prompts = load_prompts(PromptSource(path=path, prompt_column="instruction", context_column="context"))
    assert prompts == ["Summarize this.\n\nA long text.", "Hi?"]


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


def test_missing_column_names_line_and_field(tmp_path):
    path = jsonl(tmp_path, [{"prompt": "ok"}, {"question": "wrong key"}])
    with pytest.raises(UserError, match=r"prompts.jsonl:2: missing field 'prompt' \(fields: question\)"):
        load_prompts(PromptSource(path=path))


def test_empty_prompt_names_line_and_field(tmp_path):
    path = jsonl(tmp_path, [{"instruction": "   "}])
    with pytest.raises(UserError, match=r"prompts.jsonl:1: empty prompt in field 'instruction'"):
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
        ("p.csv", b'prompt,note\nfine,1\n"two\nlines",2\n,3\n', r"p.csv:5: empty prompt in field 'prompt'"),
        ("p.csv", b"prompt\nfine\nbad,extra\n", r"p.csv:3: 1 more cell\(s\) than the header has columns"),
        ("p.json", b'[\n  {"prompt": "a"},\n  {"prompt": }\n]\n', r"p.json:3: malformed JSON"),
        ("latin1.jsonl", '{"prompt": "caf\u00e9"}\n'.encode("latin-1"), r"latin1.jsonl: not UTF-8 text"),
    ],
    ids=["csv-line-after-a-quoted-newline", "csv-extra-cell", "json-syntax", "not-utf8"],
)
def test_a_bad_prompts_file_names_its_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_prompts(PromptSource(path=str(tmp_path / name)))


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
