"""The configuration of `spri-sft generate`: one dataclass, YAML + dotted command-line overrides."""

from __future__ import annotations

from dataclasses import dataclass, field

from spri_sft.generate.engine import LoopSettings
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.modes import Mode
from spri_sft.llm.base import EndpointConfig


@dataclass
class GenerateConfig:
    """Generate SPRI (or baseline) SFT records for a set of prompts.

    The base model writes principles and responses; the critic scores them. With no config at
    all, both are SmolLM2-135M-Instruct run in this process on the package's built-in prompts.
    """

    output_dir: str = field(
        default="outputs/generate", metadata={"help": "Where records.jsonl, config.yaml and summary.json go."}
    )
    mode: Mode = field(
        default="spri",
        metadata={
            "help": "spri, or a row of the paper's Table 4: oracle, direct, self-instruct, self-align (alias constitution), "
            "self-refine, seed-principles; or seed-principles-critic / self-align-critic (see `spri_sft.generate.modes`)."
        },
    )
    prompts: PromptSource = field(default_factory=PromptSource)
    base: EndpointConfig = field(default_factory=EndpointConfig)
    critic: EndpointConfig = field(default_factory=EndpointConfig)
    loop: LoopSettings = field(default_factory=LoopSettings)
    max_concurrent_prompts: int = field(
        default=64, metadata={"help": "Prompts in flight at once; each waits on its own model calls.", "ge": 1}
    )
    token_budget: int | None = field(
        default=None,
        metadata={"help": "Stop cleanly once this many tokens (prompt + completion, all models) are spent.", "ge": 1},
    )
    max_cost: float | None = field(
        default=None,
        metadata={
            "help": "Stop cleanly once this run has spent this many USD at the roles' prices (price_*_per_million "
            "tokens, price_per_gpu_hour for the run's wall time); rerun to resume.",
            "gt": 0,
        },
    )
    fail_fast_after: int | None = field(
        default=8,
        metadata={
            "help": "Stop when this run's first N records all failed with the same error; null never stops.",
            "ge": 1,
        },
    )
    max_failed_share: float = field(
        default=0.1,
        metadata={
            "help": "The largest share of failed records a finished run may hold (0.1: one in ten): above it, or when no "
            "record succeeded, the run is an error (a pipeline's generate stage is not done); 1 allows any but all.",
            "ge": 0,
            "le": 1,
        },
    )
    shard: str | None = field(
        default=None,
        metadata={
            "help": "i/N: generate only the prompts of shard i of N (0 <= i < N), chosen by a hash of the prompt's "
            "text, so every machine draws the same split whatever the order of the file; give each shard its own "
            "output_dir and merge them with `spri-sft format --records a.jsonl b.jsonl ...`."
        },
    )
    retry_failed: bool = field(
        default=False,
        metadata={
            "help": "On a rerun, also retry the records that failed with a permanent error (a rerun always retries "
            "the ones that failed with a connection, HTTP status or timeout error)."
        },
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
