"""`run_pipeline(config)`: generate → format → train → evaluate, stage by stage, into one output directory.

Order: for each mode, generate its records and format its dataset (the data, where API calls go,
comes first, so a problem with it shows before any training; format measures the rows with the
student's tokenizer against the training recipe's max_length, `length_settings`); then score the untouched student
model on TruthfulQA once (eval/base); then, for each mode, fine-tune an adapter and score it. With
`dpo.enabled`, format also writes each mode's preference pairs, and after a mode's SFT a DPO
training continues its adapter on them (checkpoints/<mode>+dpo), scored in turn (eval/<mode>+dpo);
a mode without a training pair skips it, with one line saying why. With `grpo.enabled`, a GRPO
training continues the SFT adapter too (checkpoints/<mode>+grpo, eval/<mode>+grpo) on the prompts
of the mode's SFT train split that have principles, rewarded by the critic of its generation; a mode
with none skips it, with one line saying why (`AFTER_SFT`: the trainings after SFT, in order). With
`evaluate.lm_eval_tasks`, lm-evaluation-harness runs those tasks after each TruthfulQA scoring
(eval/base/lm_eval, eval/<mode>/lm_eval). At the end, report.md and report.json compare every
mode with the base model.

Training runs as a child process (`spri-sft train`, `dpo` or `grpo`, or `accelerate launch` with
`train.accelerate_config`) on a recipe written to checkpoints/<mode>/recipe.yaml: the same job a
user runs by hand, with its own W&B run, and the memory of generation released. Generation and
evaluation run in this process.

W&B (through `spri_sft.tracking`): every run of the pipeline (one per generation, training and
evaluation, plus the report) goes into one group, named after the run; offline when no API key
is set, under <output_dir>/wandb unless WANDB_DIR says otherwise. The output ends with the report
and where report.md, the adapters and the W&B runs are (with the `wandb sync` command when offline).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from spri_sft import tracking
from spri_sft.config import check_ranges, dump_yaml, read_yaml, to_dict
from spri_sft.errors import UserError
from spri_sft.evaluate.config import EvaluateConfig
from spri_sft.evaluate.lm_eval_tasks import LmEvalJob, check_job, lm_eval_version, log_to_wandb, run_lm_eval_tasks
from spri_sft.format.build import REVIEW_OFF
from spri_sft.format.config import FormatConfig
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.modes import MODES
from spri_sft.generate.servers import ServedModels
from spri_sft.pipeline.config import (
    AFTER_SFT,
    EVALUATE_SET_BY_PIPELINE,
    PROMPTS_FILE,
    PipelineConfig,
    continued,
    split_model,
)
from spri_sft.pipeline.recipe_check import training_recipes_checked
from spri_sft.pipeline.stages import Stage, StageChanged, file_digest, fingerprint, folder_digest
from spri_sft.processes import LOCK_NAME, hold_output_dir, run_bound, writes_output_dir
from spri_sft.review.decisions import DECISIONS_FILE, REVIEW_DIR, read_decisions

logger = logging.getLogger(__name__)

# Fields of the jobs' configs that the pipeline sets itself, with the defaults a recipe must leave them at.
SET_BY_PIPELINE = {
    "generate.output_dir": GenerateConfig().output_dir,
    "format.records": FormatConfig().records,
    "format.output_dir": FormatConfig().output_dir,
    **{f"evaluate.{name}": getattr(EvaluateConfig(), name) for name in EVALUATE_SET_BY_PIPELINE},
}


@writes_output_dir  # one run per output_dir; each stage also holds its own directory while it writes there
def run_pipeline(config: PipelineConfig) -> dict[str, Any]:
    """Run every stage not yet done and return the report (also written to report.md / report.json)."""
    root = Path(config.output_dir)
    name = config.run_name or root.resolve().name
    group = config.wandb.group or name
    check_recipe(config)
    train_plans = {mode: train_plan(config, mode, root, name, group) for mode in config.modes}  # fails early
    after_plans = {  # by model (<mode>+<job>), each mode's in AFTER_SFT's order
        continued(mode, job): after_sft_plan(config, job, plan, root, name, group)
        for mode, plan in train_plans.items()
        for job in config.after_sft()
    }
    graph = stage_graph(config, root, train_plans, after_plans)
    redone = redo_stages(config.redo, graph, root)  # an unknown name fails now
    # A reviewer's changed decisions rebuild that mode's dataset and what follows it (generation untouched).
    reviewed = reviewed_datasets(config, root)
    redone = later_stages(graph, [*redone, *reviewed])
    # TRL's and transformers' own checks of the recipes' values, in a child process (see recipe_check)
    origins = {
        job: _recipe_origin(job, getattr(config, job).recipe, getattr(config, job).args)
        for job in ("train", *AFTER_SFT)
    }
    plans = [*train_plans.values(), *after_plans.values()]
    with training_recipes_checked([(plan.job, plan.args, origins[plan.job]) for plan in plans]):
        if config.evaluate.enabled and config.evaluate.lm_eval_tasks:  # no lm-eval, or a task-name typo: fail now
            check_job(lm_eval_job(config, train_plans[config.modes[0]], None))
        truthfulqa = _truthfulqa_source(config, root) if config.evaluate.enabled else None

    root.mkdir(parents=True, exist_ok=True)
    dump_yaml(dataclasses.replace(config, redo=[]), root / "config.yaml")  # rerunning the saved config redoes nothing
    _clear_stages(redone, graph, [*config.redo, *(f"{stage} (review)" for stage in reviewed)])
    from spri_sft.train.progress import only_stage_bars

    # One bar per stage (generate, train, TruthfulQA), none from the libraries under them.
    with tracking.environment(root) if config.wandb.enabled else contextlib.nullcontext(), only_stage_bars():
        try:
            return _run_stages(config, root, name, group, train_plans, after_plans, truthfulqa)
        except StageChanged as changed:  # say what changed, and every directory that redoing it takes
            node = graph.get(changed.stage.name)
            made_from = ", ".join(node.made_from) if node else "the stage before it"
            later = [graph[stage].directory for stage in later_stages(graph, [changed.stage.name])]
            remove = [directory for directory in later if directory.exists()] or [changed.stage.directory]
            raise UserError(changed.describe(made_from, remove)) from None


def _run_stages(
    config: PipelineConfig, root: Path, name: str, group: str, train_plans: dict, after_plans: dict, truthfulqa
) -> dict:
    from spri_sft.pipeline.report import build_report, log_report_to_wandb, write_report

    print(f"[spri-sft] run {name}: modes {', '.join(config.modes)} → {root}", flush=True)

    stages: dict[str, Stage] = {}
    # Managed vLLM servers (`backend: vllm` roles) start at the first generation that needs them and
    # serve every mode's; they stop before training, which needs the GPUs.
    with ServedModels(root / "servers") as servers:
        for mode in config.modes:
            stages[f"generate/{mode}"] = _generate(config, mode, root, name, group, servers)
            stages[f"dataset/{mode}"] = _format(
                config, mode, root, stages[f"generate/{mode}"], truthfulqa, train_plans[mode]
            )
    if truthfulqa is not None:
        stages["eval/base"] = _evaluate(
            config, truthfulqa, root / "eval" / "base", train_plans[config.modes[0]], None, name, group
        )
        if config.evaluate.lm_eval_tasks:
            stages["eval/base/lm_eval"] = lm_eval_stage(
                config, root / "eval" / "base" / "lm_eval", train_plans[config.modes[0]], None, name, group
            )
    trained_plans = {}  # every model trained, in order (a mode's SFT, then its DPO and GRPO when those ran)
    for mode in config.modes:
        plan = train_plans[mode]
        stages[f"checkpoints/{mode}"] = _train(plan, stages[f"dataset/{mode}"].output_id)
        trained_plans[mode] = plan
        _score(config, truthfulqa, root, plan, stages, name, group)
        for job in config.after_sft():
            after = after_plans[continued(mode, job)]
            start = {"dpo": _dpo, "grpo": _grpo}[job]
            tuned = start(config, after, stages[f"dataset/{mode}"], stages[f"checkpoints/{mode}"])
            if tuned is not None:
                stages[f"checkpoints/{after.mode}"] = tuned
                trained_plans[after.mode] = after
                _score(config, truthfulqa, root, after, stages, name, group)

    report = build_report(config, root, name, train_plans[config.modes[0]].student, truthfulqa)
    text = write_report(report, root)
    if config.wandb.enabled:
        log_report_to_wandb(report, root, config.wandb.project, group, f"{name}-report")
    print("\n" + text + "\n\n" + "\n".join(where_the_results_are(config, root, trained_plans)), flush=True)
    return report


def _score(
    config: PipelineConfig, truthfulqa: dict | None, root: Path, plan: TrainPlan, stages: dict, name: str, group: str
) -> None:
    """TruthfulQA (and lm-eval's tasks when set) of the model `plan` trained, into eval/<its mode>/."""
    if truthfulqa is None:
        return
    trained = stages[f"checkpoints/{plan.mode}"]
    directory = root / "eval" / plan.mode
    stages[f"eval/{plan.mode}"] = _evaluate(config, truthfulqa, directory, plan, trained, name, group)
    if config.evaluate.lm_eval_tasks:
        stages[f"eval/{plan.mode}/lm_eval"] = lm_eval_stage(config, directory / "lm_eval", plan, trained, name, group)


def where_the_results_are(config: PipelineConfig, root: Path, trained_plans: dict) -> list[str]:
    """The last lines of a run: report.md, each trained adapter (or model), and the W&B runs (how to upload them)."""
    lines = [f"[spri-sft] report: {root / 'report.md'}"]
    for mode, plan in trained_plans.items():
        lines.append(f"[spri-sft] {'adapter' if plan.adapter else 'model'} ({mode}): {plan.output_dir}")
    if config.wandb.enabled:
        lines.append(f"[spri-sft] {tracking.sync_hint(root)}")
    return lines


def check_recipe(config: PipelineConfig) -> None:
    check_ranges(config, "recipe")  # a config built in code; one read from YAML or flags was checked as it was read
    if not config.modes:
        raise UserError("modes: give at least one generation mode (e.g. [spri])")
    unknown = [m for m in config.modes if m not in MODES]
    if unknown or len(set(config.modes)) != len(config.modes):
        raise UserError(f"modes: {config.modes} must be distinct modes among {', '.join(MODES)}")
    if config.generate.mode != GenerateConfig().mode:
        raise UserError(
            f"generate.mode is set by the pipeline: list the modes in modes: (e.g. [{config.generate.mode}])"
        )
    sections = {"generate": config.generate, "format": config.format, "evaluate": config.evaluate}
    for dotted, default in SET_BY_PIPELINE.items():
        section, field = dotted.split(".")
        if getattr(sections[section], field) != default:
            how = "for each model it scores" if section == "evaluate" else "under output_dir"
            raise UserError(f"{dotted} is set by the pipeline ({how}); remove it from the recipe")


# -- the stage graph: which stage reads which one's outputs ------------------------------------


@dataclasses.dataclass(frozen=True)
class StageNode:
    directory: Path
    made_from: tuple[str, ...]  # the stages whose outputs it reads (their output ids are in its fingerprint)


def stage_graph(config: PipelineConfig, root: Path, train_plans: dict, after_plans: dict) -> dict[str, StageNode]:
    """Every stage of this run by name, as `_run_stages` runs them (a stage after those it is made from), with
    its directory and the stages it reads."""
    graph: dict[str, StageNode] = {}
    for mode in config.modes:
        graph[f"generate/{mode}"] = StageNode(config.generation_dir(mode), ())
        graph[f"dataset/{mode}"] = StageNode(root / "dataset" / mode, (f"generate/{mode}",))

    def scored(model: str, made_from: tuple[str, ...]) -> None:
        if config.evaluate.enabled:
            graph[f"eval/{model}"] = StageNode(root / "eval" / model, made_from)
            if config.evaluate.lm_eval_tasks:
                graph[f"eval/{model}/lm_eval"] = StageNode(root / "eval" / model / "lm_eval", made_from)

    scored("base", ())
    for mode in config.modes:
        graph[f"checkpoints/{mode}"] = StageNode(train_plans[mode].output_dir, (f"dataset/{mode}",))
        scored(mode, (f"checkpoints/{mode}",))
        for job in config.after_sft():
            after = after_plans[continued(mode, job)]
            graph[f"checkpoints/{after.mode}"] = StageNode(after.output_dir, (f"dataset/{mode}", f"checkpoints/{mode}"))
            scored(after.mode, (f"checkpoints/{after.mode}",))
    return graph


def later_stages(graph: dict[str, StageNode], names: list[str]) -> list[str]:
    """`names` and every stage that reads their outputs, directly or through others, in the order they run."""
    affected = set(names)
    for stage, node in graph.items():
        if affected & set(node.made_from):
            affected.add(stage)
    return [stage for stage in graph if stage in affected]


# The names the issue and the commands use for the stages: train/spri is checkpoints/spri, and so on.
STAGE_ALIASES = {"train": "checkpoints", "format": "dataset", "evaluate": "eval"}


def redo_stages(names: list[str], graph: dict[str, StageNode], root: Path) -> list[str]:
    """The stages `redo` names (aliases resolved) and every stage after them that reads their outputs."""
    wanted = []
    for name in names:
        kind, _, rest = name.strip("/").partition("/")
        resolved = f"{STAGE_ALIASES.get(kind, kind)}/{rest}"
        if kind in AFTER_SFT:  # dpo/spri: the DPO training after spri's SFT
            resolved = f"checkpoints/{continued(rest, kind)}"
        if resolved not in graph:
            raise UserError(f"redo: no stage '{name}' in this run (its stages: {', '.join(graph)})")
        wanted.append(resolved)
    redone = later_stages(graph, wanted)
    for stage in redone:
        directory = graph[stage].directory
        if not directory.resolve().is_relative_to(root.resolve()):
            raise UserError(
                f"redo {stage}: its directory {directory} is outside this run's output_dir (a shared generate_dir): "
                "remove it yourself to make it again"
            )
    return redone


def _clear_stages(stages: list[str], graph: dict[str, StageNode], asked: list[str]) -> None:
    """Remove what `stages` made (a stage folder nested in another, eval/spri/lm_eval, is left to its own stage),
    so each runs again from the start, and say so in one line."""
    if not stages:
        return
    nested = {graph[stage].directory for stage in graph}
    for stage in stages:
        directory = graph[stage].directory
        if not directory.is_dir():
            continue
        with hold_output_dir(directory):  # never empty a directory another process is writing (a standalone generate)
            for path in directory.iterdir():
                if path in nested or path.name == LOCK_NAME:
                    continue
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    print(f"[spri-sft] redo {', '.join(asked)}: running again {', '.join(stages)}", flush=True)


# -- generate and format ---------------------------------------------------------------------


def _generate(
    config: PipelineConfig, mode: str, root: Path, name: str, group: str, servers: ServedModels | None = None
) -> Stage:
    from spri_sft.generate.identity import generation_identity
    from spri_sft.generate.prompts import load_prompt_set
    from spri_sft.generate.run import generate

    job = generation_job(config, mode)
    # What shapes the records (record ids hash the same identity), and the prompt set they are made
    # for, its file by contents; not concurrency, budget or progress. Incremental: a change adds the
    # records it needs beside the others, and the stages after it see new outputs.
    settings = {
        "identity": generation_identity(job, load_prompt_set(job.loop.prompts_file)),
        "prompts": _prompt_set(job.prompts),
        **({"shard": job.shard} if job.shard else {}),  # absent when unsharded: earlier stages stay valid
    }
    stage = Stage.made_from(f"generate/{mode}", Path(job.output_dir), settings, incremental=True)
    if _skip(stage):
        return stage
    stage.begin()
    summary = generate(job, servers, flags="--generate.")  # its errors name the flags `spri-sft run` takes
    if summary["missing"]:
        raise UserError(
            f"generate/{mode}: {summary['missing']} prompts have no record yet ({summary['stopped_by'] or 'a limit'} "
            "spent): raise generate.token_budget or generate.max_cost and rerun the same command to finish them"
        )
    if config.wandb.enabled:
        _log_generation(summary, Path(job.output_dir), config.wandb.project, group, f"{name}-generate-{mode}", mode)
    stage.finish(records=summary["records"], statuses=summary["status"])
    return stage


def generation_job(config: PipelineConfig, mode: str) -> GenerateConfig:
    """The `spri-sft generate` job a pipeline runs for one mode (also what `spri-sft plan` samples)."""
    return dataclasses.replace(config.generate, mode=mode, output_dir=str(config.generation_dir(mode)))


def _prompt_set(source) -> dict:
    """The prompt source's settings, its local file named by its contents (a Hub dataset by its id)."""
    from spri_sft.generate.inputs import BUILTIN_PROMPTS

    settings = dataclasses.asdict(source)
    if not source.dataset:
        settings["path"] = file_digest(source.path or BUILTIN_PROMPTS)
    if source.id_column is None:
        del settings["id_column"]  # absent when unset: generate stages made before it existed stay done
    return settings


def _format(
    config: PipelineConfig,
    mode: str,
    root: Path,
    generated: Stage,
    truthfulqa: dict | None,
    plan: TrainPlan | None = None,
) -> Stage:
    from spri_sft.format.build import build_dataset

    job, stage = format_stage(config, mode, root, generated, truthfulqa, plan)
    if _skip(stage):
        return stage
    stage.begin()
    job.records = [str(_this_runs_records(config, mode, Path(job.output_dir)))]
    summary = build_dataset(job)
    pairs = summary.get("preference")
    print(
        f"[spri-sft] dataset/{mode}: {summary['rows']} rows ("
        + ", ".join(f"{split} {n}" for split, n in summary["splits"].items())
        + ")"
        + (f", {pairs['pairs']} preference pairs" if pairs else ""),
        flush=True,
    )
    stage.finish(rows=summary["rows"], splits=summary["splits"], **({"pairs": pairs["splits"]} if pairs else {}))
    return stage


# Format's fields that measure rows against training's max_length (`spri_sft.format.build`, step 7).
LENGTH_FIELDS = ("tokenizer", "max_length", "training_template", "overlong")


def format_stage(
    config: PipelineConfig, mode: str, root: Path, generated: Stage, truthfulqa: dict | None, plan: TrainPlan | None
) -> tuple[FormatConfig, Stage]:
    """The `spri-sft format` job of one mode and its stage (not run): format's section with the pipeline's paths, the
    benchmark guard (the evaluated TruthfulQA questions and the lm-eval tasks the run scores, `scored_benchmarks`:
    another task list is another dataset), preference pairs with DPO, and, from `plan` (the mode's training), training's tokenizer,
    max_length, training_template and overlong, so rows over max_length are counted (`length_settings`).

    The reviewer's decisions (`spri-sft view`): format's review_file, else the run's own review/decisions.jsonl
    when there is one (else none: format's default, beside the records, is not this run's). They enter the
    fingerprint by the contents of this mode's decisions (`review_settings`); `reviewed_datasets` has a rerun after
    a changed decision rebuild the dataset and the stages after it, generation untouched.

    Fields that did not exist when a dataset was made stay out of its fingerprint while they are off (preference,
    the length fields without a tokenizer, review_file while this mode has no decision, the lm-eval tasks while there
    are none, contamination_responses while false); a dataset made before rows
    were measured, whose length settings only came from the training recipe, stays done (it says its rows were not
    counted) instead of being refused.
    """
    guard = config.format.truthfulqa_file
    if guard is None and truthfulqa is not None:
        # The evaluation's own questions; `none` (format's off switch) when evaluate.guard_training_data is false,
        # since format guards against the default source when given no file.
        guard = truthfulqa["file"] if config.evaluate.guard_training_data else "none"
    filled = length_settings(config.format, plan)
    review = run_review_file(config, root)
    job = dataclasses.replace(
        config.format,
        records=[str(generated.directory / "records.jsonl")],
        output_dir=str(root / "dataset" / mode),
        truthfulqa_file=guard,
        review_file=review,
        preference=config.format.preference or config.dpo.enabled,  # DPO trains on the pairs
        **filled,
        **scored_benchmarks(config),
    )
    settings = {
        **dataclasses.asdict(job), "records": None, "output_dir": None, "after": generated.output_id,
        "truthfulqa_file": file_digest(guard) if guard and guard != "none" else None,
    }  # fmt: skip
    if job.lm_eval_tasks:  # local tasks by their files' contents: an edited task is another benchmark
        settings["lm_eval_include_path"] = folder_digest(job.lm_eval_include_path) if job.lm_eval_include_path else None
    else:  # absent when off: datasets made before lm-eval tasks were guarded against stay valid
        del settings["lm_eval_tasks"], settings["lm_eval_include_path"], settings["lm_eval_include_defaults"]
    if not job.contamination_responses:
        del settings["contamination_responses"]
    if not job.preference:  # absent when off: datasets made before preference pairs existed stay valid
        del settings["preference"], settings["preference_margin"]
    del settings["review_file"]  # by this mode's decisions, absent without any: datasets made before stay valid
    settings.update(review_settings(review, mode))
    unmeasured = {key: value for key, value in settings.items() if key not in LENGTH_FIELDS}
    measuring = job.tokenizer is not None and job.max_length is not None
    stage = Stage.made_from(f"dataset/{mode}", Path(job.output_dir), settings if measuring else unmeasured)
    state = stage.state() or {}
    if filled and state.get("status") == "done" and state.get("fingerprint") == fingerprint(unmeasured):
        print(
            f"[spri-sft] dataset/{mode}: made without measuring its rows against training's max_length (before "
            f"format did): rows over it are not counted there; delete {stage.directory} to count them",
            flush=True,
        )
        stage = Stage.made_from(stage.name, stage.directory, unmeasured)
    return job, stage


def scored_benchmarks(config: PipelineConfig) -> dict[str, Any]:
    """The lm-eval tasks format checks the SFT rows against: format's own lm_eval_tasks when it names any, else, when
    the run scores lm-eval tasks and guards its training data, evaluate's, with evaluate's include_path and
    include_defaults, so every benchmark the run scores is one the data was checked against."""
    if config.format.lm_eval_tasks or not (config.evaluate.enabled and config.evaluate.guard_training_data):
        return {}
    evaluate = config.evaluate
    return {
        "lm_eval_tasks": list(evaluate.lm_eval_tasks),
        "lm_eval_include_path": evaluate.lm_eval_include_path,
        "lm_eval_include_defaults": evaluate.lm_eval_include_defaults,
    }


def run_review_file(config: PipelineConfig, root: Path) -> str:
    """The decisions a run's datasets obey: format.review_file, else the run's own review/decisions.jsonl when there
    is one, else none (format's default, beside the records, is not this run's)."""
    if config.format.review_file is not None:
        return config.format.review_file
    own = root / REVIEW_DIR / DECISIONS_FILE
    return str(own) if own.is_file() else REVIEW_OFF


def reviewed_datasets(config: PipelineConfig, root: Path) -> list[str]:
    """The finished datasets whose mode's review decisions changed since they were made, each said in one line: the
    rerun rebuilds them and the stages after them, as `--redo dataset/<mode>` would (a decision is a change the
    reviewer asked for, not a setting to refuse). A dataset whose recorded settings predate the review counts as
    made with none."""
    review = run_review_file(config, root)
    decided = {mode: review_settings(review, mode).get("review_file") for mode in config.modes}  # a missing file: now
    changed = []
    for mode, now in decided.items():
        state = Stage(f"dataset/{mode}", root / "dataset" / mode, "").state() or {}
        if state.get("status") != "done":
            continue
        made_with = (state.get("settings") or {}).get("review_file")
        if made_with != now:
            print(
                f"[spri-sft] dataset/{mode}: review decisions changed ({made_with or 'none'} → {now or 'none'}): "
                "rebuilding it and the stages after it",
                flush=True,
            )
            changed.append(f"dataset/{mode}")
    return changed


def review_settings(review_file: str, mode: str) -> dict[str, str]:
    """The review's part of a dataset's fingerprint: this mode's decisions by their contents, in words a refusal can
    show (`1 excluded, 0 kept · <digest>`), so a decision on another mode's record leaves this dataset done; {} when
    the mode has none."""
    if review_file.strip().lower() == REVIEW_OFF:
        return {}
    if not Path(review_file).is_file():
        raise UserError(f"format.review_file {review_file}: not found (a `spri-sft view` decisions.jsonl, or none)")
    ours = {id: line for id, line in read_decisions(review_file).items() if line["mode"] == mode}
    if not ours:
        return {}
    excluded = sum(line["decision"] == "exclude" for line in ours.values())
    return {"review_file": f"{excluded} excluded, {len(ours) - excluded} kept · {fingerprint(sorted(ours.items()))}"}


def length_settings(section: FormatConfig, plan: TrainPlan | None) -> dict[str, Any]:
    """Format's length fields taken from the mode's training recipe, for the ones the recipe's format section leaves
    unset: the student as tokenizer, training's max_length (TRL's default when the recipe names none; none when it
    is null: nothing is cut), its training_template and overlong. Empty when format sets tokenizer or max_length."""
    if plan is None or plan.job != "train" or section.tokenizer is not None or section.max_length is not None:
        return {}
    max_length = plan.args.get("max_length", _sft_default("max_length"))
    if max_length is None:
        return {}
    defaults = FormatConfig()
    filled: dict[str, Any] = {"tokenizer": plan.student, "max_length": max_length}
    for key in ("training_template", "overlong"):
        if getattr(section, key) == getattr(defaults, key) and plan.args.get(key) is not None:
            filled[key] = plan.args[key]
    return filled


def _sft_default(name: str) -> Any:
    from trl import SFTConfig

    return next(f.default for f in dataclasses.fields(SFTConfig) if f.name == name)


def _training_default(name: str) -> Any:
    """transformers' TrainingArguments default of `name` (a field every training config shares)."""
    from transformers import TrainingArguments

    return next(f.default for f in dataclasses.fields(TrainingArguments) if f.name == name)


def _this_runs_records(config: PipelineConfig, mode: str, output_dir: Path) -> Path:
    """The records of this run's prompts and settings: its generation's records.jsonl when that holds
    nothing else, else a copy of just those (records.jsonl beside the dataset made from it)."""
    from spri_sft.generate.run import run_records

    records, others = run_records(generation_job(config, mode))
    selected = output_dir / "records.jsonl"
    if not others:
        selected.unlink(missing_ok=True)  # a copy from an earlier run would only mislead
        return config.generation_dir(mode) / "records.jsonl"
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = selected.with_suffix(".tmp")
    with staging.open("w", encoding="utf-8") as handle:  # a record at a time: the run may hold millions
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(staging, selected)
    return selected


# -- train -----------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainPlan:
    mode: str
    output_dir: Path
    args: dict[str, Any]  # the recipe the child process reads, env block included
    accelerate_config: str | None
    job: str = "train"  # the `spri-sft` command the child runs: train (SFT), or one of AFTER_SFT (dpo, grpo)

    @property
    def student(self) -> str:
        return self.args["model_name_or_path"]

    @property
    def adapter(self) -> bool:
        return bool(self.args.get("use_peft"))


def train_plan(config: PipelineConfig, mode: str, root: Path, name: str, group: str) -> TrainPlan:
    """The training recipe for one mode: train.recipe, then train.args, then what the pipeline sets; validated."""
    args = _recipe_args("train", config.train.recipe, config.train.args)
    env = {**(args.pop("env", None) or {})}
    output_dir = root / "checkpoints" / mode
    args.update(output_dir=str(output_dir), dataset_path=str(root / "dataset" / mode / "hf"), run_name=f"{name}-{mode}")
    _report_to(config, args, env, group)
    if not args.get("model_name_or_path"):
        raise UserError("train: set model_name_or_path (the student model) in train.recipe or train.args")
    if config.train.accelerate_config:  # read now: a missing or malformed file stops the run before generation
        if not Path(config.train.accelerate_config).is_file():
            raise UserError(f"train.accelerate_config {config.train.accelerate_config}: file not found")
        read_yaml(Path(config.train.accelerate_config))
    return TrainPlan(mode, output_dir, {**args, "env": env} if env else args, config.train.accelerate_config)


def after_sft_plan(config: PipelineConfig, job: str, sft: TrainPlan, root: Path, name: str, group: str) -> TrainPlan:
    """The recipe of training `job` (dpo, grpo) after one mode's SFT: its section's recipe, then its args, then what
    the pipeline sets (the SFT model to start from, the mode's data, where it goes); validated."""
    section = getattr(config, job)
    args = _recipe_args(job, section.recipe, section.args)
    env = {**(args.pop("env", None) or {})}
    model = continued(sft.mode, job)
    output_dir = root / "checkpoints" / model
    if sft.adapter:  # continue the SFT adapter on the student (DPO: a frozen copy of it is the reference)
        args.update(model_name_or_path=sft.student, sft_adapter=str(sft.output_dir), use_peft=True)
    else:  # a full SFT model is the starting point (and, for a fresh adapter or copy, DPO's reference)
        args.update(model_name_or_path=str(sft.output_dir), sft_adapter=None)
    for key in ("training_template", "chat_template_fallback"):  # prompts render as they did in SFT
        if key in sft.args:
            args.setdefault(key, sft.args[key])
    dataset = root / "dataset" / sft.mode
    if job == "dpo":  # the preference pairs format writes from the mode's critique trajectories
        args["dataset_path"] = str(dataset / "preference" / "hf")
    else:  # the SFT dataset's prompts; their principles from the mode's generation (its records may be copied)
        args["dataset_path"] = str(dataset / "hf")
        args.setdefault("generate_config", str(output_dir / GENERATION_FILE))  # written by `_grpo`
        _check_grpo_critic(config, args, output_dir / GENERATION_FILE)
    args.update(output_dir=str(output_dir), run_name=f"{name}-{model}")
    _report_to(config, args, env, group)
    return TrainPlan(model, output_dir, {**args, "env": env} if env else args, config.train.accelerate_config, job=job)


def _check_grpo_critic(config: PipelineConfig, args: dict[str, Any], own_generation: Path) -> None:
    """The GRPO child refuses a critic every process would load again, or one whose server the other processes would
    wait for longer than ddp_timeout (`grpo.check_critic_processes`): say so before generation, not after it. The
    critic is this run's generate section (`own_generation`), unless the GRPO recipe names a critic_config or a
    generate_config of its own."""
    if not config.train.accelerate_config:
        return
    from spri_sft.train.grpo import check_critic_processes, read_generate_config

    processes = int(read_yaml(Path(config.train.accelerate_config)).get("num_processes") or 1)
    critic = config.generate.critic  # the pipeline's own generate_config is this section
    for key in ("critic_config", "generate_config"):  # as the training picks it: critic_config first
        if args.get(key) and Path(args[key]) != own_generation:
            critic = read_generate_config(Path(args[key]), f"grpo {key}").critic
            break
    ddp_timeout = args.get("ddp_timeout", _training_default("ddp_timeout"))
    try:
        check_critic_processes(critic, processes, ddp_timeout)
    except UserError as refused:
        raise UserError(f"grpo with train.accelerate_config {config.train.accelerate_config}: {refused}") from None


def _recipe_origin(job: str, recipe: str | None, overrides: dict[str, Any]) -> str:
    """Where a training section's settings come from, as an error names them: `train (lora.yaml + train.args)`."""
    return f"{job} ({' + '.join(([recipe] if recipe else []) + ([f'{job}.args'] if overrides or not recipe else []))})"


def _recipe_args(job: str, recipe: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """A training section's recipe file (`job`.recipe) with its `args` on top, each one's field names checked
    now as `spri-sft JOB` checks them (`check_recipe_fields`), so a typo stops the run before generation.

    Only the names: building TRL's SFTConfig here would set up accelerate's device state in this process (and
    CUDA on a GPU machine), which the training child needs to itself. The values are checked by TRL's own
    parser in a short child process (`recipe_check`), also before generation."""
    from spri_sft.train import job_module
    from spri_sft.train.job import check_recipe_fields

    args: dict[str, Any] = {}
    if recipe:
        path = Path(recipe)
        if not path.is_file():
            raise UserError(f"{job}.recipe {path}: file not found")
        args = read_yaml(path) or {}  # the one YAML reader: a malformed file is one line naming FILE:LINE
        if not isinstance(args, dict):
            raise UserError(f"{job}.recipe {path}: expected a mapping of `spri-sft {job}` fields")
    parser = job_module(job).make_parser()
    check_recipe_fields(args, parser, _recipe_origin(job, recipe, {}))
    check_recipe_fields(overrides, parser, _recipe_origin(job, None, overrides))
    return _merged(args, overrides)


def _report_to(config: PipelineConfig, args: dict[str, Any], env: dict[str, str], group: str) -> None:
    """The training child's W&B: the pipeline's project and group, or none."""
    if config.wandb.enabled:
        env.update(tracking.group_environment(config.wandb.project, group))
        args["report_to"] = ["wandb"]
    else:
        args["report_to"] = "none"


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` on top of `base`, mappings (env:, model_init_kwargs:) merged key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            value = _merged(merged[key], value)
        merged[key] = value
    return merged


TRAINING_STOP_GRACE_S = 60.0  # how long a stopped trainer may take to exit (its clean-up, W&B's last sync)


def training_stage(plan: TrainPlan, after: Any) -> Stage:
    """The stage of `plan`'s training; `after` names the outputs it trains from (fingerprinted)."""
    # Paths are left out: what they hold is named by `after` (and the output_dir is the stage's own).
    paths = ("output_dir", "dataset_path", "sft_adapter", "run_name", "report_to", "env")
    settings = {k: v for k, v in plan.args.items() if k not in paths}
    for key in ("critic_config", "generate_config"):  # GRPO's critic: a file the recipe names, by its contents
        if settings.get(key):
            # The pipeline's own generate_config is this run's generate section (`_grpo`): what of it shapes the
            # critic's verdicts shapes the records too, so it is in `after` already; its addresses are not results.
            if Path(settings[key]) == plan.output_dir / GENERATION_FILE:
                del settings[key]  # absent, as before it existed: GRPO stages made then stay done
            else:
                settings[key] = file_digest(settings[key])
    if plan.accelerate_config:  # the number of processes changes the effective batch
        settings["accelerate_config"] = read_yaml(Path(plan.accelerate_config))
    return Stage.made_from(f"checkpoints/{plan.mode}", plan.output_dir, {**settings, "after": after})


def _train(plan: TrainPlan, after: Any) -> Stage:
    """Run the training child of `plan` unless done; `after` names the outputs it trains from (fingerprinted)."""
    stage = training_stage(plan, after)
    if _skip(stage, resumable=any(plan.output_dir.glob("checkpoint-*"))):
        return stage
    stage.begin()
    recipe = plan.output_dir / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(plan.args, sort_keys=False))
    command = [sys.executable, "-m", "spri_sft.cli", plan.job, "--config", str(recipe)]
    if plan.accelerate_config:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", plan.accelerate_config,
            "--module", "spri_sft.cli", plan.job, "--config", str(recipe),
        ]  # fmt: skip
    print(f"[spri-sft] checkpoints/{plan.mode}: {' '.join(command[1:])}", flush=True)
    # Bound to this process: a SIGKILLed pipeline leaves no trainer writing checkpoints behind it, and Ctrl-C or
    # SIGTERM of the pipeline stops the trainer and waits for it (a checkpoint it cuts short is skipped on resume).
    returncode = run_bound(command, grace=TRAINING_STOP_GRACE_S)
    if returncode != 0:
        raise UserError(
            f"training of {plan.mode} failed (exit status {returncode}; its output is above). Rerun the same "
            "command to resume from its last complete checkpoint."
        )
    state = json.loads((plan.output_dir / "trainer_state.json").read_text())
    stage.finish(steps=state["global_step"])
    return stage


def _dpo(config: PipelineConfig, plan: TrainPlan, dataset: Stage, sft: Stage) -> Stage | None:
    """DPO on the mode's preference pairs from its SFT model; None (one line why) when format made no training pair."""
    pairs = json.loads((dataset.directory / "summary.json").read_text())["preference"]
    if "train" not in pairs["splits"]:
        reasons = ", ".join(f"{reason} {n}" for reason, n in pairs["no_pair"].items() if n) or "none"
        only_validation = f", {pairs['pairs']} pairs all in the validation split" if pairs["pairs"] else ""
        print(
            f"[spri-sft] checkpoints/{plan.mode}: skipped: no preference pairs to train on ({pairs['records']} records"
            f"{only_validation}; without a pair: {reasons}; see {dataset.directory / 'preference' / 'no_pair.jsonl'})",
            flush=True,
        )
        return None
    if "validation" not in pairs["splits"] and plan.args.get("eval_strategy", "no") != "no":
        # A trainer cannot evaluate on a split that is not there; the pairs decide it, fingerprinted with them.
        print(f"[spri-sft] checkpoints/{plan.mode}: no validation pair: training without evaluation", flush=True)
        plan = dataclasses.replace(plan, args={**plan.args, "eval_strategy": "no", "load_best_model_at_end": False})
    return _train(plan, [dataset.output_id, sft.output_id])


GENERATION_FILE = (
    "generate.yaml"  # this run's generate config of the mode: GRPO's critic and the threshold it accepted at
)


def _grpo(config: PipelineConfig, plan: TrainPlan, dataset: Stage, sft: Stage) -> Stage | None:
    """GRPO from the mode's SFT model on the prompts of its SFT train split that have principles to reward by (the
    training's own selection, `grpo.select_prompts`); None (one line why) when there is none: a mode whose records
    have no principles (direct, self-instruct, ...) or none accepted. What was kept goes to prompts.json either way.

    The critic and threshold are this run's generate section for the mode (generate.yaml beside the training, unless
    the recipe names a generate_config): a finished generation is not run again, so the config.yaml beside its
    records may name another address or devices than this run gives the critic."""
    from spri_sft.train.grpo import GRPOScriptArguments, dropped_words, select_prompts

    after = [dataset.output_id, sft.output_id]
    own_generation = plan.output_dir / GENERATION_FILE
    if Path(plan.args["generate_config"]) == own_generation:
        _write_if_changed(
            own_generation, yaml.safe_dump(to_dict(generation_job(config, split_model(plan.mode)[0])), sort_keys=False)
        )
    fields = {f.name for f in dataclasses.fields(GRPOScriptArguments)}
    script_args = GRPOScriptArguments(**{key: value for key, value in plan.args.items() if key in fields})
    splits = {"train": script_args.dataset_train_split}
    evaluating = plan.args.get("eval_strategy", "no") != "no"
    made = json.loads((dataset.directory / "summary.json").read_text())["splits"]
    if evaluating and script_args.dataset_test_split in made:
        splits["validation"] = script_args.dataset_test_split
    rows, kept, _ = select_prompts(script_args, splits)
    counts = {**kept["train"], "admit_unaccepted_principles": script_args.admit_unaccepted_principles}
    selection = json.dumps(counts, indent=2) + "\n"
    if not rows["train"]:
        earlier = training_stage(plan, after)
        if earlier.state() is not None:
            earlier.is_done()  # a model trained with other settings is refused (what changed), never left as this run's
        _write_if_changed(plan.output_dir / PROMPTS_FILE, selection)
        admit = (
            "" if script_args.admit_unaccepted_principles else "; grpo.args.admit_unaccepted_principles admits those"
        )
        print(
            f"[spri-sft] checkpoints/{plan.mode}: skipped: no prompt to reward by its principles (of the "
            f"{counts['rows']} SFT train rows: {dropped_words(Counter(counts['dropped']))}"
            f"{admit if counts['dropped'].get('principles_not_accepted') else ''})",
            flush=True,
        )
        return None
    if evaluating and not rows.get("validation"):
        # A trainer cannot evaluate without prompts; the dataset decides it, fingerprinted with it.
        print(f"[spri-sft] checkpoints/{plan.mode}: no validation prompt: training without evaluation", flush=True)
        plan = dataclasses.replace(plan, args={**plan.args, "eval_strategy": "no", "load_best_model_at_end": False})
    trained = _train(plan, after)
    _write_if_changed(plan.output_dir / PROMPTS_FILE, selection)
    return trained


def _write_if_changed(path: Path, text: str) -> None:
    """Write `text` to `path` unless it holds it already: a rerun that changes nothing rewrites nothing."""
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


# -- evaluate --------------------------------------------------------------------------------


def _truthfulqa_source(config: PipelineConfig, root: Path) -> dict | None:
    """The questions' file by `spri_sft.truthfulqa_data`'s rule: the given one, else a snapshot of the Hub dataset
    (eval/truthfulqa.jsonl), else (no Hub) the packaged copy (eval/truthfulqa-packaged-v0-mc_task.json).

    One file serves the guard against TruthfulQA prompts in the SFT data and every evaluation, so both use the same
    questions; a run keeps the ones it started with (its snapshot, or the packaged copy once used: a rerun with the
    Hub back must not change the questions its stages were made with).
    """
    from spri_sft import truthfulqa_data

    settings = config.evaluate
    hub = f"{settings.dataset} ({truthfulqa_data.HUB_CONFIG}, validation)"
    snapshot = root / "eval" / "truthfulqa.jsonl"
    packaged = root / "eval" / truthfulqa_data.FILE_NAME
    if not settings.truthfulqa_file and snapshot.is_file():
        return {"file": str(snapshot), "source": hub}
    if not settings.truthfulqa_file and packaged.is_file():
        print(f"[spri-sft] TruthfulQA: {truthfulqa_data.SOURCE} (as before in this run)", flush=True)
        return {"file": str(packaged), "source": truthfulqa_data.SOURCE}
    source = truthfulqa_data.choose_source(
        settings.truthfulqa_file,
        settings.dataset,
        "validation",
        directory=root / "eval",
        setting="evaluate.truthfulqa_file",
    )
    if source.file is not None:
        return {"file": source.file, "source": source.described}
    from spri_sft.evaluate.truthfulqa import load_questions, to_hub_rows

    questions, _ = load_questions(None, source.dataset, source.split)
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    partial = snapshot.with_suffix(".tmp")
    with partial.open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in to_hub_rows(questions))
    os.replace(partial, snapshot)  # a kill mid-write never leaves a short question file to reuse
    return {"file": str(snapshot), "source": source.described}


def _evaluate(
    config: PipelineConfig,
    truthfulqa: dict,
    directory: Path,
    plan: TrainPlan,
    trained: Stage | None,
    name: str,
    group: str,
) -> Stage:
    from spri_sft.evaluate.run import evaluate_truthfulqa

    job = evaluation_job(config, plan, trained, truthfulqa["file"], directory, name, group)
    stage = Stage.made_from(f"eval/{directory.name}", directory, evaluation_settings(config, plan, trained, job))
    if _skip(stage, resumable=False):
        return stage
    stage.begin()
    results = evaluate_truthfulqa(job)
    _release_memory()  # the model is gone; give its memory back before a training child needs it
    stage.finish(mc1=results["mc1"], mc2=results["mc2"], n=results["n"])
    return stage


def evaluation_settings(config: PipelineConfig, plan: TrainPlan, trained: Stage | None, job: EvaluateConfig) -> dict:
    """What decides the scores of `job` (its stage's fingerprint): the questions and how they are scored, and which
    model (by the stage that made it)."""
    scoring = {k: getattr(job, k) for k in ("limit", "dtype", "chat_template", "batch_size")}
    scoring["truthfulqa_file"] = file_digest(job.truthfulqa_file)
    # Fields added later count only when set, so evaluations made before them (with these defaults) stay done.
    scoring |= {k: getattr(job, k) for k in ("add_bos_token", "quantization") if getattr(job, k) != "auto"}
    defaults = EvaluateConfig()
    scoring |= {k: getattr(job, k) for k in SCORING_FIELDS_WHEN_SET if getattr(job, k) != getattr(defaults, k)}
    quantized = _quantized_base(config, plan)
    if quantized:  # scored on the 4-bit base since these fields: QLoRA evaluations made before rescore
        scoring["quantized_base"] = quantized
    if job.model_revision is not None:  # the pinned student; base evaluations made at main before it rescore
        scoring["model_revision"] = job.model_revision
    return {**scoring, "after": trained.output_id if trained is not None else plan.student}


# evaluate: fields the pipeline's section gained with `spri-sft evaluate`'s config that change the scores; counted in
# the stage's fingerprint only when set (num_threads, device and the lm-eval fields do not change TruthfulQA's).
SCORING_FIELDS_WHEN_SET = ("tokenizer", "trust_remote_code", "merge_adapter")


def evaluation_job(
    config: PipelineConfig,
    plan: TrainPlan,
    trained: Stage | None,
    truthfulqa_file: str | None,
    directory: Path,
    name: str,
    group: str,
) -> EvaluateConfig:
    """The `spri-sft evaluate` config scoring one model: the recipe's evaluate: section with the fields the pipeline
    sets (`EVALUATE_SET_BY_PIPELINE`): the model (and adapter), its quantized base, the questions' file, the
    directory and W&B."""
    model, adapter = _scored_model(plan, trained)
    section = {f.name: getattr(config.evaluate, f.name) for f in dataclasses.fields(EvaluateConfig)}
    return EvaluateConfig(**{
        **section,
        "model": model,
        "adapter": adapter,
        # The student at the commit training loads (train recipe's model_revision); an adapter at the one its
        # training recorded (None: evaluate reads it); a fully trained model is a local directory (no revision).
        "model_revision": plan.args.get("model_revision") if trained is None else None,
        "base_quantization": _quantized_base(config, plan) if adapter is None else {},
        "truthfulqa_file": truthfulqa_file,
        "output_dir": str(directory),
        "report_to": "wandb" if config.wandb.enabled else "none",
        "wandb_project": config.wandb.project,
        "wandb_group": group,
        "wandb_run_name": f"{name}-eval-{directory.name}",
    })  # fmt: skip


def _quantized_base(config: PipelineConfig, plan: TrainPlan) -> dict[str, Any]:
    """A QLoRA recipe's quantization ({} otherwise): its adapters are scored on its 4-bit base (their
    effective_config.json says how); its student is scored on that same base, so that Δ is the training's, not the
    quantization's."""
    from spri_sft.evaluate.run import QUANTIZATION_FIELDS

    quantized = {k: plan.args[k] for k in QUANTIZATION_FIELDS if k in plan.args}
    if config.evaluate.quantization == "auto" and (quantized.get("load_in_4bit") or quantized.get("load_in_8bit")):
        return quantized
    return {}


def _scored_model(plan: TrainPlan, trained: Stage | None) -> tuple[str, str | None]:
    """(model, adapter) an evaluation scores: the student before training; after, its adapter or the trained model."""
    if trained is None:
        return plan.student, None
    return (plan.student, str(plan.output_dir)) if plan.adapter else (str(plan.output_dir), None)


def lm_eval_job(config: PipelineConfig, plan: TrainPlan, trained: Stage | None) -> LmEvalJob:
    """The lm-eval call for one model, as `spri-sft evaluate` makes it from the same evaluate config."""
    return LmEvalJob.of_evaluation(evaluation_job(config, plan, trained, None, Path("."), "", ""))


def lm_eval_fingerprint(config: PipelineConfig, plan: TrainPlan, trained: Stage | None) -> str:
    return fingerprint(lm_eval_settings(config, plan, trained))


def lm_eval_settings(config: PipelineConfig, plan: TrainPlan, trained: Stage | None) -> dict[str, Any]:
    """What decides lm-eval's numbers: the tasks and their arguments (local task files by contents), lm-eval's
    version, and which model (by the stage that made it); not the device."""
    job = lm_eval_job(config, plan, trained)
    settings = {**dataclasses.asdict(job), "model": None, "adapter": None, "device": None}
    settings["include_path"] = folder_digest(job.include_path) if job.include_path else None
    settings["lm_eval"] = lm_eval_version()
    settings["after"] = trained.output_id if trained is not None else plan.student
    return settings


def lm_eval_stage(
    config: PipelineConfig, directory: Path, plan: TrainPlan, trained: Stage | None, name: str, group: str
) -> Stage:
    """lm-eval's tasks on the student (`trained` None) or on a mode's adapter, into `directory`/results.json."""
    stage = Stage.made_from(f"eval/{directory.parent.name}/lm_eval", directory, lm_eval_settings(config, plan, trained))
    if _skip(stage, resumable=False):
        return stage
    stage.begin()
    results = run_lm_eval_tasks(lm_eval_job(config, plan, trained), directory)
    _release_memory()
    if config.wandb.enabled:
        log_to_wandb(results, directory, config.wandb.project, group, f"{name}-lm-eval-{directory.parent.name}")
    stage.finish(tasks={task: {s["metric"]: s["value"]} for task, s in results["tasks"].items()})
    return stage


# -- helpers ---------------------------------------------------------------------------------


def _release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _skip(stage: Stage, resumable: bool = True) -> bool:
    if stage.is_done(resumable):
        print(f"[spri-sft] {stage.name}: done in an earlier run, skipped", flush=True)
        return True
    state = stage.state()
    if stage.incremental and state is not None and state.get("fingerprint") != stage.fingerprint:
        print(
            f"[spri-sft] {stage.name}: settings or inputs changed since its last run: adding what this run needs",
            flush=True,
        )
        return False
    how = "starting" if state is None else "resuming" if resumable else "starting over"
    print(f"[spri-sft] {stage.name}: {how}", flush=True)
    return False


def _log_generation(summary: dict, directory: Path, project: str, group: str, run_name: str, mode: str) -> None:
    """A W&B run for one generation: its counts, acceptance, rounds and tokens, histograms, and the records."""
    from spri_sft.pipeline.report import generation_row

    charts = {
        f"generate/{kind}/{stage}": (counts, "value", "records", f"{kind} ({stage})")
        for kind in ("final_score", "rounds_histogram")
        for stage, counts in summary.get(kind, {}).items()
    }
    with tracking.run(project=project, group=group, name=run_name, job_type="generate", config={"mode": mode}) as run:
        run.summarize({f"generate/{key}": value for key, value in generation_row(summary).items() if value is not None})
        run.log(bar_charts=charts)
        run.log_artifact(
            f"records-{mode}",
            "sft-records",
            {name: directory / name for name in ("records.jsonl", "summary.json")},
            metadata={"records": summary["records"]},
        )
