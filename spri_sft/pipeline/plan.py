"""`spri-sft plan RECIPE`: run a few prompts of each mode for real, then predict the whole generation.

RECIPE is a pipeline recipe (`spri-sft run`; every mode in its `modes`) or a generate config
(its one `mode`). For each mode the plan draws `sample` prompts of the mode's prompt set
(`spri_sft.generate.plan.sample_prompts`), generates them with the recipe's own backends and
settings into <plan output_dir>/<mode>/ (emptied first: a plan measures, it never reuses), and
extrapolates what they cost to the whole prompt set (`spri_sft.generate.plan.extrapolate`: calls,
tokens, wall time at the configured concurrency, GPU-hours, cost). It prints one line per mode
and writes plan.json. Managed vLLM servers (`backend: vllm`) start once and serve every mode's
sample, as in `spri-sft run`; their start-up time is part of the first mode's wall time.

It plans generation only: formatting, training and evaluation are not in it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from spri_sft.config import load_config, read_recipe
from spri_sft.errors import UserError
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.inputs import PromptSource, load_prompts
from spri_sft.generate.modes import MODE_ROLES
from spri_sft.generate.plan import extrapolate, plan_lines, sample_prompts
from spri_sft.generate.run import generate, run_records
from spri_sft.generate.servers import ServedModels
from spri_sft.pipeline.config import PipelineConfig
from spri_sft.pipeline.run import check_recipe, generation_job

SAMPLE_FILE = "sample_prompts.jsonl"


@dataclass
class PlanSettings:
    """How `spri-sft plan` measures (flags `--plan.sample`, `--plan.output_dir`)."""

    sample: int = field(default=4, metadata={"help": "Prompts of each mode generated for real and measured.", "ge": 1})
    output_dir: str | None = field(
        default=None, metadata={"help": "Where the sample runs and plan.json go; default <recipe output_dir>/plan."}
    )


def load_recipe(path: str, overrides: list[str]) -> PipelineConfig | GenerateConfig:
    """A pipeline recipe when the file has a key only pipeline recipes have (modes, generate, ...), else a
    generate config; `overrides` are dotted flags of that config."""
    data = read_recipe(Path(path)) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of pipeline or generate fields")
    pipeline_only = {f.name for f in dataclasses.fields(PipelineConfig)} - {
        f.name for f in dataclasses.fields(GenerateConfig)
    }
    kind = PipelineConfig if set(data) & pipeline_only else GenerateConfig
    return load_config(kind, ["--config", path, *overrides])


def generation_jobs(recipe: PipelineConfig | GenerateConfig) -> dict[str, GenerateConfig]:
    """Each mode's generate config, as `spri-sft run` (or `spri-sft generate`) would run it."""
    if isinstance(recipe, GenerateConfig):
        return {recipe.mode: recipe}
    check_recipe(recipe)
    return {mode: generation_job(recipe, mode) for mode in recipe.modes}


def plan_recipe(recipe: PipelineConfig | GenerateConfig, settings: PlanSettings) -> dict:
    """Sample every mode, print the plan and write plan.json; return it."""
    out = Path(settings.output_dir or Path(recipe.output_dir) / "plan")
    jobs = generation_jobs(recipe)
    plans = []
    flags = (
        "--" if isinstance(recipe, GenerateConfig) else "--generate."
    )  # a failed sample's message names the recipe's flags
    with ServedModels(out / "servers") as servers:
        for mode, job in jobs.items():
            plans.append(_plan_mode(job, settings.sample, out / mode, servers, flags))
    for line in plan_lines(plans):
        print(line, flush=True)
    plan = {
        "sample": settings.sample,
        "modes": plans,
        "assumes": "a call takes as long at the run's concurrency as in the sample (see spri_sft.generate.plan)",
    }
    (out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    print(f"[spri-sft] plan: {out / 'plan.json'} (the sampled records: {out}/<mode>/records.jsonl)", flush=True)
    return plan


def _plan_mode(job: GenerateConfig, sample: int, directory: Path, servers: ServedModels, flags: str = "--") -> dict:
    prompts = load_prompts(job.prompts, job.shard)
    already_done = len(run_records(job)[0]) if (Path(job.output_dir) / "records.jsonl").exists() else 0
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    chosen = sample_prompts(list(prompts), sample)
    if not MODE_ROLES[job.mode] or not chosen:  # oracle calls no model: nothing to measure
        empty = {"records": len(chosen), "calls": 0, "tokens": 0, "generating_seconds": 0.0, "prompt_seconds": 0.0}
        return extrapolate(job, {"this_run": empty, "usage": {}, "wall_seconds": 0.0}, len(prompts), already_done)
    sample_file = directory / SAMPLE_FILE
    sample_file.write_text(
        "".join(json.dumps({"prompt": str(p)}, ensure_ascii=False) + "\n" for p in chosen), encoding="utf-8"
    )
    print(
        f"[spri-sft] plan {job.mode}: generating {len(chosen)} of {len(prompts):,} prompts to measure them", flush=True
    )
    sample_job = dataclasses.replace(
        job,
        output_dir=str(directory),
        prompts=PromptSource(path=str(sample_file)),
        shard=None,
        token_budget=None,
        max_cost=None,
        retry_failed=False,
        progress=False,
    )
    # A sample with more failed records than the recipe allows is refused as the run would be: fix it before paying.
    return extrapolate(job, generate(sample_job, servers, flags=flags), len(prompts), already_done)
