"""TruthfulQA scores of a model being fine-tuned, before and after, as a transformers `TrainerCallback`.

    callback = TruthfulQACallback(truthfulqa_file, output_dir=..., model_name=..., adapter=..., before=True)
    trainer = SFTTrainer(..., callbacks=[callback])   # the file is read now, before any training
    trainer.train()
    callback.before, callback.after                   # results as `evaluate_truthfulqa` returns them

When, and why then:
- the questions are read when the callback is made: a bad file must not surface after hours of training;
- before (optional): when the trainer is built (`on_init_end`), on the model as loaded with its
  adapter disabled (LoRA's B starts at zero, but disabled is exact), so neither the training's
  runtime nor its progress bar includes it; an earlier attempt's scores on the same questions
  (and `add_bos_token`) are reused (a resumed run does not score them again). Into
  <output_dir>/truthfulqa_before;
- after: when training ends (`on_train_end`, the best checkpoint loaded if the trainer keeps it),
  on the model in memory (a QLoRA model on its 4-bit base, as `spri-sft evaluate` scores the saved
  adapter). Into <output_dir>/truthfulqa.

Both are scored on the main process only. With `report_to` W&B they land in the training's run (the
trainer's W&B callback opens it at train start): after as `truthfulqa_mc{1,2}/acc` with the
per-question table and artifact, before as `before/truthfulqa_mc{1,2}/acc{,_stderr}`.

This module imports nothing of `spri_sft.train`: the training job adds the callback, evaluation owns it.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from spri_sft.errors import UserError
from spri_sft.evaluate.config import EvaluateConfig

BEFORE_DIR = "truthfulqa_before"
AFTER_DIR = "truthfulqa"


class TruthfulQACallback(TrainerCallback):
    def __init__(
        self,
        truthfulqa_file: str,
        *,
        output_dir: str,
        model_name: str,
        adapter: str | None = None,
        limit: int | None = None,
        before: bool = False,
        report_to: str = "none",
        add_bos_token: str | bool = "auto",
    ):
        from spri_sft.evaluate.truthfulqa import load_questions

        if limit is not None and limit < 1:
            raise UserError(f"truthfulqa_limit: must be >= 1 or null, got {limit}")
        load_questions(truthfulqa_file)  # read now: a malformed file is one line before any training
        self.truthfulqa_file = truthfulqa_file
        self.output_dir = Path(output_dir)
        self.model_name = model_name
        self.adapter = adapter
        self.limit = limit
        self.score_before = before
        self.report_to = report_to
        self.add_bos_token = add_bos_token
        self.before: dict[str, Any] | None = None
        self.after: dict[str, Any] | None = None

    def _config(self, subdir: str, adapter: str | None, report_to: str) -> EvaluateConfig:
        return EvaluateConfig(
            model=self.model_name,
            adapter=adapter,
            truthfulqa_file=self.truthfulqa_file,
            limit=self.limit,
            add_bos_token=self.add_bos_token,
            output_dir=str(self.output_dir / subdir),
            report_to=report_to,
        )

    def on_init_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not (self.score_before and state.is_world_process_zero):
            return
        from spri_sft.evaluate.run import evaluate_truthfulqa

        # Logged once the training's W&B run is open (on_train_begin), not as a run of its own.
        config = self._config(BEFORE_DIR, None, "none")
        earlier = Path(config.output_dir) / "results.json"
        if earlier.is_file():
            results = json.loads(earlier.read_text())
            # Scores written before add_bos_token existed were made with the tokenizer's default: auto.
            same = (results.get("data_source"), results.get("limit"), results.get("add_bos_token_setting", "auto"))
            if same == (config.truthfulqa_file, config.limit, config.add_bos_token):
                self.before = results
                return
        untouched = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
        with untouched:
            self.before = evaluate_truthfulqa(config, model=model, tokenizer=processing_class)

    def on_train_begin(self, args, state, control, **kwargs):
        from spri_sft import tracking

        run = tracking.active_run() if self.before is not None else None
        if run is not None:
            run.summarize(
                {
                    "before/truthfulqa_mc1/acc": self.before["mc1"],
                    "before/truthfulqa_mc1/acc_stderr": self.before["mc1_stderr"],
                    "before/truthfulqa_mc2/acc": self.before["mc2"],
                    "before/truthfulqa_mc2/acc_stderr": self.before["mc2_stderr"],
                }
            )

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero:
            return
        from spri_sft.evaluate.run import evaluate_truthfulqa

        config = self._config(AFTER_DIR, self.adapter, self.report_to)
        self.after = evaluate_truthfulqa(config, model=model, tokenizer=processing_class)

    def metrics(self) -> dict[str, float]:
        """The scores as training metrics: truthfulqa_mc{1,2}, and truthfulqa_before_mc{1,2} when scored."""
        metrics = {}
        if self.after is not None:
            metrics.update(truthfulqa_mc1=self.after["mc1"], truthfulqa_mc2=self.after["mc2"])
        if self.before is not None:
            metrics.update(truthfulqa_before_mc1=self.before["mc1"], truthfulqa_before_mc2=self.before["mc2"])
        return metrics
