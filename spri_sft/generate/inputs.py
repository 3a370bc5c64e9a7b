"""Read user prompts from a local JSONL/JSON/CSV/Parquet file or a Hugging Face dataset.

A prompt is built from `prompt_column` plus, when `context_column` names a non-empty field,
a blank line and that context (Dolly: `instruction` + `context`; Self-Instruct:
`instruction` + `instances.0.input`). Column names are dotted paths into nested rows;
integers index lists. Files are read by `spri_sft.rows`; every problem is reported with the
file, line (or item, or row) and field.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from spri_sft.errors import UserError
from spri_sft.rows import read_rows

BUILTIN_PROMPTS = Path(__file__).resolve().parent.parent / "data" / "prompts.jsonl"


@dataclass
class PromptSource:
    """Where the prompts come from and how to read them."""

    path: str | None = field(
        default=None,
        metadata={"help": "Local .jsonl/.json/.csv/.parquet file; unset (and no dataset) uses the package's built-in prompts."},
    )
    dataset: str | None = field(default=None, metadata={"help": "Hugging Face dataset id, e.g. databricks/databricks-dolly-15k."})
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset's configuration name, if it has several."})
    split: str = field(default="train", metadata={"help": "Dataset split."})
    prompt_column: str = field(default="prompt", metadata={"help": "Field holding the prompt (dotted path for nested rows)."})
    context_column: str | None = field(
        default=None, metadata={"help": "Optional field appended to the prompt after a blank line, e.g. instances.0.input."}
    )
    response_column: str | None = field(
        default=None,
        metadata={"help": "mode oracle: field holding each prompt's own response (Dolly: response, MixInstruct: output)."},
    )
    shuffle: bool = field(default=False, metadata={"help": "Shuffle before --prompts.limit is applied."})
    seed: int = field(default=0, metadata={"help": "Shuffle seed."})
    limit: int | None = field(default=None, metadata={"help": "Keep only the first N prompts (after shuffling).", "ge": 0})


def load_prompts(source: PromptSource) -> list[str]:
    """The prompts, in order, without duplicates (a prompt's id would collide with its twin)."""
    rows, origin = _source_rows(source)
    prompts, seen = [], set()
    for where, row in rows:
        prompt = _compose(row, source, f"{origin}:{where}")
        if prompt not in seen:
            seen.add(prompt)
            prompts.append(prompt)
    if not prompts:
        raise UserError(f"{origin}: no prompts found")
    if source.shuffle:
        random.Random(source.seed).shuffle(prompts)
    if source.limit is not None:
        prompts = prompts[: source.limit]
    return prompts


def load_references(source: PromptSource) -> dict[str, str]:
    """Each prompt's own response in the source (`response_column`), for the `oracle` mode: the
    first row of a prompt wins, as in `load_prompts`; a row with an empty response gives none."""
    if not source.response_column:
        raise UserError("mode oracle: set prompts.response_column to the field holding each prompt's own response")
    rows, origin = _source_rows(source)
    references: dict[str, str] = {}
    for where, row in rows:
        prompt = _compose(row, source, f"{origin}:{where}")
        response = _field(row, source.response_column, f"{origin}:{where}", required=True)
        if prompt not in references and isinstance(response, str) and response.strip():
            references[prompt] = response.strip()
    return references


def _source_rows(source: PromptSource) -> tuple[Iterator[tuple[str, Any]], str]:
    """(the rows, the name messages give their source): the file, the dataset, or the built-in prompts."""
    if source.path and source.dataset:
        raise UserError("prompts: set either prompts.path or prompts.dataset, not both")
    if source.dataset:
        return _dataset_rows(source), f"{source.dataset}[{source.split}]"
    path = Path(source.path) if source.path else BUILTIN_PROMPTS
    return read_rows(path, what="prompts file"), str(path)


def _compose(row: Any, source: PromptSource, where: str) -> str:
    prompt = _field(row, source.prompt_column, where, required=True)
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{where}: empty prompt in field '{source.prompt_column}'")
    prompt = prompt.strip()
    if source.context_column:
        context = _field(row, source.context_column, where, required=False)
        if isinstance(context, str) and context.strip():
            prompt = f"{prompt}\n\n{context.strip()}"
    return prompt


def _field(row: Any, dotted: str, where: str, required: bool) -> Any:
    value = row
    for part in dotted.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif required:
            fields = f" (fields: {', '.join(map(str, value))})" if isinstance(value, dict) and value else ""
            raise UserError(f"{where}: missing field '{dotted}'{fields}")
        else:
            return None
    return value


def _dataset_rows(source: PromptSource) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        dataset = datasets.load_dataset(source.dataset, source.dataset_config, split=source.split)
    except Exception as err:  # the Hub raises many kinds; the user needs the reason, not the stack
        raise UserError(f"cannot load dataset {source.dataset!r} split {source.split!r}: {err}") from None
    for index, row in enumerate(dataset):
        yield f"row {index}", row
