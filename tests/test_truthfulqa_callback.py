"""`TruthfulQACallback`: evaluation's TruthfulQA scoring inside a training, before and after.

The file is read when the callback is made (before any model is loaded); before-scores are made when
the trainer is built, so the training's steps and runtime do not include them; after-scores at the
end of training; only the main process scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_sft_dataset, tiny_lora_argv
from transformers import TrainerControl, TrainerState

from spri_sft.errors import UserError
from spri_sft.evaluate.callback import AFTER_DIR, BEFORE_DIR, TruthfulQACallback
from spri_sft.train.sft import build_trainer, make_parser


@pytest.fixture(scope="module")
def truthfulqa_file(shared_dir) -> Path:
    return shared_dir / "data/truthfulqa/data/v0/mc_task.json"


def callback(truthfulqa_file, output_dir: Path, **options) -> TruthfulQACallback:
    return TruthfulQACallback(str(truthfulqa_file), output_dir=str(output_dir), model_name="tiny", **options)


def test_a_malformed_file_is_refused_when_the_callback_is_made(tmp_path):
    broken = tmp_path / "questions.jsonl"
    broken.write_text('{"question": "Is it?", "mc1_targets": {"choices": ["No."], "labels": [1]}\nnot json\n')
    with pytest.raises(UserError, match=str(broken)):
        callback(broken, tmp_path / "out")


def test_a_limit_below_one_is_refused(truthfulqa_file, tmp_path):
    with pytest.raises(UserError, match="truthfulqa_limit: must be >= 1"):
        callback(truthfulqa_file, tmp_path, limit=0)


def test_an_earlier_attempts_before_scores_on_the_same_questions_are_reused(truthfulqa_file, tmp_path):
    earlier = {
        "mc1": 0.125,
        "mc1_stderr": 0.1,
        "mc2": 0.5,
        "mc2_stderr": 0.1,
        "data_source": str(truthfulqa_file),
        "limit": 2,
    }
    (tmp_path / BEFORE_DIR).mkdir()
    (tmp_path / BEFORE_DIR / "results.json").write_text(json.dumps(earlier))
    scorer = callback(truthfulqa_file, tmp_path, limit=2, before=True)

    scorer.on_init_end(None, TrainerState(is_world_process_zero=True), TrainerControl(), model=None)  # no model needed

    assert scorer.before == earlier
    assert scorer.metrics() == {"truthfulqa_before_mc1": 0.125, "truthfulqa_before_mc2": 0.5}


def test_other_processes_score_nothing(truthfulqa_file, tmp_path):
    scorer = callback(truthfulqa_file, tmp_path, limit=2, before=True)
    state = TrainerState(is_world_process_zero=False)

    scorer.on_init_end(None, state, TrainerControl(), model=None)
    scorer.on_train_end(None, state, TrainerControl(), model=None)

    assert scorer.before is None and scorer.after is None and scorer.metrics() == {}
    assert not (tmp_path / BEFORE_DIR).exists() and not (tmp_path / AFTER_DIR).exists()


def test_in_a_training_before_is_scored_when_the_trainer_is_built_and_after_when_it_ends(
    tiny_model_dir, truthfulqa_file, tmp_path
):
    dataset = build_sft_dataset(tmp_path / "data" / "hf", train_rows=8, validation_rows=2)
    out = tmp_path / "run"
    argv = tiny_lora_argv(
        tiny_model_dir, dataset, out, "--max_steps", "2",
        "--truthfulqa_file", str(truthfulqa_file), "--truthfulqa_limit", "2", "--truthfulqa_before", "true",
    )  # fmt: skip
    trainer = build_trainer(*make_parser().parse_args_and_config(args=argv))
    scorer = trainer.truthfulqa
    assert scorer.before is not None and scorer.after is None and trainer.state.global_step == 0
    assert json.loads((out / BEFORE_DIR / "results.json").read_text())["adapter"] is None

    trainer.train()

    after = json.loads((out / AFTER_DIR / "results.json").read_text())
    assert scorer.after == after and after["adapter"] == str(out) and after["n"] == 2
    assert trainer.state.global_step == 2
