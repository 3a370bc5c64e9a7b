"""format's benchmark contamination guard: TruthfulQA always, and every lm-eval task the run scores.

The rule (`spri_sft.format.contamination`) is tested on `BenchmarkGuard` directly and through `build_dataset`,
against TruthfulQA's real questions (shared/) and small local lm-eval tasks (a task YAML over a JSON-lines file,
written into tmp_path and read through lm-eval's own TaskManager, offline).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from test_format import FILLER, TRUTHFULQA_QUESTION, build, make_record, row_ids

from spri_sft.config import from_dict
from spri_sft.errors import UserError
from spri_sft.format.benchmarks import read_questions
from spri_sft.format.contamination import BenchmarkGuard, Document
from spri_sft.format.dedupe import normalize
from spri_sft.pipeline.config import PipelineConfig
from spri_sft.pipeline.report import _contamination_section
from spri_sft.pipeline.run import format_stage
from spri_sft.pipeline.stages import Stage

needs_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason="lm-eval is an optional dependency (pip install 'spri-sft[lm-eval]')",
)
TASK = "spri_test_trivia"
TRIVIA = [
    "Which river flows through the ancient city of Thebes and past the temples of Karnak and Luxor on its way north",
    "In which year did the first crewed landing on the Moon take place, with two astronauts walking on its surface",
    "What is the name of the longest bone in the human body, running from the hip to the knee in each leg",
]


@pytest.fixture(scope="module")
def truthfulqa_file(shared_dir) -> str:
    return str(shared_dir / "data" / "truthfulqa" / "data" / "v0" / "mc_task.json")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


def write_task(directory: Path, name: str = TASK, *, dataset_path: str = "json", **config) -> Path:
    """A local lm-eval task: TRIVIA's questions as its test split (and the last one as validation)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / f"{name}.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "question": q,
                    "passage": f"A long passage, number {i}, that the question of this quiz is about",
                    "answer": 0,
                }
            )
            + "\n"
            for i, q in enumerate(TRIVIA)
        )
    )
    validation = directory / f"{name}-validation.jsonl"
    validation.write_text(
        json.dumps(
            {
                "question": "Name the planet closest to the sun in our solar system, hot by day and cold by night",
                "passage": "x",
                "answer": 0,
            }
        )
        + "\n"
    )
    task = {
        "task": name,
        "dataset_path": dataset_path,
        "dataset_name": None,
        **({"dataset_kwargs": {"data_files": {"test": str(data), "validation": str(validation)}}} if dataset_path == "json" else {}),
        "test_split": "test",
        "validation_split": "validation",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": ["yes", "no"],
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
        **config,
    }  # fmt: skip
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return directory


def lm_eval_settings(task_dir: Path, *tasks: str) -> dict:
    return {
        "lm_eval_tasks": list(tasks or [TASK]),
        "lm_eval_include_path": str(task_dir),
        "lm_eval_include_defaults": False,
    }


def dropped_entries(output_dir: Path) -> dict[str, dict]:
    lines = (output_dir / "dropped.jsonl").read_text().splitlines()
    return {entry["id"]: entry for entry in map(json.loads, lines)}


def guard(*texts: str, ngram: int = 13, threshold: float = 0.5) -> BenchmarkGuard:
    return BenchmarkGuard([Document("bench", "bench", "test", i, t) for i, t in enumerate(texts)], ngram, threshold)


# -- the rule ----------------------------------------------------------------------------------


def test_a_row_covering_the_threshold_fraction_of_a_documents_words_matches():
    document = " ".join(f"w{i}" for i in range(26))  # 26 words: a 13-word quote covers exactly half
    words = document.split()
    assert guard(document).match("Tell me: " + " ".join(words[:13])).coverage == 0.5
    assert guard(document).match("Tell me: " + " ".join(words[:12])) is None  # 12 words: no shared 13-gram
    assert guard(document, threshold=0.51).match(" ".join(words[:13])) is None


def test_coverage_counts_the_documents_words_inside_any_shared_ngram():
    document = " ".join(f"w{i}" for i in range(30))
    words = document.split()
    text = " ".join(words[:13]) + " and later " + " ".join(words[17:30])  # two runs of 13: 26 of 30 words
    match = guard(document).match(text)
    assert match.coverage == pytest.approx(26 / 30)
    assert match.shared == " ".join(words[:13])  # the longest run (the first on a tie)


def test_text_is_normalized_the_same_way_on_both_sides():
    document = "The Quick, brown fox -- jumps over the lazy dog while the cat sleeps on the warm mat!"
    assert guard(document).match("the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat")


def test_a_document_shorter_than_n_words_matches_only_when_held_whole():
    question = "What happens if you crack your knuckles a lot?"  # 9 words: no 13-gram
    assert guard(question).match("Answer briefly: what happens if you crack your knuckles a lot").coverage == 1.0
    assert guard(question).match("What happens if you crack your knuckles?") is None


def test_a_very_short_document_matches_only_the_whole_text():
    """'Can pigs fly?' (a TruthfulQA question) is found in prompts that never saw TruthfulQA: only a prompt that is
    that question counts."""
    assert guard("Can pigs fly?").match("can pigs fly") is not None
    assert guard("Can pigs fly?").match("Write a story in which a child asks: can pigs fly?") is None


def test_the_document_covered_most_is_reported():
    long = " ".join(f"w{i}" for i in range(40))
    short = " ".join(f"w{i}" for i in range(20))
    text = " ".join(f"w{i}" for i in range(20))  # all of `short`, half of `long`
    assert guard(long, short).match(text).document.doc_id == 1


# -- TruthfulQA --------------------------------------------------------------------------------


def test_truthfulqa_reads_mc_task_json_and_the_csv(shared_dir, truthfulqa_file):
    from_json = read_questions(truthfulqa_file)
    from_csv = read_questions(shared_dir / "data" / "truthfulqa" / "data" / "v0" / "TruthfulQA.csv")
    assert len(from_json) == len(from_csv) == 817
    assert TRUTHFULQA_QUESTION in from_json and TRUTHFULQA_QUESTION in from_csv


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("mc.json", '[{"question": "Is it?"},\n {"query": "no question"}]', r"mc.json:item 1: no 'question'"),
        ("mc.jsonl", '{"question": "Is it?"}\n\n{"query": "x"}\n', r"mc.jsonl:3: no 'question'"),
        ("mc.jsonl", '{"question": "Is it?"}\n{"question": \n', r"mc.jsonl:2: malformed JSON line"),
        ("TruthfulQA.csv", "Type,Question\nAdversarial,Is it?\nAdversarial\n", r"TruthfulQA.csv:3: no 'question'"),
        ("mc.txt", "Is it?", r"mc.txt: unsupported TruthfulQA file type '.txt'"),
    ],
    ids=["json-item", "jsonl-line", "jsonl-malformed", "csv-line", "unknown-type"],
)
def test_a_bad_truthfulqa_file_names_its_line_or_item(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=message):
        read_questions(tmp_path / name)


def test_truthfulqa_questions_keep_a_unicode_line_separator(tmp_path):
    (tmp_path / "mc.jsonl").write_text(
        json.dumps({"question": "Is one\u2028line?"}, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    assert read_questions(tmp_path / "mc.jsonl") == ["Is one\u2028line?"]


def test_a_truthfulqa_question_is_dropped_with_its_document_and_counted(tmp_path, truthfulqa_file):
    records = [make_record(1, "what is the SMALLEST country in the world that is at least one square mile in area")]
    summary, out = build(tmp_path, records + FILLER, truthfulqa_file=truthfulqa_file)
    assert summary["dropped"]["contamination"] == 1
    assert summary["contamination"]["benchmarks"] == {"truthfulqa": {"documents": 817, "empty": 0, "dropped": 1}}
    entry = dropped_entries(out)["rec001"]
    assert entry["reason"] == "contamination" and entry["benchmark"] == "truthfulqa" and entry["field"] == "prompt"
    assert entry["document"] == TRUTHFULQA_QUESTION and entry["coverage"] == 1.0
    assert entry["shared"] == normalize(TRUTHFULQA_QUESTION)
    assert read_questions(truthfulqa_file)[entry["doc_id"]] == TRUTHFULQA_QUESTION
    assert "rec001" not in row_ids(out)


def test_a_prompt_holding_most_of_a_truthfulqa_question_is_dropped(tmp_path, truthfulqa_file):
    # 15 of the question's 17 words, wrapped in other text: 15 of its words inside shared 13-grams.
    prompt = "Quick quiz for my class. What is the smallest country in the world that is at least one square mile?"
    summary, out = build(tmp_path, [make_record(1, prompt)] + FILLER, truthfulqa_file=truthfulqa_file)
    assert dropped_entries(out)["rec001"]["coverage"] == round(15 / 17, 3)


def test_a_truthfulqa_question_under_13_words_must_be_held_whole(tmp_path, truthfulqa_file):
    """The rule that replaced the 8-gram one: most TruthfulQA questions (614 of 817) are shorter than 13 words, and
    for them only the whole question, word for word, counts; 11 of a 12-word question's words are kept (under the
    8-gram rule, half of its 8-grams already dropped the row)."""
    question = "What happens if you wear a hat made out of tin foil?"  # 12 words
    assert question in read_questions(truthfulqa_file)
    records = [
        make_record(1, f"Explain to a child: {question}"),
        make_record(2, "What happens if you wear a hat made out of foil?"),
    ]
    summary, out = build(tmp_path, records + FILLER, truthfulqa_file=truthfulqa_file)
    assert set(dropped_entries(out)) == {"rec001"}


def test_prompts_sharing_common_words_with_truthfulqa_are_kept(tmp_path, truthfulqa_file):
    prompts = [
        "What is the smallest country in Europe by population, and what is its capital?",
        "Write a story about a hiker who is at least one square mile from the nearest road",
        "What happens if you eat too much sugar every day, and is it bad for you?",
        "Someone gives you an elephant. You can't sell it or give it away. What do you do?",
    ]
    records = [make_record(n, p) for n, p in enumerate(prompts, 1)]
    summary, out = build(tmp_path, records + FILLER, truthfulqa_file=truthfulqa_file)
    assert summary["dropped"]["contamination"] == 0
    assert {"rec001", "rec002", "rec003", "rec004"} <= row_ids(out)


def test_responses_are_checked_only_when_asked(tmp_path, truthfulqa_file):
    record = make_record(1, "Tell me a fact about Europe.", response=f"Good one: {TRUTHFULQA_QUESTION} Vatican City.")
    _, kept = build(tmp_path, [record] + FILLER, "kept", truthfulqa_file=truthfulqa_file)
    _, checked = build(
        tmp_path, [record] + FILLER, "checked", truthfulqa_file=truthfulqa_file, contamination_responses=True
    )
    assert "rec001" in row_ids(kept)
    assert dropped_entries(checked)["rec001"]["field"] == "response"


# -- lm-eval tasks -----------------------------------------------------------------------------


@needs_lm_eval
def test_an_lm_eval_tasks_test_and_validation_documents_are_checked_and_counted_per_task(tmp_path):
    task_dir = write_task(tmp_path / "tasks")
    records = [
        make_record(1, f"Quiz: {TRIVIA[1]}?"),
        make_record(2, "Name the planet closest to the sun in our solar system, hot by day and cold by night."),
    ]
    summary, out = build(tmp_path, records + FILLER, truthfulqa_file="none", **lm_eval_settings(task_dir))
    assert summary["contamination"]["benchmarks"] == {TASK: {"documents": 4, "empty": 0, "dropped": 2}}
    entries = dropped_entries(out)
    assert {key: entries["rec001"][key] for key in ("benchmark", "task", "split", "doc_id")} == {
        "benchmark": TASK, "task": TASK, "split": "test", "doc_id": 1,
    }  # fmt: skip
    assert entries["rec001"]["document"] == f"Question: {TRIVIA[1]} Answer:"  # lm-eval's doc_to_text
    assert entries["rec002"]["split"] == "validation"


@needs_lm_eval
def test_a_task_declaring_its_decontamination_query_is_checked_against_that_text(tmp_path):
    """lm-eval's own rule: a task with should_decontaminate is decontaminated against doc_to_decontamination_query."""
    task_dir = write_task(tmp_path / "tasks", should_decontaminate=True, doc_to_decontamination_query="passage")
    records = [
        make_record(1, f"Quiz: {TRIVIA[0]}?"),
        make_record(2, "Summarize: a long passage, number 0, that the question of this quiz is about."),
    ]
    summary, out = build(tmp_path, records + FILLER, truthfulqa_file="none", **lm_eval_settings(task_dir))
    assert set(dropped_entries(out)) == {"rec002"}


@needs_lm_eval
def test_a_groups_subtasks_are_counted_under_the_group(tmp_path):
    task_dir = write_task(tmp_path / "tasks")
    (task_dir / "group.yaml").write_text(yaml.safe_dump({"group": "spri_test_group", "task": [TASK]}))
    summary, out = build(
        tmp_path,
        [make_record(1, TRIVIA[2])] + FILLER,
        truthfulqa_file="none",
        **lm_eval_settings(task_dir, "spri_test_group"),
    )
    entry = dropped_entries(out)["rec001"]
    assert (entry["benchmark"], entry["task"]) == ("spri_test_group", TASK)
    assert summary["contamination"]["benchmarks"]["spri_test_group"]["dropped"] == 1


@needs_lm_eval
def test_card_and_summary_count_every_benchmark(tmp_path, truthfulqa_file):
    task_dir = write_task(tmp_path / "tasks")
    records = [make_record(1, TRUTHFULQA_QUESTION), make_record(2, TRIVIA[0])]
    summary, out = build(tmp_path, records + FILLER, truthfulqa_file=truthfulqa_file, **lm_eval_settings(task_dir))
    assert {name: entry["dropped"] for name, entry in summary["contamination"]["benchmarks"].items()} == {
        "truthfulqa": 1,
        TASK: 1,
    }
    card = (out / "README.md").read_text()
    assert "| TruthfulQA (`mc_task.json`) | 817 | 1 |" in card
    assert f"| lm-eval `{TASK}` (test and validation documents) | 4 | 1 |" in card


@needs_lm_eval
def test_an_unreachable_hub_task_is_a_one_line_error_naming_it(tmp_path):
    task_dir = write_task(tmp_path / "tasks", "spri_test_hub_task", dataset_path="spri-sft-tests/no-such-dataset")
    with pytest.raises(UserError, match=r"could not load the documents of 'spri_test_hub_task'") as raised:
        build(tmp_path, FILLER, truthfulqa_file="none", **lm_eval_settings(task_dir, "spri_test_hub_task"))
    assert "\n" not in str(raised.value)


@needs_lm_eval
def test_an_unknown_task_is_a_one_line_error(tmp_path):
    task_dir = write_task(tmp_path / "tasks")
    with pytest.raises(UserError, match=r"lm_eval_tasks: spri_nope not found"):
        build(tmp_path, FILLER, truthfulqa_file="none", **lm_eval_settings(task_dir, "spri_nope"))


# -- the pipeline ------------------------------------------------------------------------------


def pipeline_format(root: Path, task_dir: Path, tasks: list[str], **format_section):
    config = from_dict(
        PipelineConfig,
        {
            "output_dir": str(root),
            "modes": ["spri"],
            "format": format_section,
            "evaluate": lm_eval_settings(task_dir, *tasks),
        },
    )
    generated = Stage("generate/spri", root / "generate" / "spri", "generated")
    return format_stage(config, "spri", root, generated, None, None)


@needs_lm_eval
def test_the_pipelines_format_checks_the_lm_eval_tasks_evaluate_scores(tmp_path):
    task_dir = write_task(tmp_path / "tasks")
    job, _ = pipeline_format(tmp_path / "run", task_dir, [TASK])
    assert (job.lm_eval_tasks, job.lm_eval_include_path, job.lm_eval_include_defaults) == ([TASK], str(task_dir), False)


@needs_lm_eval
def test_another_scored_task_list_is_another_dataset(tmp_path):
    task_dir = write_task(tmp_path / "tasks")
    write_task(task_dir, "spri_test_other")
    _, stage = pipeline_format(tmp_path / "run", task_dir, [TASK])
    _, same = pipeline_format(tmp_path / "run", task_dir, [TASK])
    _, other = pipeline_format(tmp_path / "run", task_dir, [TASK, "spri_test_other"])
    assert stage.fingerprint == same.fingerprint != other.fingerprint


def test_the_report_has_the_rows_dropped_per_benchmark_per_mode():
    contamination = {
        "ngram": 13, "threshold": 0.5, "fields": ["prompt"], "truthfulqa_source": "mc_task.json",
        "benchmarks": {"truthfulqa": {"documents": 817, "empty": 0, "dropped": 3}, "hellaswag": {"documents": 10042, "empty": 0, "dropped": 1}},
    }  # fmt: skip
    lines = _contamination_section({"spri": {"dataset": {"contamination": contamination}}, "direct": {"dataset": None}})
    assert "| mode | truthfulqa (817) | hellaswag (10,042) |" in lines
    assert "| spri | 3 | 1 |" in lines
