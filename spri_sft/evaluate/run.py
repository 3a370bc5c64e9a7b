"""`evaluate_truthfulqa(config)`: load the model (and adapter), score TruthfulQA MC1/MC2, write and log.

Top to bottom: read the questions (a file, else the Hub, else the packaged copy: `spri_sft.truthfulqa_data`) and
hash them; load the tokenizer and model, with
a PEFT adapter on top when one is given (as lm-eval's `peft=`; merged into the loaded weights in
float32/float64 unless `merge_adapter` is false; a QLoRA adapter on the base quantized as its
training's effective_config.json says, unmerged, in the dtype it was saved in: the model training
scored); run the prompt prefix all questions share once;
score each question's choices (the union of its MC1 and MC2 choices, each scored once) packed
beside its prompt, several questions per pass (`scoring.ChoiceScorer`); compute
lm-eval's per-question MC1 and MC2 values and their means and standard errors; write
`results.json`, `per_question.jsonl` and `config.yaml` in `output_dir`; log to W&B when asked.

Output, in `output_dir`:
- `results.json`: `mc1`, `mc1_stderr`, `mc2`, `mc2_stderr`, `n`, `mode` (plain / chat_template),
  `add_bos_token` (whether the scored prompts start with the BOS token: the setting's, or a chat
  template's own), `add_bos_token_setting` (auto / true / false), `model`, `model_revision` (the one loaded: asked for, or
  the commit an adapter's training recorded), `adapter`,
  `adapter_merged` (scored merged into the weights), `tokenizer`, `dtype`, `quantization` (the
  scored base's bitsandbytes settings, null when unquantized), `device`, `questions_scored_alone`
  (one pass per choice: longer than the model's maximum length or its attention window),
  `data_source`, `data_sha256`, `limit`, `task_versions` (lm-eval's), `wall_seconds`,
  `questions_per_second`;
- `per_question.jsonl`: one line per question in data order: `index`, `question`, `mc1_acc`,
  `mc1_pred`, `mc1_gold`, `mc2_acc`, and per metric the choices, labels and summed log-likelihoods;
- `config.yaml`: the effective configuration;
- `lm_eval/results.json`: with `lm_eval_tasks`, lm-eval's scores of the same model (`run_evaluation`, which
  `spri-sft evaluate` runs; `spri_sft.evaluate.lm_eval_tasks` says what it keeps).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from spri_sft.errors import UserError
from spri_sft.evaluate.config import EvaluateConfig
from spri_sft.evaluate.training_record import base_revision, training_config
from spri_sft.processes import writes_output_dir

logger = logging.getLogger(__name__)


@writes_output_dir
def run_evaluation(config: EvaluateConfig) -> dict[str, Any]:
    """`spri-sft evaluate`: TruthfulQA MC1/MC2, then lm-eval's `lm_eval_tasks` on the same model into
    `output_dir`/lm_eval/results.json (its scores also under "lm_eval" in the returned results). The tasks are
    checked first (lm-eval installed, their names, its arguments), before any model loads."""
    from spri_sft.evaluate.lm_eval_tasks import OUTPUT_SUBDIR, LmEvalJob, check_job, log_to_wandb, run_lm_eval_tasks

    job = LmEvalJob.of_evaluation(config) if config.lm_eval_tasks else None
    if job is not None:
        check_job(job)
    results = evaluate_truthfulqa(config)
    if job is None:
        return results
    directory = Path(config.output_dir) / OUTPUT_SUBDIR
    lm_eval = run_lm_eval_tasks(job, directory)
    if config.report_to == "wandb":
        name = f"{config.wandb_run_name}-lm-eval" if config.wandb_run_name else None
        log_to_wandb(lm_eval, directory, config.wandb_project, config.wandb_group, name)
    return {**results, "lm_eval": {task: {s["metric"]: s["value"]} for task, s in lm_eval["tasks"].items()}}


@writes_output_dir  # two scorings into one output_dir would overwrite each other's results
def evaluate_truthfulqa(config: EvaluateConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Score TruthfulQA MC1/MC2, write results.json and per_question.jsonl, and return the results.

    `model`/`tokenizer` may be given already loaded (e.g. the model at the end of training); then
    `config.model` and `config.adapter` only name them in the results.
    """
    import torch
    from tqdm.auto import tqdm

    from spri_sft.config import check_ranges, dump_yaml
    from spri_sft.evaluate.scoring import ChoiceScorer
    from spri_sft.evaluate.truthfulqa import TASK_VERSIONS, build_context, load_questions, mc1_acc, mc2_acc, mean_stderr
    from spri_sft.truthfulqa_data import choose_source

    check_ranges(config, where="evaluate")  # a config built in code (the train entry, the pipeline) too
    if config.num_threads:
        torch.set_num_threads(config.num_threads)

    source = choose_source(config.truthfulqa_file, config.dataset, config.dataset_split, directory=config.output_dir,
                           setting="truthfulqa_file")  # fmt: skip
    questions, data_sha256 = load_questions(source.file, source.dataset, source.split)
    if config.limit is not None:
        questions = questions[: config.limit]
    adapter_merged = False
    model_loaded_here = model is None
    if model is None:
        model, tokenizer = load_model(config)
        adapter_merged = bool(config.adapter) and not hasattr(model, "peft_config")
    elif tokenizer is None:
        raise UserError("evaluate_truthfulqa: a model passed in needs its tokenizer too")
    was_training = model.training
    model.eval()
    add_bos_token = None if config.add_bos_token == "auto" else config.add_bos_token
    scorer = ChoiceScorer(model, tokenizer, batch_size=config.batch_size, add_bos_token=add_bos_token)
    mode = "chat_template" if config.chat_template else "plain"
    contexts = [build_context(q.question, tokenizer, config.chat_template) for q in questions]
    start = time.perf_counter()
    shared = scorer.share_prefix([context for context, _ in contexts])
    starts_with_bos = scorer.starts_with_bos(contexts[0][0])  # every prompt starts alike: preamble or template
    logger.info(
        "TruthfulQA MC1/MC2 (%s prompt, %s, add_bos_token %s): %d questions, %d prompt tokens shared",
        mode, "BOS first" if starts_with_bos else "no BOS", config.add_bos_token, len(questions), shared,
    )  # fmt: skip

    # Each question's choices: the union of its MC1 and MC2 choices, each scored once.
    choices = [list(dict.fromkeys(q.mc1_choices + q.mc2_choices)) for q in questions]
    items = [(context, [delimiter + c for c in cs]) for (context, delimiter), cs in zip(contexts, choices)]
    with tqdm(total=len(questions), desc="TruthfulQA MC1/MC2", unit="q") as progress:
        scores = scorer.score_many(items, on_scored=progress.update)

    rows = []
    for index, (q, cs, lls) in enumerate(zip(questions, choices, scores)):
        by_choice = dict(zip(cs, lls))
        mc1_lls = [by_choice[c] for c in q.mc1_choices]
        mc2_lls = [by_choice[c] for c in q.mc2_choices]
        acc1, pred, gold = mc1_acc(mc1_lls, q.mc1_labels)
        rows.append(
            {
                "index": index,
                "question": q.question,
                "mc1_acc": acc1,
                "mc1_pred": pred,
                "mc1_gold": gold,
                "mc2_acc": mc2_acc(mc2_lls, q.mc2_labels),
                "mc1": {"choices": q.mc1_choices, "labels": q.mc1_labels, "loglikelihoods": mc1_lls},
                "mc2": {"choices": q.mc2_choices, "labels": q.mc2_labels, "loglikelihoods": mc2_lls},
            }
        )
    wall = time.perf_counter() - start
    model.train(was_training)
    if scorer.scored_alone:
        logger.info(
            "%d of %d questions scored one pass per choice: longer than the model's maximum length (%d) or its "
            "attention window (%s)", scorer.scored_alone, len(questions), scorer.max_length, scorer.window,
        )  # fmt: skip

    mc1 = [r["mc1_acc"] for r in rows]
    mc2 = [r["mc2_acc"] for r in rows]
    results = {
        "mc1": sum(mc1) / len(mc1),
        "mc1_stderr": mean_stderr(mc1),
        "mc2": sum(mc2) / len(mc2),
        "mc2_stderr": mean_stderr(mc2),
        "n": len(rows),
        "mode": mode,
        "add_bos_token": starts_with_bos,
        "add_bos_token_setting": config.add_bos_token,
        "model": config.model,
        "model_revision": base_revision(config) if model_loaded_here else config.model_revision,
        "adapter": config.adapter,
        "adapter_merged": adapter_merged,
        "tokenizer": config.tokenizer or config.model,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "quantization": quantization_of(model),
        "device": str(next(model.parameters()).device),
        "questions_scored_alone": scorer.scored_alone,
        "data_source": source.file or f"{source.dataset}:multiple_choice:{source.split}",
        "data_sha256": data_sha256,
        "limit": config.limit,
        "task_versions": TASK_VERSIONS,
        "wall_seconds": round(wall, 3),
        "questions_per_second": round(len(rows) / wall, 3) if wall else None,
    }

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    with open(out / "per_question.jsonl", "w") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    dump_yaml(config, out / "config.yaml")
    logger.info(
        "TruthfulQA (%s, n=%d): MC1 %s, MC2 %s (%.1f q/s) → %s",
        mode, len(rows), _pm(results["mc1"], results["mc1_stderr"]), _pm(results["mc2"], results["mc2_stderr"]),
        results["questions_per_second"] or 0.0, out / "results.json",
    )  # fmt: skip
    if config.report_to == "wandb":
        log_to_wandb(config, results, rows, out)
    return results


def _pm(value: float, stderr: float | None) -> str:
    return f"{value:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")


def load_model(config: EvaluateConfig) -> tuple[Any, Any]:
    """Tokenizer and model as lm-eval's HFLM loads them (`pretrained=`, `peft=`, `dtype=`, `tokenizer=`); an adapter
    trained on a quantized base (`trained_quantization`) on that base, quantized the same way, on `device`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spri_sft.models import resolve_adapter, resolve_model

    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r}: this machine has no CUDA; use --device cpu")
    if config.adapter:
        resolve_adapter(config.adapter)  # before its effective_config.json is read, and before the base loads
    revision = base_revision(config)
    model_path = resolve_model(config.model, revision)
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model(config.tokenizer, setting="tokenizer") if config.tokenizer else model_path,
        revision=None if config.tokenizer else revision,
        trust_remote_code=config.trust_remote_code,
    )
    load: dict[str, Any] = {"dtype": "auto" if config.dtype == "auto" else getattr(torch, config.dtype)}
    load["revision"] = revision
    if config.adapter:
        trained = trained_quantization(config.adapter)
    elif config.base_quantization.get("load_in_4bit") or config.base_quantization.get("load_in_8bit"):
        fields = {k: v for k, v in config.base_quantization.items() if k in QUANTIZATION_FIELDS}
        trained = TrainedQuantization(fields, "base_quantization")
    else:
        trained = None
    if trained is not None and config.quantization == "none":
        logger.info("scoring %s unquantized (quantization: none), trained on %s", config.adapter, trained.described)
    elif trained is not None:
        # The revision stays: the quantized base is the same commit the tokenizer was loaded at.
        load = {**trained.load_kwargs(config, device), "revision": revision}
        logger.info("scoring %s on the base it was trained on: %s", config.adapter or config.model, trained.described)
    quantized = "quantization_config" in load
    model = AutoModelForCausalLM.from_pretrained(model_path, trust_remote_code=config.trust_remote_code, **load)
    if config.adapter:
        from peft import PeftModel

        if model.config.vocab_size != len(tokenizer):
            # As lm-eval: an adapter trained with added tokens needs the embeddings resized first.
            model.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(model, config.adapter)
        if quantized:
            as_saved(model, config.adapter)
        elif config.merge_adapter:  # (merged into 4-bit weights, B·A would be rounded to 4 bits)
            model = merge_adapter(model)
    return (model if quantized else model.to(device)).eval(), tokenizer


# The ModelConfig (TRL) fields that decide how a QLoRA base is loaded: trl.get_quantization_config reads them.
QUANTIZATION_FIELDS = ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "use_bnb_nested_quant",
                        "bnb_4bit_quant_storage", "dtype")  # fmt: skip


@dataclasses.dataclass
class TrainedQuantization:
    """How an adapter's base was quantized in training: TRL ModelConfig fields, from `source`."""

    fields: dict[str, Any]
    source: Path | str  # the effective_config.json it was read from, or "base_quantization"

    @property
    def described(self) -> str:
        f = self.fields
        kind = f"4-bit {f.get('bnb_4bit_quant_type', 'nf4')}" if f.get("load_in_4bit") else "8-bit"
        nested = ", nested quantization" if f.get("load_in_4bit") and f.get("use_bnb_nested_quant") else ""
        return f"a {kind} base (dtype {f.get('dtype') or 'auto'}{nested}; {self.source})"

    def load_kwargs(self, config: EvaluateConfig, device: str) -> dict[str, Any]:
        """from_pretrained's quantization_config (TRL's, from the same fields), dtype and device_map, as training's."""
        import torch
        from trl import ModelConfig, get_quantization_config

        what = f"adapter {config.adapter} was trained on" if config.adapter else f"{config.model} is scored as"
        trained_dtype = self.fields.get("dtype") or "auto"
        if config.dtype != "auto" and config.dtype != trained_dtype:
            raise UserError(
                f"{what} {self.described}: dtype {config.dtype} would score another "
                f"model; leave dtype auto (or set {trained_dtype}), or set quantization: none to score it unquantized"
            )
        if self.fields.get("load_in_8bit") and not device.startswith("cuda"):
            raise UserError(f"{what} {self.described}: 8-bit needs a CUDA device")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UserError(
                f"{what} {self.described}: scoring it needs bitsandbytes "
                "(pip install bitsandbytes), or set quantization: none to score it unquantized"
            ) from None
        quantization = get_quantization_config(ModelConfig(**self.fields))
        dtype = trained_dtype if trained_dtype == "auto" else getattr(torch, trained_dtype)
        return {"quantization_config": quantization, "dtype": dtype, "device_map": {"": device}}


def trained_quantization(adapter: str) -> TrainedQuantization | None:
    """The quantization an adapter was trained with, from training's effective_config.json ("ModelConfig"); None when
    there is none or it says unquantized."""
    found = training_config(adapter)
    if found is None:
        return None
    path, saved = found
    model_config = saved.get("ModelConfig") or {}
    if not isinstance(model_config, dict):
        raise UserError(f"{path}: not training's effective_config.json (ModelConfig is not a mapping)")
    if not (model_config.get("load_in_4bit") or model_config.get("load_in_8bit")):
        return None
    return TrainedQuantization({k: model_config[k] for k in QUANTIZATION_FIELDS if k in model_config}, path)


def as_saved(model: Any, adapter: str) -> None:
    """The adapter's weights back in the dtype its file holds them in, as training computed with them.

    TRL's SFTTrainer casts a QLoRA adapter to bfloat16 (the QLoRA paper's recipe) and saves it so, while PEFT's
    loading upcasts it to float32: the LoRA branch would then compute in another precision than in training (on the
    tiny Gemma-2 fixture, log-likelihoods moved by up to 1.4e-4 relative).
    """
    import torch

    path = Path(adapter) / "adapter_model.safetensors"
    if not path.is_file():
        return
    from safetensors import safe_open

    dtypes = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}
    with safe_open(str(path), "pt") as saved:
        stored = {key: dtypes.get(saved.get_slice(key).get_dtype()) for key in saved.keys()}
    name = f".{model.active_adapter}."
    for parameter_name, parameter in model.named_parameters():
        dtype = stored.get(parameter_name.replace(name, "."))  # the file's keys leave out the adapter's name
        if dtype is not None and parameter.dtype != dtype:
            parameter.data = parameter.data.to(dtype)


def quantization_of(model: Any) -> dict[str, Any] | None:
    """The bitsandbytes settings a loaded (PEFT-wrapped) model's weights were quantized with; None when unquantized."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    quantization = getattr(getattr(inner, "config", None), "quantization_config", None)
    if quantization is None:
        return None
    settings = quantization if isinstance(quantization, dict) else quantization.to_dict()
    keys = ("quant_method", "load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant",
            "bnb_4bit_compute_dtype", "bnb_4bit_quant_storage")  # fmt: skip
    return {k: settings[k] if isinstance(settings[k], (bool, str)) else str(settings[k]) for k in keys if k in settings}


def merge_adapter(model: Any) -> Any:
    """The base model with its LoRA adapter merged into the weights (this model's own copy), where exact enough.

    An unmerged LoRA layer computes `W x + B (A x)` on every forward pass (SmolLM2-135M's 817
    questions took 299 s with the adapter against 237 s without, before packing). Merged, it computes `(W + B A) x`, equal up to float
    rounding of the sum: in float32 (and float64) that is far inside the tolerance lm-eval's own
    batching moves scores by (tests/test_evaluate.py checks it). In bfloat16/float16 the merged
    weights round `B A` to the weights' precision, so such a model stays unmerged, as does an
    adapter PEFT cannot merge.
    """
    import torch

    dtype = next(model.parameters()).dtype
    if dtype not in (torch.float32, torch.float64) or not callable(getattr(model.base_model, "merge_and_unload", None)):
        return model  # half precision, or a prompt-learning adapter (no weights to merge into)
    try:
        return model.merge_and_unload()
    except (AttributeError, NotImplementedError, ValueError) as err:
        logger.info("scoring the adapter unmerged: PEFT cannot merge it (%s)", err)
        return model


def log_to_wandb(config: EvaluateConfig, results: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> None:
    """Summary metrics, a per-question table and results.json as an artifact, on the open run or a new one."""
    from spri_sft import tracking

    with tracking.run(
        project=config.wandb_project,
        group=config.wandb_group,
        name=config.wandb_run_name,
        job_type="evaluate",
        config={"evaluate": dataclasses.asdict(config)},
        fallback_dir=out,  # a pipeline sets WANDB_DIR, keeping all its runs in one wandb/
        join_open=True,  # the training's run, when scored at the end of training
    ) as run:
        run.summarize(
            {
                "truthfulqa_mc1/acc": results["mc1"],
                "truthfulqa_mc1/acc_stderr": results["mc1_stderr"],
                "truthfulqa_mc2/acc": results["mc2"],
                "truthfulqa_mc2/acc_stderr": results["mc2_stderr"],
                "truthfulqa/n": results["n"],
                "truthfulqa/mode": results["mode"],
            }
        )
        columns = ["index", "question", "mc1_acc", "mc2_acc", "mc1_predicted", "mc1_gold"]
        table = [
            [r["index"], r["question"], r["mc1_acc"], r["mc2_acc"], r["mc1"]["choices"][r["mc1_pred"]],
             r["mc1"]["choices"][r["mc1_gold"]]]
            for r in rows
        ]  # fmt: skip
        run.log(tables={"truthfulqa/per_question": (columns, table)})
        run.log_artifact(
            f"truthfulqa-{run.id}",
            "evaluation",
            {name: out / name for name in ("results.json", "per_question.jsonl")},
            metadata={k: results[k] for k in ("mc1", "mc2", "n", "mode", "data_sha256")},
        )
