"""What the terminal shows around a training: the values beside the training bar; the libraries' own bars off
inside `only_stage_bars`, and back after."""

from __future__ import annotations

import datasets
from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging as transformers_logging

from spri_sft.train.progress import TrainingProgress, only_stage_bars


def bars() -> tuple[bool, bool]:
    return datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()


def test_the_libraries_bars_are_off_inside_and_as_before_after():
    assert bars() == (True, True)
    with only_stage_bars():
        assert bars() == (False, False)
    assert bars() == (True, True)


def test_bars_a_caller_turned_off_stay_off():
    datasets.disable_progress_bars()
    try:
        with only_stage_bars():
            pass
        assert bars() == (False, True)
    finally:
        datasets.enable_progress_bars()


def test_the_bars_come_back_after_an_error():
    try:
        with only_stage_bars():
            raise RuntimeError("a stage failed")
    except RuntimeError:
        pass
    assert bars() == (True, True)


def test_the_training_bar_shows_grpo_s_mean_reward_beside_its_loss(tmp_path):
    # A step of GRPO whose completions all reached max_completion_length logs a loss of ~0 (its advantages sum
    # to 0), so the loss alone would not say how the run goes: the bar shows the step's mean reward beside it.
    arguments = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    state, control = TrainerState(max_steps=3), TrainerControl()
    progress = TrainingProgress()
    progress.on_train_begin(arguments, state, control)

    progress.on_log(arguments, state, control, logs={"loss": 9.9e-09, "reward": 0.4133, "reward_std": 0.1138})

    assert progress.training_bar.postfix == "loss=9.9e-09, reward=0.4133"
    progress.on_train_end(arguments, state, control)
