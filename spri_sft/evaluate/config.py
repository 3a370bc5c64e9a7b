"""The configuration of `spri-sft evaluate`: one dataclass, YAML + dotted command-line overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class EvaluateConfig:
    """Score a model on TruthfulQA MC1/MC2 exactly as lm-evaluation-harness does, only faster.

    The prompt, tokenization and metrics are lm-eval's `truthfulqa_mc1` (v2.0) and
    `truthfulqa_mc2` (v3.0); `spri_sft.evaluate.truthfulqa` documents the rules. Each question's
    prompt runs through the model once, its choices packed beside it (`spri_sft.evaluate.scoring`).

    Fields, by purpose:
    - model: `model` (a Hub id, a local or merged model directory), `adapter` (a PEFT/LoRA adapter
      loaded on top of `model`; `merge_adapter` merges it into the loaded weights first), `tokenizer`, `dtype`,
      `device`, `trust_remote_code`, `quantization` (auto: a QLoRA adapter is scored on the 4-bit/8-bit base
      it was trained on, as its effective_config.json records it);
    - data: `truthfulqa_file` (v0 `mc_task.json`, the packaged `mc_task.json.gz`, or the Hub layout as
      .json/.jsonl/.parquet), else `dataset` from the Hub (with `dataset_split`), else, offline, the packaged
      copy of upstream's mc_task.json (`spri_sft.truthfulqa_data`; one line says which); `limit` takes the
      first questions, as lm-eval's `--limit`;
    - prompt: `chat_template` (the question wrapped in the tokenizer's chat template, as lm-eval's
      `--apply_chat_template`); the mode is recorded in results.json, so scores of the two modes are
      never mixed; `add_bos_token` (lm-eval's HFLM model argument; results.json records the setting
      and whether a BOS was written);
    - speed: `batch_size` (choices per forward pass), `num_threads`;
    - lm-evaluation-harness: `lm_eval_tasks` run by lm-eval itself on the same model after TruthfulQA
      (`lm_eval_args`, `lm_eval_include_path`, `lm_eval_include_defaults`; `spri_sft.evaluate.lm_eval_tasks`);
    - output: `output_dir` (results.json, per_question.jsonl, config.yaml; lm_eval/results.json);
    - W&B: `report_to`, `wandb_project`, `wandb_group`, `wandb_run_name`.

    Defaults that differ from lm-eval's: none for scoring (`dtype: auto` is lm-eval's default, the
    checkpoint's own dtype; use `float32` on CPU for a bfloat16 checkpoint; `add_bos_token: auto` is
    lm-eval's default since 0.4.9.2, PR #3347). lm-eval 0.4.2-0.4.9.1 (0.4.5-0.4.7 when the SPRI paper
    was scored, Feb 2025) added no BOS for causal models except Gemma's (every "gemma" model type since
    0.4.4), which always got one: `add_bos_token: false` (Llama, Mistral, Qwen) or `true` (Gemma)
    reproduces it for the plain prompt.
    """

    # Model arguments
    model: str = field(
        default="HuggingFaceTB/SmolLM2-135M-Instruct",
        metadata={
            "help": "Hub id or local directory of the (base or merged) model; the embedded default works offline."
        },
    )
    adapter: str | None = field(
        default=None, metadata={"help": "PEFT (LoRA) adapter directory or Hub id, loaded on top of `model`."}
    )
    tokenizer: str | None = field(
        default=None,
        metadata={"help": "Tokenizer to use instead of the model's (lm-eval also takes the model's by default)."},
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16", "float64"] = field(
        default="auto",
        metadata={
            "help": "Model dtype; auto = the checkpoint's (lm-eval's and transformers' default, as in train; "
            "generation's auto is bfloat16 on CUDA, float32 elsewhere)."
        },
    )
    device: str = field(
        default="auto", metadata={"help": "cpu, cuda, cuda:1, mps … ; auto = cuda when available, else cpu."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub repository."})
    model_revision: str | None = field(
        default=None,
        metadata={
            "help": "Branch, tag or commit of `model` (and its tokenizer). Unset with an adapter: the commit its "
            "training recorded (effective_config.json `revisions`), so the adapter is scored on the base it was "
            "trained on; else the Hub's main."
        },
    )
    quantization: Literal["auto", "none"] = field(
        default="auto",
        metadata={
            "help": "auto: an adapter whose effective_config.json (training's, in the adapter folder or above its "
            "checkpoint-N) says load_in_4bit/load_in_8bit is scored on the base loaded as it was trained, with the "
            "same BitsAndBytesConfig and dtype, its weights in the dtype saved (TRL trains them in bfloat16), unmerged "
            "(a dtype set here other than the training's is refused); none: the base unquantized in `dtype` (not the "
            "model the adapter was trained on). results.json records which."
        },
    )
    base_quantization: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Without an adapter: load the model quantized as a QLoRA training loads it, given as TRL "
            "ModelConfig fields (load_in_4bit, bnb_4bit_quant_type, use_bnb_nested_quant, dtype), so a QLoRA run's "
            "'before' score is of the 4-bit base its adapter is scored on (the pipeline sets it from the train recipe)."
        },
    )
    merge_adapter: bool = field(
        default=True,
        metadata={
            "help": "Score a LoRA adapter merged into the loaded base weights (faster; float32/float64 only, where it "
            "equals the unmerged scores within float32 rounding); false scores the PeftModel as lm-eval's peft= does."
        },
    )

    # Data arguments
    truthfulqa_file: str | None = field(
        default=None,
        metadata={
            "help": "TruthfulQA multiple-choice file: upstream data/v0/mc_task.json (also gzipped, as the packaged "
            "mc_task.json.gz), or the Hub `multiple_choice` layout as .parquet/.json/.jsonl; not the generation "
            "task's TruthfulQA.csv (no MC targets). Takes precedence over `dataset`."
        },
    )
    dataset: str = field(
        default="truthfulqa/truthful_qa",
        metadata={
            "help": "Hub dataset id read (config multiple_choice) when no truthfulqa_file is given; without the Hub "
            "(HF_HUB_OFFLINE, or unreachable) the default's packaged copy is scored instead, another id is refused."
        },
    )
    dataset_split: str = field(default="validation", metadata={"help": "Split of `dataset` (lm-eval uses validation)."})
    limit: int | None = field(
        default=None, metadata={"help": "Score only the first N questions (lm-eval's --limit).", "ge": 1}
    )

    # Prompt
    chat_template: bool = field(
        default=False,
        metadata={"help": "Wrap the prompt in the tokenizer's chat template (lm-eval's --apply_chat_template)."},
    )

    add_bos_token: Literal["auto"] | bool = field(
        default="auto",
        metadata={
            "help": "BOS in front of each prompt, as lm-eval's HFLM add_bos_token: auto = the tokenizer's default "
            "(lm-eval >= 0.4.9.2); true/false force it. lm-eval 0.4.4-0.4.9.1 scored causal models with false, "
            "Gemma with true. A prompt already starting with the BOS text (a chat template's) never gets a second one."
        },
    )

    # Speed
    batch_size: int = field(
        default=32,
        metadata={"help": "Choices scored per forward pass, whole questions (a question has 2-20).", "ge": 1},
    )
    num_threads: int | None = field(
        default=None, metadata={"help": "torch CPU threads; null leaves torch's default.", "ge": 1}
    )

    # lm-evaluation-harness, after TruthfulQA
    lm_eval_tasks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "lm-evaluation-harness tasks or groups run by lm-eval itself on the same model (and adapter) after "
            "TruthfulQA (the paper's: leaderboard_musr, leaderboard_gpqa, leaderboard_bbh, leaderboard_mmlu_pro, "
            "hellaswag) into <output_dir>/lm_eval/results.json (in a pipeline: eval/<model>/lm_eval/ and the "
            "report). Needs pip install 'spri-sft[lm-eval]'."
        },
    )
    lm_eval_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "More lm_eval.simple_evaluate arguments, passed through (num_fewshot, limit, apply_chat_template, "
            "fewshot_as_multiturn, model_args: {...}); batch_size and device here override the two above."
        },
    )
    lm_eval_include_path: str | None = field(
        default=None,
        metadata={
            "help": "A folder of local lm-eval task YAMLs (lm-eval's --include_path); they win over lm-eval's own."
        },
    )
    lm_eval_include_defaults: bool = field(
        default=True,
        metadata={
            "help": "false: only the tasks of lm_eval_include_path (skips indexing lm-eval's ~15,000 task files, about "
            "a minute on two busy cores)."
        },
    )

    # Output
    output_dir: str = field(
        default="outputs/evaluate", metadata={"help": "Where results.json, per_question.jsonl and config.yaml go."}
    )

    # W&B
    report_to: Literal["wandb", "none"] = field(
        default="none",
        metadata={
            "help": "wandb: log truthfulqa_mc1/acc and truthfulqa_mc2/acc to the open wandb.run's summary, or to a new "
            "run; offline when no API key is set."
        },
    )
    wandb_project: str | None = field(
        default=None, metadata={"help": "Project of a new W&B run; default $WANDB_PROJECT, else spri-sft."}
    )
    wandb_group: str | None = field(
        default=None, metadata={"help": "Group of a new W&B run; default $WANDB_RUN_GROUP."}
    )
    wandb_run_name: str | None = field(default=None, metadata={"help": "Name of a new W&B run."})
