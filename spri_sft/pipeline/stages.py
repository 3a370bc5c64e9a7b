"""Stage markers: how a rerun of `spri-sft run` knows what is finished, and refuses what changed.

Each stage directory (generate/spri/, dataset/spri/, checkpoints/spri/, eval/base/, ...) holds a
`stage.json` written when the stage starts (`running`) and rewritten when it ends (`done`), with
a fingerprint of every setting that shapes its output and of the exact outputs it read: each
finished stage gets a fresh `output_id`, which the stages after it put in their fingerprints (a
stage redone with the same settings still makes new outputs: sampling is random).

On a rerun, a `done` stage with the same fingerprint is skipped; a `running` one is run again
and picks up where it stopped (generation keeps its finished records, training resumes from its
last complete checkpoint). A stage whose fingerprint differs was made with other settings or
inputs: the pipeline stops rather than mix old and new outputs (`StageChanged`), saying which
settings changed (stage.json keeps the fingerprinted settings beside the fingerprint, `changes`
compares them) and which directories to remove, except for a `running` stage that left nothing
to resume from, which simply starts over, and for an `incremental` one (generation), whose
outputs are keyed by their own identity (the record ids), so it runs again and adds what the new
settings or inputs need beside what is there.

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


# The key of a stage's settings that holds the output ids of the stages it was made from (see the module docstring).
AFTER = "after"


def flat_settings(settings: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as one mapping of dotted names (`quantized_base.load_in_4bit`) to JSON values."""
    settings = json.loads(json.dumps(settings, default=str))
    if not isinstance(settings, dict):
        return {prefix.rstrip("."): settings}
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changes(recorded: Any, current: Any, made_from: str = "the stage before it") -> list[str]:
    """What differs between a stage's recorded settings and this run's, one phrase each, changed inputs last:
    `learning_rate 0.0002 → 0.0001`, `truthfulqa_file's contents changed`, `the outputs of dataset/spri changed`."""
    old, new = flat_settings(recorded), flat_settings(current)
    phrases, inputs = [], []
    for name in sorted(old.keys() | new.keys(), key=lambda key: (key.split(".")[0] == AFTER, key)):
        before, after = old.get(name, "(unset)"), new.get(name, "(unset)")
        if before == after:
            continue
        if name.split(".")[0] == AFTER:  # output ids of the stages before it; without any, the model scored
            inputs.append(
                f"the outputs of {made_from} changed" if made_from else f"model {_short(before)} → {_short(after)}"
            )
        elif _is_digest(before) and _is_digest(after):
            phrases.append(f"{name}: the file's contents changed")
        else:
            phrases.append(f"{name} {_short(before)} → {_short(after)}")
    return phrases + sorted(set(inputs))


def _is_digest(value: Any) -> bool:
    return isinstance(value, str) and (
        len(value) == 64 and all(c in "0123456789abcdef" for c in value) or value.startswith("missing:")
    )


def _short(value: Any) -> str:
    text = value if isinstance(value, str) and value == "(unset)" else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


class StageChanged(UserError):
    """A finished (or resumable) stage was made with other settings or inputs than this run's."""

    def __init__(self, stage: Stage, status: str):
        self.stage, self.status = stage, status
        super().__init__(self.describe())

    def describe(self, made_from: str = "the stage before it", remove: list[Path] | None = None) -> str:
        """One line: what changed (`made_from` names the stages whose outputs it read) and what to remove."""
        recorded = (self.stage.state() or {}).get("settings")
        if recorded is None:
            what = "settings were not recorded (made before this version)"
        elif self.stage.settings is None:
            what = "its fingerprint differs"
        else:
            what = "; ".join(changes(recorded, self.stage.settings, made_from)) or "no recorded setting differs"
        verb = "made" if self.status == "done" else "started"
        fix = (
            f"rerun with --redo {self.stage.name}, or remove {' '.join(map(str, remove))}"
            if remove is not None
            else f"delete {self.stage.directory} (and the stages after it)"
        )
        return (
            f"{self.stage.directory} was {verb} with other settings or from other inputs than this run's "
            f"({self.stage.name}: {what}): {fix} to redo it, or use a new output_dir"
        )


@dataclass
class Stage:
    name: str  # e.g. "checkpoints/spri", as printed
    directory: Path
    fingerprint: str
    incremental: bool = False  # other settings or inputs run it again instead of refusing it (see above)
    started: float = field(default=0.0, repr=False)
    settings: Any = field(default=None, repr=False)  # what `fingerprint` was computed from, kept in stage.json

    @classmethod
    def made_from(cls, name: str, directory: Path, settings: Any, incremental: bool = False) -> Stage:
        """The stage whose outputs `settings` shape: fingerprinted, and recorded in stage.json so that a refusal
        can say which of them changed."""
        return cls(name, directory, fingerprint(settings), incremental, settings=settings)

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
            raise StageChanged(self, state.get("status", "running"))
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
        recorded = {"stage": self.name, "fingerprint": self.fingerprint}
        if self.settings is not None:
            recorded["settings"] = json.loads(json.dumps(self.settings, default=str))
        temporary.write_text(json.dumps({**recorded, **fields}, indent=2) + "\n")
        os.replace(temporary, self.marker)  # never a half-written marker
