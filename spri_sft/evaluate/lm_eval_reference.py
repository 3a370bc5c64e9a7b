"""Run lm-evaluation-harness itself on the same TruthfulQA data, offline, for comparison.

Used by the tests and `scripts/bench_eval.py`, and useful to anyone who wants to check a number:
lm-eval's own `truthfulqa_mc1.yaml` and `truthfulqa_mc2.yaml` are included unchanged into two
local tasks whose only change is the data (`dataset_path: json`, a local JSON-lines file in the
Hub layout written from our questions). Needs `pip install lm-eval` (not a dependency of spri-sft).

    from spri_sft.evaluate.lm_eval_reference import run_lm_eval
    ref = run_lm_eval("path/to/model", questions, work_dir)   # ref["mc1"][i], ref["mc2"][i], ref["results"]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spri_sft.evaluate.truthfulqa import Question, to_hub_rows

TASKS = {"mc1": "spri_local_truthfulqa_mc1", "mc2": "spri_local_truthfulqa_mc2"}


def write_tasks(questions: list[Question], work_dir: Path) -> Path:
    """A task folder for lm-eval's `include_path`: the data file and the two task YAMLs."""
    import lm_eval

    upstream = Path(lm_eval.__file__).parent / "tasks" / "truthfulqa"
    task_dir = Path(work_dir) / "lm_eval_tasks"
    task_dir.mkdir(parents=True, exist_ok=True)
    data = task_dir / "truthfulqa_mc.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in to_hub_rows(questions)))
    for metric, task in TASKS.items():
        (task_dir / f"{task}.yaml").write_text(
            f"include: {json.dumps(str(upstream / f'truthfulqa_{metric}.yaml'))}\n"
            f"task: {task}\n"
            "tag: []\n"
            "dataset_path: json\n"
            "dataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {json.dumps(str(data))}\n"
        )
    return task_dir


def run_lm_eval(
    model: Any,
    questions: list[Question],
    work_dir: Path,
    adapter: str | None = None,
    chat_template: bool = False,
    batch_size: int | str = 1,
    device: str = "cpu",
    dtype: str = "auto",
    add_bos_token: bool | None = None,
) -> dict[str, Any]:
    """lm-eval's per-question MC1/MC2 values (data order), per-choice log-likelihoods and aggregate results.

    `model` is a model path/Hub id for lm-eval's `hf` model (with `adapter` as its `peft=` and
    `add_bos_token` as its model argument when not None), or an already built `lm_eval` LM object
    (then `adapter`, `batch_size`, `device`, `dtype` and `add_bos_token` are its own).
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    task_dir = write_tasks(questions, Path(work_dir))
    model_args = None
    if isinstance(model, str):
        model_args = {"pretrained": model, "dtype": dtype}
        if adapter:
            model_args["peft"] = adapter
        if add_bos_token is not None:
            model_args["add_bos_token"] = add_bos_token
    out = lm_eval.simple_evaluate(
        model="hf" if isinstance(model, str) else model,
        model_args=model_args,
        tasks=list(TASKS.values()),
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        batch_size=batch_size,
        device=device,
        log_samples=True,
        apply_chat_template=chat_template,
    )
    reference: dict[str, Any] = {"results": {m: out["results"][t] for m, t in TASKS.items()}}
    for metric, task in TASKS.items():
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        reference[metric] = [float(s["acc"]) for s in samples]
        reference[f"{metric}_loglikelihoods"] = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
        reference[f"{metric}_arguments"] = [
            [tuple(a) for a in s["arguments"]] if "arguments" in s else None for s in samples
        ]
    return reference
