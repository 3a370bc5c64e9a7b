"""The critic's totals over a whole GRPO run (`<output_dir>/reward.json`), across its processes and its resumes.

Each process counts what the critic did for its own completions (`PrincipleReward.totals`); the run's totals are
every process's summed (`run_totals`). A checkpoint holds the run's totals up to it (`critic_totals.json`, written
by `CriticTotals.on_save`), and a training resumed from that checkpoint starts from them, so reward.json counts the
whole run, not only its last session (a rerun with nothing left to train keeps them).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

TOTALS_FILE = "critic_totals.json"  # in each checkpoint: the run's totals up to it


def run_totals(per_process: list[dict]) -> dict:
    """The critic's totals over the whole run: each process scores its own share of the completions."""
    summed: Counter = Counter()
    for totals in per_process:
        summed.update(totals)
    return dict(summed)


def saved_totals(checkpoint: str | None) -> dict:
    """The run's totals up to `checkpoint` ({} without one). A checkpoint without them (saved before this file
    existed, or killed between its trainer_state.json and them) counts from itself on, and says so."""
    if checkpoint is None:
        return {}
    path = Path(checkpoint) / TOTALS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        logger.warning("%s: no critic totals; reward.json counts only what the critic does from here on", path)
        return {}


class CriticTotals(TrainerCallback):
    """Saves the run's critic totals (`earlier`, those of the checkpoint this training resumed from, plus every
    process's since) in each checkpoint, and sums them at the end (`whole_run`)."""

    def __init__(self, reward, earlier: dict):
        self.reward = reward
        self.earlier = earlier

    def whole_run(self) -> dict:
        """The run's totals, on every process. Every process must call it together (it gathers from each)."""
        from accelerate.utils import gather_object

        return run_totals([self.earlier, *gather_object([dict(self.reward.totals)])])

    def on_save(self, args, state, control, **kwargs):
        # The Trainer calls on_save on every process, after _save_checkpoint wrote the checkpoint (trainer_state.json
        # included) in output_dir/checkpoint-<global step>: all of them gather, the main one writes.
        totals = self.whole_run()
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}" / TOTALS_FILE
            partial = path.with_suffix(".partial")
            partial.write_text(json.dumps(totals, indent=2) + "\n")
            os.replace(partial, path)  # whole or absent: a kill mid-write leaves no torn totals to resume from
