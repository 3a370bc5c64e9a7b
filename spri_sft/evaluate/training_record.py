"""What an adapter's training recorded (its effective_config.json), read by every scorer of that adapter.

TruthfulQA (`spri_sft.evaluate.run`) and lm-eval's tasks (`spri_sft.evaluate.lm_eval_tasks`) load an adapter's base
at the revision `base_revision` gives, so both score the adapter on the base weights it was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

from spri_sft.errors import UserError
from spri_sft.evaluate.config import EvaluateConfig


def base_revision(config: EvaluateConfig) -> str | None:
    """The revision of `config.model` to load: the one asked for, else, under an adapter trained on that model, the
    commit its training recorded (train/job.py `resolve_revision`, in effective_config.json), else None (main)."""
    if config.model_revision is not None or not config.adapter:
        return config.model_revision
    found = training_config(config.adapter)
    recorded = ((found[1].get("revisions") or {}).get("model") or {}) if found else {}
    return recorded.get("commit") if recorded.get("name_or_path") == config.model else None


def training_config(adapter: str) -> tuple[Path, dict] | None:
    """Training's effective_config.json of an adapter (in its folder, or in the run folder above a `checkpoint-N`)
    and its contents; None when there is none."""
    folder = Path(adapter)
    for candidate in (folder, folder.parent) if folder.name.startswith("checkpoint-") else (folder,):
        path = candidate / "effective_config.json"
        if path.is_file():
            try:
                saved = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise UserError(f"{path}: not training's effective_config.json ({err})") from None
            if not isinstance(saved, dict):
                raise UserError(f"{path}: not training's effective_config.json (not a mapping)")
            return path, saved
    return None
