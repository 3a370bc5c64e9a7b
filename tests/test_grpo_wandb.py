"""W&B logging of `spri-sft grpo` without an API key: the rewards of every step and the completions table (prompt,
completion, principles, the critic's critique, reward, advantage) in the offline run, as a synced run would show
them. The critic is test_grpo's rule-following fake server."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from support.fake_openai_server import FakeOpenAIServer
from test_grpo import grpo_argv, grpo_run, substring_critic
from wandb_log import wandb_records, without_wandb_credentials

STEPS = 2
COMPLETIONS = 8  # grpo_argv's per step


@pytest.fixture(scope="module")
def critic_server():
    with FakeOpenAIServer(reply_fn=substring_critic) as server:
        yield server


@pytest.fixture(scope="module")
def offline_grpo(tiny_model_dir, tmp_path_factory, critic_server):
    import wandb

    from spri_sft.cli import main

    tmp = tmp_path_factory.mktemp("grpo-wandb")
    dataset = grpo_run(tmp, critic_server)
    with pytest.MonkeyPatch.context() as mp:
        without_wandb_credentials(mp, tmp / "home", tmp / "wandb-dir")
        mp.chdir(tmp)
        argv = grpo_argv(tiny_model_dir, dataset, tmp / "out", "--max_steps", str(STEPS), "--log_completions", "true")
        argv[argv.index("--report_to") + 1] = "wandb"  # CPU_STEP_FLAGS' none
        assert main(["grpo", *argv]) == 0
        if wandb.run is not None:
            wandb.finish()
    (run_dir,) = (tmp / "wandb-dir" / "wandb").glob("offline-run-*")
    return SimpleNamespace(run_dir=run_dir, records=wandb_records(run_dir), output_dir=tmp / "out")


def history_of(offline_grpo) -> list[dict]:
    rows = [r.history for r in offline_grpo.records if r.WhichOneof("record_type") == "history"]
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in row.item} for row in rows]


def test_the_run_holds_the_principles_reward_of_every_step(offline_grpo):
    logged = {row["train/global_step"]: row for row in history_of(offline_grpo) if "train/reward" in row}
    assert sorted(logged) == list(range(1, STEPS + 1))
    state = json.loads((offline_grpo.output_dir / "trainer_state.json").read_text())
    rewards = {entry["step"]: entry["reward"] for entry in state["log_history"] if "reward" in entry}
    assert {step: row["train/reward"] for step, row in logged.items()} == pytest.approx(rewards)
    assert all(0 <= row["train/rewards/principles/mean"] <= 1 for row in logged.values())


def test_each_step_logs_a_completions_table_with_the_critique_of_each_completion(offline_grpo):
    # A logged table is a file under files/, named in the history row by nested keys (completions/path, ...).
    paths = [
        row["completions/path"] for row in history_of(offline_grpo) if row.get("completions/_type") == "table-file"
    ]
    tables = [json.loads((offline_grpo.run_dir / "files" / path).read_text()) for path in paths]
    columns = tables[-1]["columns"]
    # "principles" is the reward column, named after the reward function as TRL names every reward's column.
    assert {"step", "prompt", "completion", "principles", "critique", "advantage"} <= set(columns)
    steps = {row[columns.index("step")] for table in tables for row in table["data"]}
    assert steps == set(range(1, STEPS + 1))
    last = [row for row in tables[-1]["data"] if row[columns.index("step")] == STEPS]
    assert len(last) == COMPLETIONS
    critiques = [row[columns.index("critique")] for row in last]
    assert critiques == ["counted."] * COMPLETIONS  # the fake critic's feedback, per completion
