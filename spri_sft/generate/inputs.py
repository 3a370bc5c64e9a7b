"""Read user prompts from local JSONL/JSON/CSV/Parquet files or Hugging Face datasets.

A row's prompt is made from its `prompt_column` and, when set, its `context_column` (dotted
paths into nested rows; integers index lists):

- both non-empty: the prompt field, a blank line, the context (Dolly: `instruction` + `context`;
  Self-Instruct: `instruction` + `instances.0.input`);
- the prompt field empty or absent: the context alone. MixInstruct (`llm-blender/mix-instruct`)
  rows are `{id, instruction, input, output, candidates}`, and its GPT4All and ShareGPT rows
  have an empty `instruction` with the whole request in `input` (LLM-Blender's own loader reads
  a row as `instruction + input`; a blank line joins the two here, as for Dolly);
- neither: the row makes no prompt.

A row that makes no prompt is skipped and counted by its reason (`PromptReport`), never a
crash: an empty prompt, a field that is not text, a row that is not an object; so is a repeated
prompt (its record id would collide with its twin's). But a prompt or context column that no row
has is a wrong column name: an error naming the first row and the fields it does have. A
malformed file is an error naming its file and line (files are read by `spri_sft.rows`).

The row's own id (`id_column`, e.g. a dataset's `id` or `uid`) travels with its prompt
(`Prompt.origin["source_id"]`, as text) into its record, format's dataset row and dropped.jsonl,
so every output joins back to the source. It is not part of the record id (`identity.py`): it
changes nothing the models are sent, so setting it regenerates nothing. A row with a prompt but no
usable id is skipped and counted; a repeated prompt is kept once under its first row's id, and
counted apart ("duplicate prompt under another id") when its id differs, so no id vanishes unsaid;
ids that repeat across distinct prompts are counted too (a join on them would be ambiguous).

One prompt set from several sources: `sources` lists its parts (e.g. MixInstruct's train and
validation splits), each with its own split, limit and `sft_split`: the SFT split `spri-sft
format` puts its prompts in (`auto`: format's hash of the prompt decides). Each prompt keeps its
part's name and `sft_split` (`Prompt.origin`), which `spri-sft generate` writes into its record.
A single source (no `sources`) gives prompts without an origin, and records as before.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from spri_sft.errors import UserError
from spri_sft.rows import read_rows

BUILTIN_PROMPTS = Path(__file__).resolve().parent.parent / "data" / "prompts.jsonl"
SFT_SPLITS = ("auto", "train", "validation")


@dataclass
class PromptPart:
    """One part of a prompt set read from several places, e.g. a dataset's train or validation split."""

    split: str | None = field(default=None, metadata={"help": "Dataset split of this part; unset: prompts.split."})
    path: str | None = field(
        default=None, metadata={"help": "Local file of this part; unset: prompts.path (or prompts.dataset)."}
    )
    dataset: str | None = field(
        default=None, metadata={"help": "Hugging Face dataset of this part; unset: prompts.dataset (or prompts.path)."}
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "This part's dataset configuration; unset: prompts.dataset_config."}
    )
    limit: int | None = field(
        default=None,
        metadata={
            "help": "Keep the first N new prompts of this part (after shuffling; prompts an earlier part holds are not new).",
            "ge": 0,
        },
    )
    sft_split: Literal["auto", "train", "validation"] = field(
        default="auto",
        metadata={
            "help": "The SFT split `spri-sft format` puts this part's prompts in; auto: format's hash of the prompt decides."
        },
    )


@dataclass
class PromptSource:
    """Where the prompts come from and how to read them."""

    path: str | None = field(
        default=None,
        metadata={
            "help": "Local .jsonl/.json/.csv/.parquet file; unset (and no dataset) uses the package's built-in prompts."
        },
    )
    dataset: str | None = field(
        default=None, metadata={"help": "Hugging Face dataset id, e.g. databricks/databricks-dolly-15k."}
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "The dataset's configuration name, if it has several."}
    )
    split: str = field(default="train", metadata={"help": "Dataset split."})
    prompt_column: str = field(
        default="prompt", metadata={"help": "Field holding the prompt (dotted path for nested rows)."}
    )
    context_column: str | None = field(
        default=None,
        metadata={
            "help": "Optional field appended to the prompt after a blank line (e.g. instances.0.input); the prompt when the prompt field is empty."
        },
    )
    response_column: str | None = field(
        default=None,
        metadata={
            "help": "mode oracle: field holding each prompt's own response (Dolly: response, MixInstruct: output)."
        },
    )
    id_column: str | None = field(
        default=None,
        metadata={
            "help": "Field holding each row's own id (text or integer; e.g. id, uid), carried as `source_id` into its "
            "record, format's dataset row and dropped.jsonl to join back to the source; record ids do not change."
        },
    )
    shuffle: bool = field(default=False, metadata={"help": "Shuffle before --prompts.limit is applied."})
    seed: int = field(default=0, metadata={"help": "Shuffle seed."})
    limit: int | None = field(
        default=None,
        metadata={
            "help": "Keep only the first N prompts (after shuffling); with sources, set each one's limit.",
            "ge": 0,
        },
    )
    sources: list[PromptPart] = field(
        default_factory=list,
        metadata={
            "help": "Several parts of one prompt set, read in this order, each {split, path, dataset, dataset_config, limit, "
            "sft_split}; a part's unset place is this section's, columns, shuffle and seed are this section's. "
            "E.g. [{split: train, limit: 50000, sft_split: train}, {split: validation, limit: 2000, sft_split: validation}]."
        },
    )


class Prompt(str):
    """A prompt's text, as a `str` (everything that takes a prompt takes it), that also keeps where it
    came from: `origin` is `{"prompt_source": part name, "sft_split": ...}` for a prompt of one of
    `PromptSource.sources`, and empty for a single source; with `id_column`, also `{"source_id": the
    row's id}`; for a prompt made of both a prompt field and a context, also `{"instruction": the
    prompt field}`. The record of the prompt carries it."""

    origin: dict[str, str]

    def __new__(cls, text: str, origin: dict[str, str] | None = None):
        prompt = super().__new__(cls, text)
        prompt.origin = dict(origin or {})
        return prompt


def prompt_origin(prompt: str) -> dict[str, str]:
    """The fields a record of `prompt` carries about its origin (none for a plain string)."""
    return dict(prompt.origin) if isinstance(prompt, Prompt) else {}


@dataclass
class PromptReport:
    """What reading a prompt set found: rows read, prompts kept per part, rows skipped by reason."""

    rows: int = 0
    parts: dict[str, dict] = field(default_factory=dict)  # part name -> {"prompts": n, "sft_split": ...}
    skipped: Counter = field(default_factory=Counter)  # reason -> rows
    first_skipped: dict[str, str] = field(default_factory=dict)  # reason -> where its first row is
    repeated_ids: int = 0  # kept prompts whose id_column value an earlier prompt of their part has
    first_repeated_id: str = ""  # where the first of them is
    shard: dict | None = None  # {"shard": "i/N", "prompts": kept, "of": all}, when one shard is generated

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.first_skipped.setdefault(reason, where)

    def line(self) -> str:
        """One line on what was read, or "" when there is nothing to say (one source, no row skipped)."""
        said = []
        if len(self.parts) > 1:
            said.append(
                ", ".join(
                    f"{n['prompts']:,} from {name} (sft_split {n['sft_split']})" for name, n in self.parts.items()
                )
            )
        if self.skipped:
            reasons = ", ".join(
                f"{count:,} {reason} (first: {self.first_skipped[reason]})"
                for reason, count in self.skipped.most_common()
            )
            said.append(f"skipped {sum(self.skipped.values()):,} of {self.rows:,} rows: {reasons}")
        if self.repeated_ids:
            said.append(
                f"{self.repeated_ids:,} prompt(s) share an id with an earlier prompt (first: {self.first_repeated_id})"
            )
        if self.shard:
            said.append(f"shard {self.shard['shard']}: {self.shard['prompts']:,} of {self.shard['of']:,} prompts")
        return "prompts: " + "; ".join(said) if said else ""

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "parts": self.parts,
            "skipped": dict(self.skipped.most_common()),
            "first_skipped": self.first_skipped,
            **(
                {"repeated_ids": self.repeated_ids, "first_repeated_id": self.first_repeated_id}
                if self.repeated_ids
                else {}
            ),
            **({"shard": self.shard} if self.shard else {}),
        }


class PromptList(list):
    """The prompts (each a `Prompt`), in order, and `report`: what reading them found."""

    def __init__(self, prompts=(), report: PromptReport | None = None):
        super().__init__(prompts)
        self.report = report or PromptReport()


def load_prompts(source: PromptSource, shard: str | None = None) -> PromptList:
    """The prompts, in order, without duplicates; rows that make no prompt (or, with `id_column`, no id)
    are skipped and counted. With `shard` ("i/N"), only those of that shard (`select_shard`)."""
    if source.sources and source.limit is not None:
        raise UserError(
            "prompts.limit: with prompts.sources, give each source its own limit (prompts.sources[i].limit)"
        )
    report = PromptReport()
    prompts = PromptList(report=report)
    kept: dict[str, str | None] = {}  # prompt -> the id of the row it was kept from
    for part in _parts(source):
        drawn, seen = [], {}
        skipped_before = Counter(report.skipped)
        ids = _ColumnCheck([source.id_column]) if source.id_column else None
        for where, row, text in _composed_rows(part, report):
            if text is None:
                continue
            source_id = None
            if ids is not None:
                source_id, reason = _source_id(row, source.id_column, where, ids)
                if reason:
                    report.skip(reason, where)
                    continue
            if text in seen:
                _skip_duplicate(report, where, source_id, seen[text])
                continue
            seen[text] = source_id
            drawn.append((where, text, source_id))
        if ids is not None:
            ids.check()
        if not drawn:
            skipped = report.skipped - skipped_before
            why = ", ".join(
                f"{n} {reason}, first {report.first_skipped[reason]}" for reason, n in skipped.most_common()
            )
            raise UserError(f"{part.name}: no prompts found: every row was skipped ({why})")
        if source.shuffle:
            random.Random(source.seed).shuffle(drawn)
        new = []
        for where, text, source_id in drawn:
            if text in kept:
                _skip_duplicate(report, where, source_id, kept[text])  # an earlier part already holds it
            else:
                new.append((where, text, source_id))
        if part.limit is not None:
            new = new[: part.limit]
        kept.update((text, source_id) for _, text, source_id in new)
        if ids is not None:
            _count_repeated_ids(report, new)
        origin = {"prompt_source": part.name, "sft_split": part.sft_split} if source.sources else {}
        for _, text, source_id in new:
            found = {**origin, "source_id": source_id} if ids is not None else origin
            prompts.append(Prompt(text, {**found, **prompt_origin(text)}))
        report.parts[part.name] = {"prompts": len(new), "sft_split": part.sft_split}
    return select_shard(prompts, shard)


def _source_id(row: dict, column: str, where: str, ids: _ColumnCheck) -> tuple[str | None, str | None]:
    """(the row's id as text, None), or (None, why it has no usable one). Text, so that one column type
    holds every source's ids in records and datasets: an integer id 7 is "7"."""
    value = ids.value(row, column, where)
    if value is _MISSING or value is None or (isinstance(value, str) and not value.strip()):
        return None, f"no id in '{column}'"
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None, f"'{column}' is not a text or integer id"
    return str(value), None


def _skip_duplicate(report: PromptReport, where: str, source_id: str | None, kept_id: str | None) -> None:
    """Count a repeated prompt; one whose row has another id than the kept one is counted apart, naming both."""
    if source_id is not None and source_id != kept_id:
        report.skip("duplicate prompt under another id", f"{where}, id {source_id!r}, kept as id {kept_id!r}")
    else:
        report.skip("duplicate prompt", where)


def _count_repeated_ids(report: PromptReport, kept: list[tuple[str, str, str | None]]) -> None:
    """Count the kept prompts of one part whose id an earlier kept prompt of it has: a join on them is ambiguous."""
    first_of: dict[str | None, str] = {}
    for where, _, source_id in kept:
        if source_id in first_of:
            report.repeated_ids += 1
            report.first_repeated_id = (
                report.first_repeated_id or f"{where}, id {source_id!r} as at {first_of[source_id]}"
            )
        else:
            first_of[source_id] = where


def parse_shard(shard: str) -> tuple[int, int]:
    """`"i/N"` as (i, N), with 0 <= i < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
    if not match:
        raise UserError(f"--shard: expected i/N (e.g. 0/4), got {shard!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise UserError(f"--shard: need N >= 1 and 0 <= i < N, got {shard!r}")
    return index, count


def shard_of(text: str, count: int) -> int:
    """The shard (of `count`) a prompt belongs to: a hash of its text, so the split depends on nothing
    but the prompts themselves (not their order, the file, the machine or Python's hash seed)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") % count


def select_shard(prompts: PromptList, shard: str | None) -> PromptList:
    """The prompts of shard `i/N`, in their order; all of them when `shard` is None. The N shards of
    one prompt set are disjoint and together hold every prompt."""
    if shard is None:
        return prompts
    index, count = parse_shard(shard)
    kept = PromptList((p for p in prompts if shard_of(p, count) == index), report=prompts.report)
    prompts.report.shard = {"shard": f"{index}/{count}", "prompts": len(kept), "of": len(prompts)}
    return kept


def load_references(source: PromptSource) -> dict[str, str]:
    """Each prompt's own response in the source (`response_column`), for the `oracle` mode: the
    first row of a prompt wins, as in `load_prompts`; a row with an empty response gives none.
    A response column that no row has is an error, like a wrong prompt column."""
    if not source.response_column:
        raise UserError("mode oracle: set prompts.response_column to the field holding each prompt's own response")
    references: dict[str, str] = {}
    for part in _parts(source):
        column = _ColumnCheck([source.response_column])
        for where, row, text in _composed_rows(part, PromptReport(), also=source.response_column):
            response = column.value(row, source.response_column, where)
            if text is not None and text not in references and isinstance(response, str) and response.strip():
                references[text] = response.strip()
        column.check()
    return references


# -- the parts of a source -------------------------------------------------------------------


@dataclass
class _Part:
    """One place to read rows from, with everything needed to read them."""

    name: str  # as messages and records name it: the file, or dataset[split]
    source: PromptSource  # a single source: the columns, and this part's place
    limit: int | None
    sft_split: str


def _parts(source: PromptSource) -> list[_Part]:
    if not source.sources:
        _check_place(source, "prompts")
        return [_Part(_place_name(source), source, source.limit, "auto")]
    parts = []
    for index, part in enumerate(source.sources):
        if not isinstance(part, PromptPart):
            raise UserError(f"prompts.sources[{index}]: expected a mapping of PromptPart fields, got {part!r}")
        if part.sft_split not in SFT_SPLITS:
            raise UserError(
                f"prompts.sources[{index}].sft_split: {part.sft_split!r} is not one of {', '.join(SFT_SPLITS)}"
            )
        own_place = part.path is not None or part.dataset is not None
        single = replace(
            source,
            path=part.path if own_place else source.path,
            dataset=part.dataset if own_place else source.dataset,
            dataset_config=part.dataset_config if part.dataset_config is not None else source.dataset_config,
            split=part.split if part.split is not None else source.split,
            limit=part.limit,
            sources=[],
        )
        _check_place(single, f"prompts.sources[{index}]")
        parts.append(_Part(_place_name(single), single, part.limit, part.sft_split))
    names = [p.name for p in parts]
    repeated = next((name for name in names if names.count(name) > 1), None)
    if repeated:
        raise UserError(f"prompts.sources: {repeated} is listed twice (give each part its own split, file or dataset)")
    return parts


def _check_place(source: PromptSource, section: str) -> None:
    if source.path and source.dataset:
        raise UserError(f"{section}: set either path or dataset, not both")


def _place_name(source: PromptSource) -> str:
    if source.dataset:
        config = f"/{source.dataset_config}" if source.dataset_config else ""
        return f"{source.dataset}{config}[{source.split}]"
    return str(Path(source.path) if source.path else BUILTIN_PROMPTS)


# -- rows to prompts -------------------------------------------------------------------------

_MISSING = object()  # a field a row does not have (None is a value: a null in the data)


def _composed_rows(part: _Part, report: PromptReport, also: str | None = None) -> Iterator[tuple[str, Any, str | None]]:
    """(where, row, prompt text or None) for every row of the part; a row without a prompt is counted
    in `report`. After the last row, a prompt or context column no row has is an error."""
    source = part.source
    columns = _ColumnCheck([source.prompt_column, *([source.context_column] if source.context_column else [])])
    rows = 0
    for where, row in _rows(part, [source.prompt_column, source.context_column, source.id_column, also]):
        where = f"{part.name}:{where}"
        rows += 1
        text, reason = _compose(row, source, where, columns)
        if reason:
            report.skip(reason, where)
        yield where, row, text
    report.rows += rows
    if not rows:
        raise UserError(f"{part.name}: no prompts found (it has no rows)")
    columns.check()


def _compose(row: Any, source: PromptSource, where: str, columns: _ColumnCheck) -> tuple[str | None, str | None]:
    """(the prompt, None), or (None, why the row makes none)."""
    if not isinstance(row, dict):
        return None, f"not an object ({type(row).__name__})"
    prompt = columns.value(row, source.prompt_column, where)
    context = columns.value(row, source.context_column, where) if source.context_column else None
    for name, value in ((source.prompt_column, prompt), (source.context_column, context)):
        if value is not _MISSING and value is not None and not isinstance(value, str):
            return None, f"'{name}' is not text"
    parts = [value.strip() for value in (prompt, context) if isinstance(value, str) and value.strip()]
    if not parts:
        return (
            None,
            f"missing field '{source.prompt_column}'"
            if prompt is _MISSING and not source.context_column
            else "empty prompt",
        )
    if len(parts) == 2:  # the record keeps the instruction apart: format may compare it alone
        return Prompt("\n\n".join(parts), {"instruction": parts[0]}), None
    return parts[0], None


class _ColumnCheck:
    """Reads fields and remembers, per column, whether any row has it and the first row that does not:
    a column no row has is a wrong column name, worth an error rather than a skip per row."""

    def __init__(self, columns: list[str]):
        self.found = {column: False for column in columns}
        self.first_missing: dict[str, str] = {}

    def value(self, row: Any, dotted: str, where: str) -> Any:
        value = _field(row, dotted)
        if value is _MISSING:
            if dotted not in self.first_missing:
                fields = f" (fields: {', '.join(map(str, row))})" if isinstance(row, dict) and row else ""
                self.first_missing[dotted] = f"{where}: missing field '{dotted}'{fields}"
        else:
            self.found[dotted] = True
        return value

    def check(self) -> None:
        for column, found in self.found.items():
            if not found and column in self.first_missing:
                raise UserError(f"{self.first_missing[column]}, and no row has it: check the column name")


def _field(row: Any, dotted: str) -> Any:
    value = row
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _rows(part: _Part, columns: list[str | None]) -> Iterator[tuple[str, Any]]:
    """(where, row) of the part: the file's rows, or the dataset's."""
    source = part.source
    if source.dataset:
        return _dataset_rows(source, columns)
    return read_rows(Path(source.path) if source.path else BUILTIN_PROMPTS, what="prompts file")


def _dataset_rows(source: PromptSource, columns: list[str | None]) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        dataset = datasets.load_dataset(source.dataset, source.dataset_config, split=source.split)
    except Exception as err:  # the Hub raises many kinds; the user needs the reason, not the stack
        raise UserError(f"cannot load dataset {source.dataset!r} split {source.split!r}: {err}") from None
    # Only the columns read: MixInstruct's rows also hold 11 candidate responses each, slow to convert.
    wanted = {column.split(".")[0] for column in columns if column}
    if wanted <= set(dataset.column_names):
        dataset = dataset.select_columns(sorted(wanted))
    for index, row in enumerate(dataset):
        yield f"row {index}", row
