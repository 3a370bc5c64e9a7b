"""lm-evaluation-harness tasks on a model and its adapter: lm-eval runs them, this module keeps its numbers.

The SPRI paper also scores its students on MUSR, GPQA, BBH, MMLU-Pro and HellaSwag (App. I,
"no alignment tax"). Those scores are lm-eval's own: `run_lm_eval_tasks` calls
`lm_eval.simple_evaluate` with lm-eval's `hf` model (`pretrained=`, and `peft=` for a LoRA
adapter, `dtype=`), the tasks by their lm-eval names (`leaderboard_musr`, `leaderboard_gpqa`,
`leaderboard_bbh`, `leaderboard_mmlu_pro`, `hellaswag`, or any other, including a group), the
batch size and device given, and any further `simple_evaluate` argument (`num_fewshot`, `limit`,
`apply_chat_template`, ...) passed through unchanged. `include_path` adds a folder of local task
YAMLs, as lm-eval's `--include_path` (`include_defaults: false` leaves lm-eval's own tasks out).

Of lm-eval's output it keeps, in `results.json`:
- `tasks`: per task named, its main metric (the first of the task's or group's metric list that
  lm-eval reported, unfiltered when there is such a value), its value and standard error, and all
  of that task's metrics as lm-eval names them (`acc,none`, `acc_stderr,none`, ...);
- lm-eval's `results` (every task and subtask), `versions`, `n-shot`, `n-samples` and
  `higher_is_better` as they are, its `config` block, and the lm-eval version.

lm-eval is an optional dependency (`pip install 'spri-sft[lm-eval]'`); without it a run that asks
for these tasks stops with a one-line error, before anything else runs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from spri_sft.errors import UserError
from spri_sft.evaluate.config import EvaluateConfig
from spri_sft.evaluate.training_record import base_revision

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
OUTPUT_SUBDIR = "lm_eval"  # beside TruthfulQA's results: <evaluate output_dir>/lm_eval/results.json
# simple_evaluate's arguments this module sets from the job itself, so extra_args may not.
OWN_ARGUMENTS = ("model", "tasks", "task_manager", "log_samples")


@dataclasses.dataclass
class LmEvalJob:
    """One `simple_evaluate` call: which model (and adapter), which tasks, how."""

    model: str  # a Hub id or local directory, lm-eval's `pretrained=`
    adapter: str | None  # a PEFT adapter directory, lm-eval's `peft=`
    tasks: list[str]
    include_path: str | None = None  # a folder of local task YAMLs; its tasks win over lm-eval's of the same name
    include_defaults: bool = True  # false: the tasks of include_path alone
    batch_size: int | str = 1  # requests per forward pass, or "auto"
    device: str = "auto"  # auto = cuda when available, else cpu
    dtype: str = "auto"
    extra_args: dict[str, Any] = dataclasses.field(default_factory=dict)  # more simple_evaluate arguments

    @classmethod
    def of_evaluation(cls, config: EvaluateConfig) -> LmEvalJob:
        """The lm-eval call of an evaluation: its tasks, model and adapter, dtype, batch size, device and chat template,
        then lm_eval_args (whose batch_size and device win). A `tokenizer` or `trust_remote_code` set for TruthfulQA,
        and the base's revision as TruthfulQA loads it (`base_revision`: `model_revision`, else the commit an
        adapter's training recorded) as lm-eval's `revision`, reach lm-eval's model_args too (under lm_eval_args'
        own), only when set: the stages before them keep their fingerprints."""
        extra = {"apply_chat_template": config.chat_template, **config.lm_eval_args}
        loading = {"tokenizer": config.tokenizer} if config.tokenizer else {}
        revision = base_revision(config)
        if revision:
            loading["revision"] = revision
        if config.trust_remote_code:
            loading["trust_remote_code"] = True
        if loading:
            extra["model_args"] = {**loading, **(extra.get("model_args") or {})}
        return cls(
            model=config.model,
            adapter=config.adapter,
            tasks=list(config.lm_eval_tasks),
            include_path=config.lm_eval_include_path,
            include_defaults=config.lm_eval_include_defaults,
            batch_size=extra.pop("batch_size", config.batch_size),
            device=extra.pop("device", config.device),
            dtype=config.dtype,
            extra_args=extra,
        )


def require_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise UserError(
            "evaluate.lm_eval_tasks needs lm-evaluation-harness, which is not installed: "
            "pip install 'spri-sft[lm-eval]' (or pip install lm-eval)"
        ) from None
    return lm_eval


def lm_eval_version() -> str:
    return require_lm_eval().__version__


def check_job(job: LmEvalJob) -> None:
    """Refuse, before any model runs, what lm-eval would refuse late: no lm-eval, unknown task names, bad arguments."""
    lm_eval = require_lm_eval()
    if not job.tasks:
        raise UserError("evaluate.lm_eval_tasks: name at least one lm-eval task (e.g. [hellaswag])")
    if job.include_path and not Path(job.include_path).is_dir():
        raise UserError(f"evaluate.lm_eval_include_path {job.include_path}: not a folder")
    if not job.include_defaults and not job.include_path:
        raise UserError("evaluate.lm_eval_include_defaults: false needs lm_eval_include_path (a folder of task YAMLs)")
    taken = sorted(set(job.extra_args) & set(OWN_ARGUMENTS))
    if taken:
        raise UserError(f"evaluate.lm_eval_args: {', '.join(taken)} are set from the recipe itself; remove them")
    import inspect

    accepted = set(inspect.signature(lm_eval.simple_evaluate).parameters)
    unknown = sorted(set(job.extra_args) - accepted)
    if unknown:
        raise UserError(f"evaluate.lm_eval_args: {', '.join(unknown)} are not arguments of lm_eval.simple_evaluate")
    known = set(task_manager(job).all_tasks)
    missing = [task for task in job.tasks if task not in known]
    if missing:
        where = " or ".join(
            (["lm-eval's tasks"] if job.include_defaults else []) + ([job.include_path] if job.include_path else [])
        )
        raise UserError(f"evaluate.lm_eval_tasks: {', '.join(missing)} not found among {where} (`lm-eval ls tasks`)")


def model_args(job: LmEvalJob) -> dict[str, Any]:
    """lm-eval's `hf` model arguments: the model, its adapter as `peft=`, the dtype, then extra_args' model_args."""
    args: dict[str, Any] = {"pretrained": job.model, "dtype": job.dtype}
    if job.adapter:
        args["peft"] = job.adapter
    return {**args, **(job.extra_args.get("model_args") or {})}


def task_manager(job: LmEvalJob) -> Any:
    """lm-eval's task index, `include_path` after its own tasks so that a local task of the same name wins (as
    lm-eval's command line builds it), with the model's arguments as the tasks' metadata.

    Indexing lm-eval's ~15,000 task files takes about a minute on two busy cores, so one index serves
    every model of a process: the metadata leaves out the adapter (`peft`), which no task reads, and
    the base model and its adapters share one. `TaskManager.load` builds new task objects each time.
    """
    metadata = {key: value for key, value in model_args(job).items() if key != "peft"}
    return _task_manager(job.include_path, job.include_defaults, json.dumps(metadata, sort_keys=True, default=str))


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None, include_defaults: bool, metadata: str) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults, metadata=json.loads(metadata))


def simple_evaluate_arguments(job: LmEvalJob) -> dict[str, Any]:
    """Every argument of the `lm_eval.simple_evaluate` call but the task manager."""
    device = job.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    extra = {key: value for key, value in job.extra_args.items() if key != "model_args"}
    return {
        "model": "hf",
        "model_args": model_args(job),
        "tasks": list(job.tasks),
        "batch_size": job.batch_size,
        "device": device,
        "log_samples": False,  # per-sample outputs of a whole benchmark: lm-eval's own --log_samples is for that
        **extra,
    }


def run_lm_eval_tasks(job: LmEvalJob, output_dir: Path) -> dict[str, Any]:
    """Run the tasks with lm-eval, write `output_dir/results.json` and return what it holds."""
    lm_eval = require_lm_eval()
    arguments = simple_evaluate_arguments(job)
    start = time.perf_counter()
    out = lm_eval.simple_evaluate(**arguments, task_manager=task_manager(job))
    results = extract_results(out, job.tasks)
    results.update(
        model=job.model,
        adapter=job.adapter,
        include_path=job.include_path,
        simple_evaluate=arguments,
        lm_eval_version=lm_eval_version(),
        wall_seconds=round(time.perf_counter() - start, 3),
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / RESULTS_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=2, default=str) + "\n")
    temporary.replace(path)
    for task, summary in results["tasks"].items():
        if summary["metric"] is not None:
            logger.info("lm-eval %s: %s %s", task, summary["metric"], _pm(summary["value"], summary["stderr"]))
    return results


def extract_results(out: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    """Of `simple_evaluate`'s output: each named task's main metric and all its metrics, and lm-eval's tables."""
    summaries = {}
    for task in tasks:
        metrics = {key: value for key, value in out["results"].get(task, {}).items() if key != "alias"}
        declared = list(out.get("higher_is_better", {}).get(task, {}))
        main = main_metric(metrics, declared)
        if main is None:  # a group lm-eval gives no aggregate score: its subtasks' scores are in `results`
            logger.warning("lm-eval reported no score for %s itself; its subtasks' scores are in results.json", task)
        metric, filter_name = main or (None, None)
        summaries[task] = {
            "metric": metric,
            "filter": filter_name,
            "value": metrics[f"{metric},{filter_name}"] if main else None,
            "stderr": _number(metrics.get(f"{metric}_stderr,{filter_name}")) if main else None,
            "higher_is_better": out.get("higher_is_better", {}).get(task, {}).get(metric) if main else None,
            "version": out.get("versions", {}).get(task),
            "n-shot": out.get("n-shot", {}).get(task),
            "metrics": metrics,
        }
    return {
        "tasks": summaries,
        **{key: out.get(key, {}) for key in ("results", "versions", "n-shot", "n-samples", "higher_is_better")},
        "config": out.get("config", {}),
    }


def main_metric(metrics: dict[str, Any], declared: list[str]) -> tuple[str, str] | None:
    """(metric, filter) of a task's main number: the first declared metric lm-eval reported, its `none` filter
    when it has one; without declared metrics, the first value reported; None when it reported none."""
    reported: dict[str, list[str]] = {}
    for key in metrics:
        name, _, filter_name = key.partition(",")
        if not name.endswith("_stderr") and filter_name:
            reported.setdefault(name, []).append(filter_name)
    for name in [*[m for m in declared if m in reported], *reported]:
        filters = reported[name]
        return name, "none" if "none" in filters else filters[0]
    return None


def log_to_wandb(
    results: dict[str, Any], output_dir: Path, project: str | None, group: str | None, run_name: str | None
) -> None:
    """A run of the group: every metric of the named tasks in its summary (`lm_eval/<task>/<metric>`), task versions
    and shots in its config, results.json as an artifact."""
    from spri_sft import tracking

    summary = {}
    for task, scores in results["tasks"].items():
        for key, value in scores["metrics"].items():
            metric, _, filter_name = key.partition(",")
            # `acc,none` as lm_eval/<task>/acc, a filtered one with its filter; not lm-eval's `name`, `sample_len`
            if filter_name and _number(value) is not None:
                summary[f"lm_eval/{task}/{metric}" + ("" if filter_name == "none" else f"/{filter_name}")] = value
    with tracking.run(
        project=project,
        group=group,
        name=run_name,
        job_type="evaluate",
        config={
            "lm_eval": {key: results[key] for key in ("model", "adapter", "versions", "n-shot", "lm_eval_version")}
        },
        fallback_dir=output_dir,
    ) as run:
        run.summarize(summary)
        run.log_artifact(
            f"lm-eval-{run.id}",
            "evaluation",
            {RESULTS_FILE: output_dir / RESULTS_FILE},
            metadata={"versions": results["versions"], "n-shot": results["n-shot"]},
        )


def _number(value: Any) -> float | None:
    """A metric's value as a float; lm-eval writes "N/A" for a standard error it did not compute."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _pm(value: float, stderr: float | None) -> str:
    return f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")
