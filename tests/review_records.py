"""A small run of records for the viewer's tests: two modes over the same prompts, made by `spri-sft generate`
against the fake server, laid out as a pipeline output dir (config.yaml with `modes`, generate/<mode>/).

spri's critic scores by prompt: "Question 3" never passes (status max_rounds, final score 2), "Question 4" gets
a critique without a score (unscored), the others pass at once (score 5). One failed record is appended to
spri's records the way generate writes a prompt that failed (a fake server failing a prompt would be retried).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from support.fake_openai_server import CRITIC_REPLY, FakeOpenAIServer, default_reply, message_text

from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.engine import LoopSettings
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.run import generate
from spri_sft.llm.base import EndpointConfig

PROMPTS = [f"Question {i}: why is the sea salty near river mouths?" for i in range(6)]
MODES = ("spri", "direct")
FAILED_ID = "failedrecord0001"


def reply(messages, body) -> str:
    text = " ".join(message_text(m) for m in messages)
    if "[RESULT]" in text:  # a critique request: its instructions ask for the "[RESULT] n" format
        if "Question 3" in text:
            return "Feedback: The response misses the salt's sources. [RESULT] 2"
        if "Question 4" in text:
            return "Feedback: hard to say."
        return CRITIC_REPLY
    return default_reply(messages, body)


def make_run(root: Path) -> Path:
    """A pipeline-like output dir at `root` with spri and direct records of PROMPTS; returns `root`."""
    prompts = root / "prompts.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    with FakeOpenAIServer(reply_fn=reply) as server:
        endpoint = EndpointConfig(backend="openai", model="fake-model", base_url=[server.base_url], timeout=5.0)
        for mode in MODES:
            generate(GenerateConfig(
                output_dir=str(root / "generate" / mode), mode=mode, prompts=PromptSource(path=str(prompts)),
                base=endpoint, critic=endpoint, progress=False, loop=LoopSettings(max_rounds=2, score_retries=0),
            ))  # fmt: skip
    failed = {
        "id": FAILED_ID, "prompt": "Question 9: a prompt whose generation failed", "mode": "spri",
        "principles": None, "response": None, "status": "failed", "error": "APIStatusError: Error code: 400",
        "error_kind": "permanent", "rounds": [],
        "usage": {"base": {"model": "fake-model", "calls": 1, "prompt_tokens": 9, "completion_tokens": 0}},
    }  # fmt: skip
    with (root / "generate" / "spri" / "records.jsonl").open("a") as handle:
        handle.write(json.dumps(failed) + "\n")
    (root / "config.yaml").write_text(yaml.safe_dump({"output_dir": str(root), "modes": list(MODES)}))
    return root


def records_of(root: Path, mode: str) -> list[dict]:
    return [json.loads(line) for line in (root / "generate" / mode / "records.jsonl").read_text().splitlines()]
