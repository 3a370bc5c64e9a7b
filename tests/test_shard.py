"""`--shard i/N`: N machines each generate a disjoint part of one prompt set, chosen by a hash of
each prompt's text, and `spri-sft format` merges their records into the dataset one machine would
have made.

The model is `FakeOpenAIServer`, so config, prompt reading, sharding, engine, store and format are
the real ones.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from datasets import load_from_disk
from support.fake_openai_server import FakeOpenAIServer

from spri_sft.config import load_config
from spri_sft.errors import UserError
from spri_sft.format.build import build_dataset
from spri_sft.format.config import FormatConfig
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.inputs import PromptList, parse_shard, select_shard, shard_of
from spri_sft.generate.run import generate

pytestmark = pytest.mark.timeout(180)

PROMPTS = [f"Give me {n} ways to reuse a glass jar." for n in range(40)]


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def test_the_shards_of_a_prompt_set_are_disjoint_and_together_hold_every_prompt():
    shards = [select_shard(PromptList(PROMPTS), f"{i}/3") for i in range(3)]
    assert sorted(p for shard in shards for p in shard) == sorted(PROMPTS)
    assert all(shard for shard in shards)  # 40 prompts over 3 shards: none empty by this hash


def test_a_prompt_lands_on_the_same_shard_whatever_the_order_of_the_file():
    shuffled = PROMPTS[:]
    random.Random(1).shuffle(shuffled)
    assert set(select_shard(PromptList(shuffled), "1/4")) == set(select_shard(PromptList(PROMPTS), "1/4"))
    # The split is a function of the text alone: stable across processes (no PYTHONHASHSEED).
    assert (
        shard_of("Give me 0 ways to reuse a glass jar.", 4)
        == int.from_bytes(__import__("hashlib").sha256(b"Give me 0 ways to reuse a glass jar.").digest()[:8], "big") % 4
    )


def test_a_shard_keeps_the_prompts_in_their_order_and_says_what_it_kept():
    shard = select_shard(PromptList(PROMPTS), "2/3")
    assert list(shard) == [p for p in PROMPTS if p in set(shard)]
    assert shard.report.shard == {"shard": "2/3", "prompts": len(shard), "of": 40}
    assert f"shard 2/3: {len(shard)} of 40 prompts" in shard.report.line()


@pytest.mark.parametrize("bad", ["3/3", "1/0", "1", "a/b", "-1/2"])
def test_a_shard_outside_its_range_or_not_i_over_n_is_refused(bad):
    with pytest.raises(UserError, match=r"--shard: "):
        parse_shard(bad)


def test_three_sharded_runs_merged_by_format_make_the_dataset_of_one_unsharded_run(tmp_path):
    prompts_file = write_prompts(tmp_path / "prompts.jsonl", PROMPTS)
    with FakeOpenAIServer() as server:
        common = ["--mode", "direct", "--progress", "false", "--prompts.path", str(prompts_file),
                  "--base.backend", "openai", "--base.base_url", server.base_url, "--base.model", "fake-model",
                  "--critic.backend", "openai", "--critic.base_url", server.base_url, "--critic.model", "fake-model"]  # fmt: skip
        whole = generate(load_config(GenerateConfig, [*common, "--output_dir", str(tmp_path / "whole")]))
        parts = [
            generate(
                load_config(
                    GenerateConfig, [*common, "--shard", f"{i}/3", "--output_dir", str(tmp_path / f"shard-{i}")]
                )
            )
            for i in range(3)
        ]
    assert sum(part["records"] for part in parts) == whole["records"] == 40
    assert [part["prompt_rows"]["shard"]["shard"] for part in parts] == ["0/3", "1/3", "2/3"]

    def ids(folder: str) -> set[str]:
        return {json.loads(line)["id"] for line in (tmp_path / folder / "records.jsonl").read_text().splitlines()}

    # Sharding is not part of a record's identity: the shards' ids are exactly the whole run's.
    assert ids("shard-0") | ids("shard-1") | ids("shard-2") == ids("whole")

    def dataset(records: list[Path], out: str) -> dict[str, set[str]]:
        build_dataset(
            FormatConfig(records=[str(r) for r in records], output_dir=str(tmp_path / out), validation_rows=8)
        )
        splits = load_from_disk(str(tmp_path / out / "hf"))
        return {name: {row["messages"][0]["content"] for row in split} for name, split in splits.items()}

    merged = dataset([tmp_path / f"shard-{i}" / "records.jsonl" for i in range(3)], "merged")
    assert merged == dataset([tmp_path / "whole" / "records.jsonl"], "single")
