"""Stage markers: how a rerun of `spri-sft run` knows what is finished, and refuses what changed.

Each stage directory (generate/spri/, dataset/spri/, checkpoints/spri/, eval/base/, ...) holds a
`stage.json` written when the stage starts (`running`) and rewritten when it ends (`done`), with
a fingerprint of every setting that shapes its output, its upstream stages' fingerprints
included. On a rerun, a `done` stage with the same fingerprint is skipped; a `running` one is
run again and picks up where it stopped (generation keeps its finished records, training
resumes from its last complete checkpoint). A stage whose fingerprint differs was made with
other settings: the pipeline stops and says which directory to delete rather than mix old and
new outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spri_sft.errors import UserError


def fingerprint(settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Stage:
    name: str  # e.g. "train/spri", as printed
    directory: Path
    fingerprint: str
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

    def is_done(self) -> bool:
        """True when finished with these settings; raises when it ran (or started) with others."""
        state = self.state()
        if state is None:
            return False
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(
                f"{self.directory} was {'made' if state.get('status') == 'done' else 'started'} with other settings "
                f"than this recipe's: use a new output_dir, or delete {self.directory} (and the stages after it) "
                "to redo it"
            )
        return state.get("status") == "done"

    def begin(self) -> None:
        self.started = time.monotonic()
        previous = self.state() or {}
        self._write({"status": "running", "attempts": previous.get("attempts", 0) + 1})

    def finish(self, **info: Any) -> None:
        state = self.state() or {}
        wall_seconds = round(time.monotonic() - self.started, 1)
        self._write({"status": "done", "attempts": state.get("attempts", 1), "wall_seconds": wall_seconds, "outputs": info})

    def _write(self, fields: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.marker.with_suffix(".tmp")
        temporary.write_text(json.dumps({"stage": self.name, "fingerprint": self.fingerprint, **fields}, indent=2) + "\n")
        os.replace(temporary, self.marker)  # never a half-written marker
