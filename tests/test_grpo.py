"""`spri-sft grpo` (`spri_sft.train.grpo`): the prompts of the SFT train split with their accepted principles,
and GRPO training rewarded by a critic that follows a known rule.

Records are written by hand in the shape `spri-sft generate` writes them, beside the config.yaml a generate
run writes; `spri-sft format` makes the SFT dataset from them, as in a run.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
from conftest import CPU_STEP_FLAGS
from support.families import FAMILIES

from spri_sft.config import dump_yaml
from spri_sft.errors import UserError
from spri_sft.format.build import build_dataset
from spri_sft.format.config import FormatConfig
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.engine import LoopSettings
from spri_sft.train.grpo import FinalPrinciples, GRPOScriptArguments, final_principles, load_prompts, principle_prompts

THRESHOLD = 4


def record(number: int, principles_scores: list[int | None], principles: str | None = "Name the word cedar.") -> dict:
    """A spri record whose principles stage had these critic scores (its last one decides acceptance at 4)."""
    rounds = [
        {
            "stage": "principles",
            "round": i,
            "text": principles or "",
            "finish_reason": "stop",
            "critique": "ok",
            "score": s,
        }
        for i, s in enumerate(principles_scores, 1)
    ]
    rounds.append(
        {"stage": "response", "round": 1, "text": "Cedar.", "finish_reason": "stop", "critique": "ok", "score": 5}
    )
    accepted = principles_scores and principles_scores[-1] is not None and principles_scores[-1] >= THRESHOLD
    return {
        "id": f"rec{number:03d}",
        "prompt": f"Question number {number} about {['oak', 'pine', 'elm', 'ash', 'fir', 'yew'][number % 6]} trees",
        "mode": "spri",
        "principles": principles,
        "response": "Cedar.",
        "status": "accepted" if accepted else "max_rounds",
        "rounds": rounds,
    }  # fmt: skip


def row_of(rec: dict) -> dict:
    return {
        "id": rec["id"],
        "messages": [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": "x"}],
    }


def select(records, admit_unaccepted: bool):
    """The GRPO rows and drop counts of an SFT split made of these records' prompts."""
    records = list(records)
    principles = final_principles(iter(records), {r["id"] for r in records}, THRESHOLD)
    return principle_prompts([row_of(r) for r in records], principles, admit_unaccepted=admit_unaccepted)


def test_only_prompts_whose_principles_stage_ended_accepted_are_kept_and_the_others_counted():
    records = {r["id"]: r for r in [record(1, [2, 5]), record(2, [2, 3]), record(3, [None]), record(4, [4], None)]}
    rows, dropped = select(records.values(), admit_unaccepted=False)
    assert [row["id"] for row in rows] == ["rec001"]
    assert rows[0]["prompt"] == [{"role": "user", "content": records["rec001"]["prompt"]}]
    assert rows[0]["principles"] == "Name the word cedar."
    assert dropped == {"principles_not_accepted": 2, "no_principles": 1}


def test_admit_unaccepted_principles_keeps_them_with_their_final_principles():
    rows, dropped = select([record(1, [2, 5]), record(2, [2, 3])], admit_unaccepted=True)
    assert [row["id"] for row in rows] == ["rec001", "rec002"]
    assert not dropped


def test_under_score_expected_acceptance_is_the_digit_mean_against_the_threshold():
    below = record(1, [4])
    below["rounds"][0] |= {"score_mode": "expected", "score_mean": 3.9}
    rows, dropped = select([below], admit_unaccepted=False)
    assert not rows and dropped == {"principles_not_accepted": 1}


def test_reading_the_principles_keeps_neither_the_records_nor_those_outside_the_split(tmp_path):
    from spri_sft.format.build import iter_records

    path = tmp_path / "records.jsonl"
    long_response = "a long response, " * 1200  # about 20 kB a record
    path.write_text("".join(json.dumps(record(n, [5]) | {"response": long_response}) + "\n" for n in range(200)))
    wanted = {f"rec{n:03d}" for n in range(0, 200, 2)}

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        principles = final_principles(iter_records([str(path)]), wanted, THRESHOLD)
        held, peak = tracemalloc.get_traced_memory()[0] - before, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()

    assert principles.keys() == wanted
    assert principles["rec000"] == FinalPrinciples("Name the word cedar.", True)
    size = path.stat().st_size
    assert held < size / 50, f"{held} bytes held after reading a {size}-byte file"
    assert peak < size / 10, f"{peak} bytes at the peak of reading a {size}-byte file"  # one record at a time


def make_run(tmp_path: Path, records: list[dict], critic: dict | None = None, **format_settings) -> Path:
    """A generate output (records.jsonl and its config.yaml) and the SFT dataset `spri-sft format` makes of it."""
    generate_dir = tmp_path / "generate"
    generate_dir.mkdir()
    (generate_dir / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = GenerateConfig(output_dir=str(generate_dir), loop=LoopSettings(threshold=THRESHOLD))
    if critic:
        for key, value in critic.items():
            setattr(config.critic, key, value)
    dump_yaml(config, generate_dir / "config.yaml")
    settings = dict(truthfulqa_file="none", near_duplicate_threshold=None, validation_fraction=0.25)
    build_dataset(
        FormatConfig(records=[str(generate_dir / "records.jsonl")], output_dir=str(tmp_path / "sft"), **(settings | format_settings))
    )  # fmt: skip
    return tmp_path / "sft"


class NoEval:
    eval_strategy = "no"


def test_the_prompts_are_the_sft_train_split_the_same_rows_sft_trains_on(tmp_path):
    from datasets import load_from_disk

    sft = make_run(tmp_path, [record(n, [5]) for n in range(12)])
    train, _, generate, report = load_prompts(GRPOScriptArguments(dataset_path=str(sft)), NoEval())
    sft_train = load_from_disk(str(sft / "hf"))["train"]
    assert sorted(train["id"]) == sorted(sft_train["id"])
    assert 0 < len(train) < 12  # the validation prompts are not GRPO's
    assert report["train"] == {"rows": len(sft_train), "prompts": len(sft_train), "dropped": {}}
    assert generate.loop.threshold == THRESHOLD  # the critic and loop of the generate run beside the records


def test_a_split_left_without_accepted_principles_is_one_line_naming_the_setting_that_admits_them(tmp_path):
    sft = make_run(tmp_path, [record(n, [2]) for n in range(8)])
    with pytest.raises(UserError, match="principles not accepted.*admit_unaccepted_principles true"):
        load_prompts(GRPOScriptArguments(dataset_path=str(sft)), NoEval())


def test_a_dataset_path_that_is_no_format_output_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"dataset_path .*no config.yaml there"):
        load_prompts(GRPOScriptArguments(dataset_path=str(tmp_path)), NoEval())


# -- training ------------------------------------------------------------------------------------

# The critic's rule: 1 + how often the response holds the word its principles name (at most 5). The tiny
# model writes near-uniform byte-level noise, in which "e" is common but not saturating, so the reward starts
# near 0.5 and has room to rise.
WORD = "e"


def substring_critic(messages, body) -> str:
    text = messages[-1]["content"]
    response = text.split("### Response to evaluate\n", 1)[1].split("\n\n### Principles", 1)[0]
    principles = text.split("### Principles (the rubric)\n", 1)[1].split("\n\n### Scores", 1)[0]
    word = principles.split("the word ", 1)[1].split(".", 1)[0]
    return f"Feedback: counted. [RESULT] {1 + min(4, response.count(word))}"


@pytest.fixture
def critic_server():
    from support.fake_openai_server import FakeOpenAIServer

    with FakeOpenAIServer(reply_fn=substring_critic) as server:
        yield server


def grpo_run(tmp_path: Path, server, faults=None) -> Path:
    """An SFT dataset of 12 prompts whose principles name WORD, its records' critic the fake server."""
    critic = {
        "backend": "openai",
        "model": "fake-model",
        "base_url": [server.base_url],
        "max_retries": 1,
        "timeout": 5.0,
    }
    return make_run(tmp_path, [record(n, [5], principles=f"Name the word {WORD}.") for n in range(12)], critic=critic)


def grpo_argv(model_dir: Path, dataset: Path, output_dir: Path, *overrides: str) -> list[str]:
    """`spri-sft grpo` flags for CPU LoRA steps on the tiny model: one prompt, 8 completions of 16 tokens a step."""
    return [
        "--model_name_or_path", str(model_dir),
        "--dataset_path", str(dataset),
        "--output_dir", str(output_dir),
        "--use_peft", "--lora_r", "16", "--lora_alpha", "32", "--lora_target_modules", "all-linear",
        "--per_device_train_batch_size", "8", "--num_generations", "8", "--max_completion_length", "16",
        "--learning_rate", "5e-2",
        "--max_steps", "3",
        *CPU_STEP_FLAGS,
        "--seed", "0",
        *overrides,
    ]  # fmt: skip


def rewards_logged(output_dir: Path) -> list[float]:
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [entry["reward"] for entry in history if "reward" in entry]


# 30 GRPO steps: 6 s on 2 idle CPU cores (over a minute when five other jobs share them).
def test_the_mean_reward_of_the_last_steps_exceeds_the_first_steps_by_a_fifth(tiny_model_dir, tmp_path, critic_server):
    from spri_sft.cli import main as spri_sft

    dataset = grpo_run(tmp_path, critic_server)
    assert spri_sft(["grpo", *grpo_argv(tiny_model_dir, dataset, tmp_path / "out", "--max_steps", "30")]) == 0

    rewards = rewards_logged(tmp_path / "out")
    assert len(rewards) == 30
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last - first >= 0.2, f"first 5 steps {first:.3f}, last 5 {last:.3f}: {rewards}"


def test_three_steps_save_an_adapter_and_the_critics_counts(tiny_model_dir, tmp_path, critic_server, capsys):
    from spri_sft.cli import main as spri_sft

    dataset = grpo_run(tmp_path, critic_server)
    assert spri_sft(["grpo", *grpo_argv(tiny_model_dir, dataset, tmp_path / "out")]) == 0

    assert len(rewards_logged(tmp_path / "out")) == 3
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    counts = json.loads((tmp_path / "out" / "reward.json").read_text())
    assert counts["completions"] == counts["scored"] == counts["calls"] == 3 * 8
    out = capsys.readouterr().out
    assert "prompts: 9 of the 9 SFT train rows" in out
    assert "the critic scored 24 of 24 completions" in out


def test_a_critic_outage_mid_step_is_retried_then_counted_unanswered_and_training_goes_on(tiny_model_dir, tmp_path):
    from support.fake_openai_server import FakeOpenAIServer, FaultPlan

    from spri_sft.cli import main as spri_sft

    # Every critique request fails once in three; each is tried twice (max_retries 1), so some go unanswered.
    with FakeOpenAIServer(reply_fn=substring_critic, faults=FaultPlan(rate_500=0.35), seed=1) as server:
        dataset = grpo_run(tmp_path, server)
        assert spri_sft(["grpo", *grpo_argv(tiny_model_dir, dataset, tmp_path / "out")]) == 0
        retried = server.stats["500"]

    counts = json.loads((tmp_path / "out" / "reward.json").read_text())
    assert retried > counts["failed"] > 0  # some failures were retried into answers, some outlasted the retries
    assert counts["scored"] + counts["failed"] == counts["completions"] == 24
    assert len(rewards_logged(tmp_path / "out")) == 3


@pytest.mark.parametrize(
    ("flags", "steps"),
    [
        ((), 9),  # 9 prompts, 8 completions each, 8 a step
        (("--num_generations", "4", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2"), 4),
        (("--num_iterations", "2"), 18),
    ],
)
def test_an_epoch_of_grpo_is_the_steps_its_dataloader_makes(tiny_model_dir, tmp_path, critic_server, flags, steps):
    from spri_sft.generate.servers import ServedModels
    from spri_sft.train import grpo

    argv = grpo_argv(
        tiny_model_dir,
        grpo_run(tmp_path, critic_server),
        tmp_path / "out",
        "--max_steps",
        "-1",
        "--num_train_epochs",
        "1",
        *flags,
    )
    with ServedModels(tmp_path / "servers") as servers:
        trainer = grpo.build_trainer(*grpo.make_parser().parse_args_and_config(args=argv), servers)
    assert grpo.planned_steps(trainer) == steps


def test_overlong_penalty_tokens_adds_trls_soft_overlong_punishment_as_a_second_reward(
    tiny_model_dir, tmp_path, critic_server
):
    from spri_sft.cli import main as spri_sft

    dataset = grpo_run(tmp_path, critic_server)
    argv = grpo_argv(tiny_model_dir, dataset, tmp_path / "out", "--max_steps", "1", "--overlong_penalty_tokens", "8")
    assert spri_sft(["grpo", *argv]) == 0

    [step] = [
        e for e in json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"] if "reward" in e
    ]
    # Completions over 16 - 8 tokens are penalized, and the tiny model's noise rarely ends sooner; the step's reward
    # is the two rewards' sum (TRL's reward_weights default to 1 each).
    assert step["rewards/soft_overlong_punishment_reward/mean"] < 0
    assert step["reward"] == pytest.approx(
        step["rewards/principles/mean"] + step["rewards/soft_overlong_punishment_reward/mean"], abs=1e-5
    )


def test_a_rerun_resumes_from_the_last_grpo_checkpoint(tiny_model_dir, tmp_path, critic_server, capsys):
    from spri_sft.cli import main as spri_sft

    dataset = grpo_run(tmp_path, critic_server)
    output_dir = tmp_path / "out"
    saving = ("--save_strategy", "steps", "--save_steps", "2")
    assert spri_sft(["grpo", *grpo_argv(tiny_model_dir, dataset, output_dir, *saving, "--max_steps", "2")]) == 0
    capsys.readouterr()

    assert spri_sft(["grpo", *grpo_argv(tiny_model_dir, dataset, output_dir, *saving, "--max_steps", "3")]) == 0

    assert f"resuming from {output_dir / 'checkpoint-2'}" in capsys.readouterr().out
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "reward" in entry] == [1, 2, 3]
    counts = json.loads((output_dir / "reward.json").read_text())
    assert counts["completions"] == counts["scored"] == 3 * 8  # the whole run's: steps 1-2 saved in checkpoint-2


def test_a_rerun_with_nothing_left_to_train_keeps_the_runs_critic_totals(tiny_model_dir, tmp_path, critic_server):
    from spri_sft.cli import main as spri_sft

    dataset = grpo_run(tmp_path, critic_server)
    output_dir = tmp_path / "out"
    saving = ("--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2")
    argv = grpo_argv(tiny_model_dir, dataset, output_dir, *saving)
    assert spri_sft(["grpo", *argv]) == 0
    first = json.loads((output_dir / "reward.json").read_text())
    adapter = (output_dir / "adapter_model.safetensors").read_bytes()

    assert spri_sft(["grpo", *argv]) == 0  # checkpoint-2 is at max_steps: nothing is trained (job.finished_checkpoint)

    assert first["completions"] == 2 * 8
    assert json.loads((output_dir / "reward.json").read_text()) == first
    assert sorted(p.name for p in output_dir.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (output_dir / "adapter_model.safetensors").read_bytes() == adapter


def test_critic_config_names_another_critic_and_the_records_run_still_decides_acceptance(tmp_path):
    sft = make_run(tmp_path, [record(n, [5]) for n in range(8)])
    other = tmp_path / "critic.yaml"
    other.write_text(
        "critic:\n  backend: openai\n  model: judge\n  base_url: [http://127.0.0.1:9/v1]\nloop:\n  threshold: 5\n"
    )
    train, _, generate, report = load_prompts(
        GRPOScriptArguments(dataset_path=str(sft), critic_config=str(other)), NoEval()
    )
    assert (generate.critic.model, generate.loop.threshold) == ("judge", 5)
    assert report["critic_config"] == str(other)
    assert len(train) == report["train"]["rows"]  # accepted at the run's threshold 4, not the critic file's 5


def test_generate_config_names_the_run_of_records_that_have_no_config_beside_them(tmp_path):
    # The pipeline formats a copy of a shared generation's records (dataset/<mode>/records.jsonl): no generate
    # config.yaml beside it, so it names its generation's.
    sft = make_run(tmp_path, [record(n, [5]) for n in range(8)])
    run = tmp_path / "generate" / "config.yaml"
    moved = tmp_path / "elsewhere.yaml"
    run.rename(moved)
    with pytest.raises(UserError, match="the config of the generate run that wrote .*records.jsonl: .* not found"):
        load_prompts(GRPOScriptArguments(dataset_path=str(sft)), NoEval())

    train, _, generate, report = load_prompts(
        GRPOScriptArguments(dataset_path=str(sft), generate_config=str(moved)), NoEval()
    )
    assert generate.loop.threshold == THRESHOLD
    assert report["critic_config"] == str(moved)  # its critic judges too
    assert len(train) == report["train"]["rows"]


@pytest.fixture
def sft_adapter(tiny_model_dir, tmp_path):
    """A LoRA adapter (r 4) trained a few steps by `spri-sft train`, as SFT leaves one."""
    from conftest import build_sft_dataset, tiny_lora_argv

    from spri_sft.train import sft

    output_dir = tmp_path / "sft-adapter"
    dataset = build_sft_dataset(tmp_path / "sft-data" / "hf")
    sft.main(
        *sft.make_parser().parse_args_and_config(
            args=tiny_lora_argv(tiny_model_dir, dataset, output_dir, "--lora_r", "4")
        )
    )
    return output_dir


def test_continuing_an_sft_adapter_trains_it_against_a_frozen_copy_and_saves_only_it(
    tiny_model_dir, tmp_path, critic_server, sft_adapter
):
    import torch

    from spri_sft.train import grpo

    dataset = grpo_run(tmp_path, critic_server)
    argv = grpo_argv(
        tiny_model_dir,
        dataset,
        tmp_path / "out",
        "--sft_adapter",
        str(sft_adapter),
        "--beta",
        "0.04",
        "--max_steps",
        "1",
    )
    script_args, training_args, model_args = grpo.make_parser().parse_args_and_config(args=argv)
    metrics = grpo.main(script_args, training_args, model_args)

    assert metrics["critic/completions"] == 8
    saved = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert saved["r"] == 4  # the SFT adapter's own shape, not this run's lora_r 16
    assert not (tmp_path / "out" / "ref").exists()  # the KL reference is the SFT adapter, left where it is
    from safetensors.torch import load_file

    before, after = (
        load_file(sft_adapter / "adapter_model.safetensors"),
        load_file(tmp_path / "out" / "adapter_model.safetensors"),
    )
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[name], after[name]) for name in before)


def test_grpo_help_lists_the_grpo_fields(capsys):
    from spri_sft.cli import main as spri_sft

    with pytest.raises(SystemExit) as exited:
        spri_sft(["grpo", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for name in ("--admit_unaccepted_principles", "--critic_config", "--sft_adapter", "--num_generations", "--beta"):
        assert name in out


def test_grpo_declares_none_of_the_fields_every_job_takes_again():
    from dataclasses import fields

    from spri_sft.train.job import JobScriptArguments

    shared = {f.name for f in fields(JobScriptArguments)}
    own = set(GRPOScriptArguments.__dataclass_fields__) - shared
    assert own == {
        "generate_config", "critic_config", "admit_unaccepted_principles", "overlong_penalty_tokens", "sft_adapter",
    }  # fmt: skip
    assert all(
        GRPOScriptArguments.__dataclass_fields__[name] is JobScriptArguments.__dataclass_fields__[name]
        for name in shared
    )


def test_the_cpu_recipe_parses_into_grpo_settings(monkeypatch):
    from spri_sft.train import grpo

    for variable in ("WANDB_PROJECT", "WANDB_RUN_GROUP"):  # the recipe's env: block sets them; restored after
        monkeypatch.setenv(variable, "")
    recipe = Path(__file__).resolve().parents[1] / "recipes/smollm2-135m-instruct/grpo/lora.yaml"
    script_args, training_args, model_args = grpo.make_parser().parse_args_and_config(args=["--config", str(recipe)])
    assert script_args.dataset_path == "outputs/smollm2-135m-instruct/format/spri"
    assert training_args.per_device_train_batch_size % training_args.num_generations == 0
    assert model_args.use_peft and not training_args.gradient_checkpointing


def test_an_in_process_critic_of_the_students_own_model_is_a_frozen_copy_scoring_by_its_digit_mean(
    tiny_model_dir, tmp_path
):
    import torch

    from spri_sft.generate.servers import ServedModels
    from spri_sft.train import grpo

    critic = {"backend": "transformers", "model": str(tiny_model_dir), "score": "expected", "max_new_tokens": 4}
    dataset = make_run(tmp_path, [record(n, [5]) for n in range(8)], critic=critic)
    argv = grpo_argv(tiny_model_dir, dataset, tmp_path / "out", "--max_steps", "1")
    script_args, training_args, model_args = grpo.make_parser().parse_args_and_config(args=argv)
    with ServedModels(tmp_path / "servers") as servers:
        trainer = grpo.build_trainer(script_args, training_args, model_args, servers)
        judge = trainer.reward.critic._local.model
        policy = {id(p) for p in trainer.model.parameters()}
        assert not policy & {id(p) for p in judge.parameters()}  # no weight shared with the model being trained
        before = {name: p.detach().clone() for name, p in judge.named_parameters()}
        try:
            trainer.train()
        finally:
            grpo.close_reward(trainer.reward, trainer)  # its worker task stops with it

    assert all(torch.equal(before[name], p) for name, p in judge.named_parameters())
    assert not judge.training
    counts = trainer.reward.totals
    assert counts["scored"] == counts["completions"] == 8  # score: expected leaves no critique unscored
    [step] = [e for e in trainer.state.log_history if "reward" in e]
    assert 0 < step["reward"] < 1  # a mean of digit distributions, scaled: never exactly a bound


def test_a_critic_that_cannot_be_reached_is_one_line_before_any_step(tiny_model_dir, tmp_path, capsys):
    from spri_sft.cli import main as spri_sft

    critic = {"backend": "openai", "model": "judge", "base_url": ["http://127.0.0.1:9/v1"], "timeout": 2.0}
    dataset = make_run(tmp_path, [record(n, [5]) for n in range(8)], critic=critic)

    assert spri_sft(["grpo", *grpo_argv(tiny_model_dir, dataset, tmp_path / "out")]) == 2

    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("spri-sft: error:")]
    assert errors == [
        "spri-sft: error: cannot reach http://127.0.0.1:9/v1 (APIConnectionError): is the server running?"
    ]
    assert not (tmp_path / "out" / "trainer_state.json").exists()


def test_a_bad_overlong_penalty_tokens_is_one_line_before_the_model_loads(
    tiny_model_dir, tmp_path, capsys, monkeypatch
):
    from spri_sft.cli import main as spri_sft
    from spri_sft.train import job

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(job, "load_model", load_model)
    dataset = make_run(tmp_path, [record(n, [5]) for n in range(8)])
    argv = grpo_argv(tiny_model_dir, dataset, tmp_path / "out", "--overlong_penalty_tokens", "17")

    assert spri_sft(["grpo", *argv]) == 2

    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("spri-sft: error:")]
    assert errors == ["spri-sft: error: overlong_penalty_tokens must be from 1 to max_completion_length (16), got 17"]


def test_a_failure_after_the_critic_is_built_closes_it(tiny_model_dir, tmp_path, critic_server, monkeypatch):
    import trl

    from spri_sft.cli import main as spri_sft
    from spri_sft.train.grpo_reward import PrincipleReward

    closed = []
    close = PrincipleReward.close

    async def recording_close(self):
        closed.append(self)
        await close(self)

    def failing_trainer(*args, **kwargs):
        raise RuntimeError("GRPOTrainer failed")

    monkeypatch.setattr(PrincipleReward, "close", recording_close)
    monkeypatch.setattr(trl, "GRPOTrainer", failing_trainer)
    dataset = grpo_run(tmp_path, critic_server)

    with pytest.raises(RuntimeError, match="GRPOTrainer failed"):
        spri_sft(["grpo", *grpo_argv(tiny_model_dir, dataset, tmp_path / "out")])

    assert len(closed) == 1


def test_several_processes_refuse_a_transformers_critic_each_would_load_again_in_one_line():
    from spri_sft.llm.base import EndpointConfig
    from spri_sft.train.grpo import check_critic_processes

    with pytest.raises(UserError, match="critic backend transformers with 2 processes .*as backend: vllm"):
        check_critic_processes(EndpointConfig(backend="transformers", model="judge"), processes=2, ddp_timeout=1800)


def test_several_processes_share_an_openai_or_vllm_critic_and_one_process_any_critic():
    from spri_sft.llm.base import EndpointConfig
    from spri_sft.train.grpo import check_critic_processes

    check_critic_processes(
        EndpointConfig(backend="openai", model="judge", base_url=["http://127.0.0.1:9/v1"]), 2, ddp_timeout=1800
    )
    check_critic_processes(EndpointConfig(backend="vllm", model="judge"), 2, ddp_timeout=1800)  # the main's server
    check_critic_processes(EndpointConfig(backend="transformers", model="judge"), 1, ddp_timeout=1800)


def test_several_processes_refuse_a_vllm_critic_startup_timeout_longer_than_ddp_timeout_in_one_line():
    from spri_sft.llm.base import EndpointConfig
    from spri_sft.serve.vllm import VLLMServer
    from spri_sft.train.grpo import check_critic_processes

    critic = EndpointConfig(backend="vllm", model="judge", vllm=VLLMServer(startup_timeout=3600))

    with pytest.raises(UserError, match=r"^critic vllm.startup_timeout 3600 s is longer than ddp_timeout 1800 s"):
        check_critic_processes(critic, processes=2, ddp_timeout=1800)
    check_critic_processes(critic, processes=2, ddp_timeout=3600)  # raised to it
    check_critic_processes(critic, processes=1, ddp_timeout=1800)  # one process waits for no other


def served_critic(url: str):
    """The `openai` endpoint the main process's critic server is asked at, from the main machine."""
    from spri_sft.llm.base import EndpointConfig

    return EndpointConfig(backend="openai", model="judge", base_url=[url])


def test_a_critic_server_on_every_interface_is_asked_by_the_main_machines_name_from_another_machine():
    from spri_sft.train.grpo import critic_endpoint_on

    endpoint = critic_endpoint_on("node-1", served_critic("http://127.0.0.1:8001/v1"), "node-0", bind_host="0.0.0.0")

    assert endpoint.base_url == ["http://node-0:8001/v1"]


def test_a_critic_server_is_asked_at_its_own_url_on_the_main_machine():
    from spri_sft.train.grpo import critic_endpoint_on

    endpoint = critic_endpoint_on("node-0", served_critic("http://127.0.0.1:8001/v1"), "node-0", bind_host="0.0.0.0")

    assert endpoint.base_url == ["http://127.0.0.1:8001/v1"]


def test_a_critic_server_on_loopback_is_refused_in_one_line_on_another_machine():
    from spri_sft.train.grpo import critic_endpoint_on

    with pytest.raises(UserError, match=r"^critic vllm.host 127.0.0.1: .* \(node-0\) is asked at http://127.0.0.1"):
        critic_endpoint_on("node-1", served_critic("http://127.0.0.1:8001/v1"), "node-0", bind_host="127.0.0.1")


def test_use_vllm_without_vllm_installed_is_one_line_before_anything_loads(tmp_path, capsys, monkeypatch):
    from trl import import_utils

    from spri_sft.cli import main as spri_sft
    from spri_sft.train import job

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before use_vllm was checked")

    monkeypatch.setattr(job, "load_model", load_model)
    monkeypatch.setattr(import_utils, "is_vllm_available", lambda *args, **kwargs: False)  # as on this machine
    argv = grpo_argv(tmp_path / "no-model", tmp_path / "no-dataset", tmp_path / "out", "--use_vllm", "true")

    assert spri_sft(["grpo", *argv]) == 2

    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("spri-sft: error:")]
    assert errors == [
        "spri-sft: error: use_vllm: vLLM is not installed here (pip install vllm, see TRL's docs) — or set "
        "--use_vllm false"
    ]


def test_the_run_totals_are_every_processes_totals_summed():
    from spri_sft.train.grpo_totals import run_totals

    per_process = [
        {"completions": 8, "scored": 7, "unscored": 1, "failed": 0, "calls": 9, "prompt_tokens": 900},
        {"completions": 8, "scored": 6, "unscored": 0, "failed": 2, "calls": 10, "prompt_tokens": 1000},
    ]
    assert run_totals(per_process) == {
        "completions": 16, "scored": 13, "unscored": 1, "failed": 2, "calls": 19, "prompt_tokens": 1900,
    }  # fmt: skip


def test_an_effective_batch_makes_one_generation_an_optimizer_step_as_grpo_derives_it(
    tiny_model_dir, tmp_path, critic_server
):
    from spri_sft.generate.servers import ServedModels
    from spri_sft.train import grpo

    flags = ("--effective_batch_size", "16", "--per_device_train_batch_size", "4", "--num_generations", "4")
    argv = grpo_argv(tiny_model_dir, grpo_run(tmp_path, critic_server), tmp_path / "out", *flags)
    with ServedModels(tmp_path / "servers") as servers:
        trainer = grpo.build_trainer(*grpo.make_parser().parse_args_and_config(args=argv), servers)
        grpo.close_reward(trainer.reward, trainer)

    # 16 completions an optimizer step (4 a forward pass, accumulated 4 times), generated together: 4 prompts' groups.
    assert trainer.args.gradient_accumulation_steps == 4
    assert (trainer.args.steps_per_generation, trainer.args.generation_batch_size) == (4, 16)


@pytest.mark.parametrize(("name", "value"), [("steps_per_generation", "2"), ("generation_batch_size", "32")])
def test_a_generation_batch_set_with_effective_batch_size_is_one_line_before_anything_loads(
    tmp_path, capsys, monkeypatch, name, value
):
    from spri_sft.cli import main as spri_sft
    from spri_sft.train import grpo

    def load_prompts(*args, **kwargs):
        raise AssertionError("the prompts were loaded before the generation batch was checked")

    monkeypatch.setattr(grpo, "load_prompts", load_prompts)
    flags = ("--effective_batch_size", "16", "--per_device_train_batch_size", "4", "--num_generations", "4")
    argv = grpo_argv(tmp_path / "no-model", tmp_path / "no-dataset", tmp_path / "out", *flags, f"--{name}", value)

    assert spri_sft(["grpo", *argv]) == 2

    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("spri-sft: error:")]
    assert errors == [
        f"spri-sft: error: {name} with effective_batch_size 16: effective_batch_size derives "
        f"gradient_accumulation_steps, and a generation an optimizer step from it; unset {name}, or set "
        "--effective_batch_size None and gradient_accumulation_steps yourself"
    ]


def vllm_settings(max_model_length: int | None, completion: int = 16, use_vllm: bool = True):
    from types import SimpleNamespace

    return SimpleNamespace(use_vllm=use_vllm, vllm_max_model_length=max_model_length, max_completion_length=completion)


def test_prompts_that_leave_no_room_for_a_completion_in_vllms_context_are_dropped_and_counted(tiny_model_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from spri_sft.train.grpo import fitting_prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    short, long = [{"role": "user", "content": "Hi"}], [{"role": "user", "content": "word " * 200}]
    prompts = Dataset.from_list(
        [{"prompt": short, "id": "a"}, {"prompt": long, "id": "b"}, {"prompt": short, "id": "c"}]
    )
    kept = {"rows": 3, "prompts": 3, "dropped": {}}

    fitting = fitting_prompts(prompts, tokenizer, vllm_settings(128), kept)

    assert fitting["id"] == ["a", "c"]
    assert kept == {"rows": 3, "prompts": 2, "dropped": {"prompt_too_long": 1}}
    assert fitting_prompts(prompts, tokenizer, vllm_settings(None), kept) is prompts  # the model's own context
    assert fitting_prompts(prompts, tokenizer, vllm_settings(128, use_vllm=False), kept) is prompts
    with pytest.raises(UserError, match=r"none of the 3 prompts leaves room for max_completion_length 16 in vllm_max"):
        fitting_prompts(prompts, tokenizer, vllm_settings(20), {"rows": 3, "prompts": 3, "dropped": {}})


def test_a_prompt_vllm_would_accept_with_its_completion_cut_short_is_dropped_too(tiny_model_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from spri_sft.train.grpo import fitting_prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = [{"role": "user", "content": "word " * 20}]
    length = len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False))
    prompts = Dataset.from_list(
        [{"prompt": prompt, "id": "a"}, {"prompt": [{"role": "user", "content": "Hi"}], "id": "b"}]
    )

    # vLLM takes it (room for 15 of the 16 tokens), but its completion would end at the context, not at 16 tokens.
    cut = fitting_prompts(prompts, tokenizer, vllm_settings(length + 15), {"rows": 2, "prompts": 2, "dropped": {}})
    whole = fitting_prompts(prompts, tokenizer, vllm_settings(length + 16), {"rows": 2, "prompts": 2, "dropped": {}})

    assert (cut["id"], whole["id"]) == (["b"], ["a", "b"])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_prompts_length_is_counted_as_its_training_template_tokenizes_it_on_every_family(name, family_dir):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from spri_sft.format.template import use_training_template
    from spri_sft.train.grpo import fitting_prompts

    tokenizer = AutoTokenizer.from_pretrained(family_dir(name))
    use_training_template(tokenizer, fallback="alpaca")  # as `spri-sft grpo` renders its prompts (base models: Alpaca)
    prompt = [{"role": "user", "content": "What is rain made of, and why does it fall?"}]
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    prompts = Dataset.from_list([{"prompt": prompt, "id": "a"}])

    exactly_room = fitting_prompts(prompts, tokenizer, vllm_settings(len(ids) + 16), {"prompts": 1, "dropped": {}})
    assert exactly_room["id"] == ["a"]  # its BOS counted once, as the template tokenizes it
    with pytest.raises(UserError, match="none of the 1 prompts leaves room"):
        fitting_prompts(prompts, tokenizer, vllm_settings(len(ids) + 15), {"prompts": 1, "dropped": {}})
