"""One progress bar for a training: steps with their rate and ETA, the last losses (and GRPO's reward) beside it; and
`only_stage_bars()`, which keeps the libraries' own bars (loading weights, tokenizing, saving a
dataset) off while `spri-sft train` or `spri-sft run` works, so each stage shows its bar alone.

transformers' own `ProgressCallback` prints every logged dict on a line of its own and opens a
second bar at each evaluation; here the logged losses go into the bar's postfix instead and the
evaluation runs without a bar of its own. The logs themselves are unchanged (trainer_state.json,
W&B): only what the terminal shows differs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tqdm.auto import tqdm
from transformers import ProgressCallback

# The logged values worth seeing at a glance, in this order. GRPO's loss says little of how it goes (~0 whenever a
# step's completions have one length: its advantages sum to 0), so its mean reward (TRL's `reward`) is shown too.
SHOWN = ("loss", "eval_loss", "reward")


class TrainingProgress(ProgressCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run starts at its checkpoint's step (the rate and ETA count this run's steps only).
        if state.is_world_process_zero:
            self.training_bar = tqdm(
                total=state.max_steps, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True
            )
        self.current_step = state.global_step
        self.shown: dict[str, str] = {}

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        pass  # no second bar: the validation loss appears beside the training bar when logged

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None:
            return
        self.shown.update({key: f"{logs[key]:.4g}" for key in SHOWN if isinstance(logs.get(key), (int, float))})
        if self.shown:
            self.training_bar.set_postfix(self.shown, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None


def use_training_progress(trainer) -> None:
    """Swap the trainer's progress callback for `TrainingProgress`, placed before any callback added to the trainer
    (so the bar closes before, say, an evaluation at the end of training draws its own)."""
    handler = trainer.callback_handler
    if not any(isinstance(callback, ProgressCallback) for callback in handler.callbacks):
        return  # disable_tqdm: the trainer prints logs instead of a bar
    handler.remove_callback(ProgressCallback)
    ours = [i for i, callback in enumerate(handler.callbacks) if type(callback).__module__.startswith("spri_sft.")]
    handler.callbacks.insert(ours[0] if ours else len(handler.callbacks), TrainingProgress())


@contextlib.contextmanager
def only_stage_bars() -> Iterator[None]:
    """No progress bars from datasets (map, save_to_disk) or transformers (loading weights) inside the block;
    the stages' own bars (tqdm: generate, train, TruthfulQA) are unaffected. As before afterwards."""
    import datasets
    from transformers.utils import logging as transformers_logging

    datasets_bars, transformers_bars = (
        datasets.is_progress_bar_enabled(),
        transformers_logging.is_progress_bar_enabled(),
    )
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_bars:
            datasets.enable_progress_bars()
        if transformers_bars:
            transformers_logging.enable_progress_bar()
