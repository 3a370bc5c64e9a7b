"""The benchmark documents format's contamination guard reads (the rule is in `spri_sft.format.contamination`).

- TruthfulQA, always (unless `truthfulqa_file: none`): its questions, by the one TruthfulQA source rule
  (`spri_sft.truthfulqa_data`): format's `truthfulqa_file` when given (the upstream `mc_task.json`, the
  packaged `mc_task.json.gz`, the generation task's `TruthfulQA.csv`, whose `Question` column is all the
  guard reads, or any .json / .jsonl / .parquet with a `question` field per row, the Hub dataset's
  layout), else the Hub dataset, else the packaged copy.
- every lm-evaluation-harness task of `lm_eval_tasks` (in `spri-sft run`: the tasks evaluate scores), read
  through lm-eval's own task API (`TaskManager.load`, which `lm_eval.simple_evaluate` loads tasks
  with): its test and validation documents, a group's for all its subtasks, each as the text lm-eval
  decontaminates against (`doc_to_decontamination_query`, for a task that declares
  `should_decontaminate`) or else the prompt it shows the model (`doc_to_text`; the choices, for a task
  whose text is an index into them, like Winogrande's). A local task (a YAML with local data files, in
  `lm_eval_include_path`) loads offline; a Hub task loads where the Hub is reachable or its dataset is in
  the `datasets` cache, and one that does not load stops format with one line naming the task: a guard
  that silently skipped a benchmark the run scores would be worse than none.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from spri_sft.errors import UserError
from spri_sft.format.contamination import Document
from spri_sft.models import cache_dir
from spri_sft.truthfulqa_data import OFF, TruthfulQASource, choose_source, hub_rows, read_file_rows

TRUTHFULQA = "truthfulqa"  # the benchmark name of the questions format's truthfulqa_file names


def guard_source(truthfulqa_file: str | None) -> TruthfulQASource | None:
    """Format's `truthfulqa_file` by the one rule: the file, else the Hub, else the packaged copy (written to the
    spri-sft cache, never beside the dataset); None when it is `none` (the guard is off)."""
    if truthfulqa_file is not None and truthfulqa_file.strip().lower() == OFF:
        return None
    directory = cache_dir() / "truthfulqa"
    return choose_source(truthfulqa_file, directory=directory, setting="truthfulqa_file", purpose="guard")


def source_questions(source: TruthfulQASource) -> list[str]:
    """The questions of a source: its file's, or the Hub dataset's."""
    if source.file is not None:
        return read_questions(source.file)
    return [str(row.value["question"]) for row in hub_rows(source.dataset, source.split)]


def truthfulqa_documents(questions: list[str], split: str = "validation") -> list[Document]:
    return [Document(TRUTHFULQA, TRUTHFULQA, split, number, question) for number, question in enumerate(questions)]


def read_questions(path: str | Path) -> list[str]:
    """The questions of a TruthfulQA file (a `.gz` read as the file inside), in file order, read by `spri_sft.rows`
    (every problem names the file and its line, item or row)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: TruthfulQA file not found (set --truthfulqa_file to mc_task.json or TruthfulQA.csv)")
    questions = []
    for row in read_file_rows(path, what="TruthfulQA file")[0]:
        question = row.value.get("question", row.value.get("Question")) if isinstance(row.value, dict) else None
        if not isinstance(question, str):
            raise UserError(f"{path}:{row.where}: no 'question' (or CSV 'Question') field")
        questions.append(question)
    if not questions:
        raise UserError(f"{path}: holds no questions")
    return questions


def lm_eval_documents(tasks: list[str], include_path: str | None, include_defaults: bool) -> list[Document]:
    """The test and validation documents of every task (or group) named, in the order named, through lm-eval."""
    if not tasks:
        return []
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError(
            "lm_eval_tasks: reading the tasks' documents needs lm-evaluation-harness, which is not installed: "
            "pip install 'spri-sft[lm-eval]' (or set lm_eval_tasks: [])"
        ) from None
    if include_path and not Path(include_path).is_dir():
        raise UserError(f"lm_eval_include_path {include_path}: not a folder")
    if not include_defaults and not include_path:
        raise UserError("lm_eval_include_defaults: false needs lm_eval_include_path (a folder of task YAMLs)")
    with _quiet_lm_eval():
        manager = TaskManager(include_path=include_path, include_defaults=include_defaults)
    missing = [task for task in tasks if task not in set(manager.all_tasks)]
    if missing:
        raise UserError(f"lm_eval_tasks: {', '.join(missing)} not found among lm-eval's tasks (`lm-eval ls tasks`)")
    documents = []
    for name in tasks:
        try:
            with _quiet_lm_eval():
                loaded = manager.load([name])["tasks"]  # every leaf task, a group's subtasks included
        except Exception as err:  # noqa: BLE001  (a Hub dataset out of reach, a broken YAML: one line for all)
            first = str(err).splitlines()[0] if str(err) else ""
            raise UserError(
                f"lm_eval_tasks: could not load the documents of {name!r} to check the SFT data against them "
                f"({type(err).__name__}: {first}); a Hub task needs the Hub or its dataset in the datasets cache, "
                "a local one its data files"
            ) from None
        for task_name, task in loaded.items():
            documents += _task_documents(name, task_name, task)
    return documents


def _task_documents(benchmark: str, task_name: str, task) -> list[Document]:
    documents = []
    splits = [
        ("test", task.has_test_docs, task.test_docs),
        ("validation", task.has_validation_docs, task.validation_docs),
    ]
    named = {
        "test": getattr(task.config, "test_split", None),
        "validation": getattr(task.config, "validation_split", None),
    }
    for split, has, docs in splits:
        if not has():
            continue
        for number, doc in enumerate(docs()):
            documents.append(Document(benchmark, task_name, named[split] or split, number, _document_text(task, doc)))
    return documents


def _document_text(task, doc) -> str:
    """What lm-eval itself decontaminates against, else the prompt it shows the model (or the choices, for a task
    whose doc_to_text is an index into them)."""
    if task.should_decontaminate():
        text = task.doc_to_decontamination_query(doc)
    else:
        text = task.doc_to_text(doc)
    if isinstance(text, str):
        return text
    choices = task.doc_to_choice(doc)
    return " ".join(map(str, choices)) if isinstance(choices, list) else str(text)


@contextlib.contextmanager
def _quiet_lm_eval():
    """lm-eval logs a line per task and per default it fills in at INFO/WARNING; format says what it read itself."""
    loggers = [logging.getLogger(name) for name in ("lm-eval", "lm_eval")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
