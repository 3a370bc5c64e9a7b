"""Stage markers: how a rerun of `spri-sft run` knows what is finished, and refuses what changed.

Each stage directory (generate/spri/, dataset/spri/, checkpoints/spri/, eval/base/, ...) holds a
`stage.json` written when the stage starts (`running`) and rewritten when it ends (`done`), with
a fingerprint of every setting that shapes its output and of the exact outputs it read: each
finished stage gets a fresh `output_id`, which the stages after it put in their fingerprints (a
stage redone with the same settings still makes new outputs: sampling is random).

On a rerun, a `done` stage with the same fingerprint is skipped; a `running` one is run again
and picks up where it stopped (generation keeps its finished records, training resumes from its
last complete checkpoint). A stage whose fingerprint differs was made with other settings or
inputs: the pipeline stops and says which directory to delete rather than mix old and new
outputs, except for a `running` stage that left nothing to resume from, which simply starts over,
and for an `incremental` one (generation), whose outputs are keyed by their own identity (the
record ids), so it runs again and adds what the new settings or inputs need beside what is there.

Input files enter fingerprints by their contents (`file_digest`), never by their paths, so a
file edited in place is a changed input.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spri_sft.errors import UserError


def fingerprint(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """The sha256 of a file's contents (a missing file is named as such; the stage reading it says so)."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        return f"missing:{path}"
    return digest.hexdigest()


def folder_digest(path: str | Path) -> dict[str, str]:
    """Every file under a folder (a local lm-eval task folder), by relative path and contents; bytecode left out."""
    folder = Path(path)
    return {
        str(file.relative_to(folder)): file_digest(file)
        for file in sorted(folder.rglob("*"))
        if file.is_file() and "__pycache__" not in file.parts
    }


@dataclass
class Stage:
    name: str  # e.g. "train/spri", as printed
    directory: Path
    fingerprint: str
    incremental: bool = False  # other settings or inputs run it again instead of refusing it (see above)
    started: float = field(default=0.0, repr=False)

    @property
    def marker(self) -> Path:
        return self.directory / "stage.json"

    def state(self) -> dict | None:
        try:
            return json.loads(self.marker.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return None  # torn by a kill mid-write: the stage runs again, and resumes

    @property
    def output_id(self) -> str | None:
        """Names what this stage made; None until it is done."""
        return (self.state() or {}).get("output_id")

    def is_done(self, resumable: bool = True) -> bool:
        """True when finished with these settings and inputs; raises when it ran (or started) with others.

        `resumable=False` says a `running` stage left nothing a rerun would pick up (an evaluation, a
        training with no checkpoint yet): then changed settings just start it over.
        """
        state = self.state()
        if state is None:
            return False
        if state.get("fingerprint") != self.fingerprint:
            if self.incremental or (state.get("status") != "done" and not resumable):
                return False
            raise UserError(
                f"{self.directory} was {'made' if state.get('status') == 'done' else 'started'} with other settings "
                f"or from other inputs than this run's: use a new output_dir, or delete {self.directory} (and the "
                "stages after it) to redo it"
            )
        return state.get("status") == "done"

    def begin(self) -> None:
        self.started = time.monotonic()
        previous = self.state() or {}
        self._write({"status": "running", "attempts": previous.get("attempts", 0) + 1})

    def finish(self, **info: Any) -> None:
        state = self.state() or {}
        wall_seconds = round(time.monotonic() - self.started, 1)
        self._write(
            {
                "status": "done",
                "output_id": uuid.uuid4().hex[:16],
                "attempts": state.get("attempts", 1),
                "wall_seconds": wall_seconds,
                "outputs": info,
            }
        )

    def _write(self, fields: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.marker.with_suffix(".tmp")
        temporary.write_text(json.dumps({"stage": self.name, "fingerprint": self.fingerprint, **fields}, indent=2) + "\n")
        os.replace(temporary, self.marker)  # never a half-written marker
