"""The TruthfulQA copy shipped in the package: upstream's data/v0/mc_task.json (817 questions), gzip-compressed.

The fallback when neither a file nor the Hugging Face Hub is at hand (provenance and license:
spri_sft/data/truthfulqa/SOURCE.md and LICENSE). It is written out uncompressed, byte for byte as
upstream's file, so every reader of TruthfulQA files (the evaluation, the SFT data's guard) reads
it like any mc_task.json, and its sha256 in results.json is upstream's.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from importlib import resources
from pathlib import Path

from spri_sft.errors import UserError

PACKAGED_PATH = "data/truthfulqa/mc_task.json.gz"
SOURCE = "the packaged copy of TruthfulQA's data/v0/mc_task.json (spri_sft/data/truthfulqa, Apache-2.0)"
SHA256 = "131e6f4156297bee09b38279e2fa847e4359c200504eca99ea3fab4b2d3a6144"  # of the uncompressed file
FILE_NAME = "truthfulqa-packaged-v0-mc_task.json"  # says which copy wherever the path is recorded


def packaged_bytes() -> bytes:
    """The uncompressed bytes, checked against upstream's sha256 (a damaged install fails here, not in a score)."""
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
