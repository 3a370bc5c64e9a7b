"""What the terminal shows around a training: the libraries' own bars off inside `only_stage_bars`, and back after."""

from __future__ import annotations

import datasets
from transformers.utils import logging as transformers_logging

from spri_sft.train.progress import only_stage_bars


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
