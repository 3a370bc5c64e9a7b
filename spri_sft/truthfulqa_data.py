"""Where TruthfulQA's questions come from: one rule for `evaluate`, format's guard and `spri-sft run`.

The rule (`choose_source`):

1. a file given (`truthfulqa_file`) is read: upstream's `data/v0/mc_task.json`, the packaged copy's
   `mc_task.json.gz` (any `.json.gz` / `.jsonl.gz` is read as the file inside it), the Hub layout as
   `.json`, `.jsonl` or `.parquet`. The generation task's `TruthfulQA.csv` serves the guard (its
   `Question` column is all the guard reads) but is refused for scoring: it has no MC1/MC2 targets;
2. else the Hub dataset (`truthfulqa/truthful_qa`, config `multiple_choice`) when the Hub answers;
3. else (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE, or the Hub unreachable) the packaged copy of upstream's `mc_task.json`
   (`spri_sft/data/truthfulqa`: provenance and license in SOURCE.md and LICENSE beside it), for
   the default dataset only: another dataset id has no offline stand-in and is refused.

A source not given is said in one line, `[spri-sft] TruthfulQA: <source>`. The packaged copy is written
out uncompressed, byte for byte as upstream's file, so its sha256 in results.json is upstream's.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Literal

from spri_sft.errors import UserError
from spri_sft.models import hub_offline, hub_reachable
from spri_sft.rows import Row, read_rows

HUB_DATASET = "truthfulqa/truthful_qa"
HUB_CONFIG = "multiple_choice"
PACKAGED_PATH = "data/truthfulqa/mc_task.json.gz"
SOURCE = "the packaged copy of TruthfulQA's data/v0/mc_task.json (spri_sft/data/truthfulqa, Apache-2.0)"
SHA256 = "131e6f4156297bee09b38279e2fa847e4359c200504eca99ea3fab4b2d3a6144"  # of the uncompressed file
FILE_NAME = "truthfulqa-packaged-v0-mc_task.json"  # says which copy wherever the path is recorded
OFF = "none"  # format's truthfulqa_file value that turns the guard off

Purpose = Literal["scoring", "guard"]
SCORING_SUFFIXES = (".json", ".jsonl", ".parquet", ".json.gz", ".jsonl.gz")
GUARD_SUFFIXES = (*SCORING_SUFFIXES, ".csv", ".csv.gz")


@dataclasses.dataclass(frozen=True)
class TruthfulQASource:
    """Where the questions are read from: a local `file`, else the Hub `dataset` at `split`."""

    file: str | None
    dataset: str | None
    split: str
    described: str  # what results.json and the report name as the data's source


def choose_source(
    file: str | None,
    dataset: str = HUB_DATASET,
    split: str = "validation",
    *,
    directory: str | Path,
    setting: str,
    purpose: Purpose = "scoring",
) -> TruthfulQASource:
    """The source by the module's rule; `directory` receives the packaged copy when it is used, `setting` (e.g.
    "--truthfulqa_file") is what a refusal names."""
    if file:
        check_file(file, setting, purpose)
        return TruthfulQASource(file, None, split, file)
    if hub_reachable() and not datasets_offline():
        described = f"{dataset} ({HUB_CONFIG}, {split})"
        print(f"[spri-sft] TruthfulQA: {described} from the Hugging Face Hub (no {setting})", flush=True)
        return TruthfulQASource(None, dataset, split, described)
    flag = "HF_HUB_OFFLINE" if hub_offline() else "HF_DATASETS_OFFLINE" if datasets_offline() else None
    why = "the Hugging Face Hub is unreachable" + (f" ({flag} is set)" if flag else "")
    if (dataset, split) != (HUB_DATASET, "validation"):
        raise UserError(
            f"TruthfulQA {dataset!r} split {split!r}: {why}, and the packaged copy stands in for {HUB_DATASET}'s "
            f"validation split only; set {setting} to a local file"
        )
    copy = write_packaged_copy(Path(directory))
    print(f"[spri-sft] TruthfulQA: no {setting}, and {why}: using {SOURCE}", flush=True)
    return TruthfulQASource(str(copy), None, split, SOURCE)


def check_file(file: str, setting: str, purpose: Purpose) -> None:
    """A given file exists and is a kind `purpose` can read (the generation CSV is refused for scoring)."""
    if purpose == "scoring":
        refuse_generation_csv(file, setting)
    if not Path(file).is_file():
        raise UserError(f"{setting} {file}: file not found")
    suffixes = SCORING_SUFFIXES if purpose == "scoring" else GUARD_SUFFIXES
    if not Path(file).name.lower().endswith(suffixes):
        raise UserError(f"{setting} {file}: unsupported TruthfulQA file type (use {', '.join(suffixes)})")


def refuse_generation_csv(file: str | Path, setting: str) -> None:
    """A CSV cannot be scored: it is the generation task's TruthfulQA.csv, whose answers carry no MC1/MC2 labels."""
    if Path(file).name.lower().endswith((".csv", ".csv.gz")):
        raise UserError(
            f"{setting} {file}: a CSV is the generation task's TruthfulQA.csv, which has no MC1/MC2 targets to "
            "score; give upstream's data/v0/mc_task.json (or the Hub layout as .json/.jsonl/.parquet), or leave "
            f"{setting} unset for the Hub dataset, else the packaged copy"
        )


def read_file_rows(file: str | Path, what: str = "TruthfulQA file") -> tuple[list[Row], str]:
    """The rows of a TruthfulQA file and the sha256 of its (uncompressed) bytes. A `.gz` is read as the file inside
    it, so the packaged `mc_task.json.gz` has upstream's sha256; messages name the `.gz`."""
    path = Path(file)
    if path.suffix.lower() != ".gz":
        rows = list(read_rows(path, what=what))
        return rows, hashlib.sha256(path.read_bytes()).hexdigest()
    if not path.is_file():
        raise UserError(f"{path}: {what} not found")
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as err:
        raise UserError(f"{path}: not a readable gzip file ({err})") from None
    with tempfile.TemporaryDirectory() as tmp:
        inner = Path(tmp) / path.stem  # mc_task.json.gz -> mc_task.json: read_rows goes by the inner suffix
        inner.write_bytes(data)
        try:
            rows = list(read_rows(inner, what=what))
        except UserError as err:
            raise UserError(str(err).replace(str(inner), str(path))) from None
    return rows, hashlib.sha256(data).hexdigest()


def hub_rows(dataset: str, split: str) -> list[Row]:
    """The rows of the Hub dataset's multiple_choice config at `split`; one line when it cannot be loaded."""
    from datasets import load_dataset

    try:
        loaded = load_dataset(dataset, HUB_CONFIG, split=split)
    except Exception as err:  # noqa: BLE001  (unknown id, no split, a network failure: one message for all)
        raise UserError(
            f"could not load the Hub dataset {dataset!r} (config {HUB_CONFIG}, split {split!r}): "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None
    return [Row(f"row {i}", dict(row)) for i, row in enumerate(loaded)]


def datasets_offline() -> bool:
    """HF_DATASETS_OFFLINE, which keeps `datasets` (the Hub dataset's reader) off the Hub, by the same true values."""
    from huggingface_hub import constants

    return (os.environ.get("HF_DATASETS_OFFLINE") or "").upper() in constants.ENV_VARS_TRUE_VALUES


def packaged_bytes() -> bytes:
    """The packaged copy uncompressed, checked against upstream's sha256 (a damaged install fails here, not in a
    score)."""
    data = gzip.decompress(resources.files("spri_sft").joinpath(PACKAGED_PATH).read_bytes())
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise UserError(f"spri_sft/{PACKAGED_PATH}: damaged (sha256 differs from {SHA256}); reinstall spri-sft")
    return data


def write_packaged_copy(directory: Path) -> Path:
    """`directory`/truthfulqa-packaged-v0-mc_task.json, written once (atomically) and reused after."""
    path = Path(directory) / FILE_NAME
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_bytes(packaged_bytes())
        os.replace(partial, path)
    return path
