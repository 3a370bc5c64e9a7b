"""Supervised fine-tuning on a `spri-sft format` dataset: TRL SFTTrainer + PEFT LoRA/QLoRA.

Shaped like TRL's own trl/scripts/sft.py: the script arguments (`SFTScriptArguments`, beside TRL's
`SFTConfig` and `ModelConfig`), `make_parser`, `build_trainer`, `main`, and `cli`, the command. What it
shares with `spri-sft dpo` (the command line, the recipe checks, model and data loading, saving) is
`spri_sft.train.job`'s. A YAML recipe sets everything, any field can be overridden on the command line,
and an `env:` block in the recipe sets environment variables (e.g. WANDB_PROJECT).

    # CPU, the embedded default
    spri-sft train --config recipes/smollm2-135m-instruct/sft/lora.yaml
    # one or several GPUs
    accelerate launch --config_file recipes/accelerate/ddp.yaml scripts/sft.py \
        --config recipes/llama-3.1-8b-instruct/sft/lora.yaml

What it does, top to bottom: check the recipe (YAML, field names; one line naming the file or
flag) before TRL builds anything, and train on the CPU in float32 when there is no GPU and the
recipe does not choose (TRL's bf16 default needs one); derive gradient accumulation from
`effective_batch_size` and the number of processes; resolve the model and the commit its
`model_revision` points to (model and tokenizer load that commit; it is written in
effective_config.json and the model card, for a rerun to pin); refuse 8-bit without CUDA and QLoRA
without bitsandbytes before loading anything; load the dataset (a format output directory with or without
its `hf/`; a missing split is named with those that exist); give the tokenizer a training chat template
(`spri_sft.format.template`) whose assistant turns (end-of-turn token included) are marked for the loss,
and check it on real rows; tokenize, counting the rows over max_length (`spri_sft.train.overlong`); seed,
then load the model (so `seed` fixes every initial weight, the LoRA adapter's included); train with loss
on assistant tokens only, evaluating on the validation split and keeping the best checkpoint by validation
loss; resume from the last checkpoint when one exists; save the adapter, tokenizer, generation config (EOS
set so the model stops) and model card, and optionally a merged model. W&B (`spri_sft.tracking`) runs
offline when no API key is set; TruthfulQA before and after training is evaluation's `TruthfulQACallback`,
added to the trainer here.

Not supported: streaming datasets; resuming a run whose recipe changed the model or LoRA shape.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from spri_sft.errors import UserError
from spri_sft.train import job, overlong

logger = logging.getLogger(__name__)


@dataclass
class SFTScriptArguments(job.JobScriptArguments):
    """SFT's own script arguments beside every job's (`job.JobScriptArguments`); the rest is TRL's SFTConfig and
    ModelConfig."""

    check_template: bool = field(
        default=True, metadata={"help": "Check on real rows that assistant tokens and EOS are trained before training."}
    )
    overlong: str = field(
        default="drop",
        metadata={
            "help": "Rows longer than max_length: 'drop' them, or 'keep' them cut to max_length (a row cut "
            "before its end loses its end-of-turn token, teaching the model not to stop). Counted either way "
            "in <output_dir>/lengths.json. 'drop' is this project's default, not the paper's (it names none).",
            "choices": ["drop", "keep"],
        },
    )


def make_parser():
    from trl import ModelConfig, SFTConfig

    return job.job_parser((SFTScriptArguments, SFTConfig, ModelConfig), prog="spri-sft train")


def build_trainer(script_args: SFTScriptArguments, training_args, model_args):
    """Everything up to training: checks, data, tokenizer with its training template, model, trainer.

    The trainer carries `truthfulqa` (its TruthfulQACallback, or None), `assistant_masks` (how the loss
    finds assistant tokens), `effective_batch` and `revisions` (what `job.use_effective_batch` and
    `job.resolve_revision` found)."""
    from spri_sft import tracking

    job.check_model_args(model_args)
    effective_batch = job.use_effective_batch(script_args.effective_batch_size, training_args)  # before the trainer
    if training_args.packing and training_args.packing_strategy == "wrapped":
        raise UserError(
            "packing_strategy 'wrapped' cuts examples mid-sequence and lets packed examples attend to each other; "
            "use 'bfd' (the default), which keeps them apart"
        )
    truthfulqa = job.truthfulqa_callback(script_args, training_args, model_args)  # its file read before any loading
    tracking.use_offline_without_key(training_args.report_to)

    from transformers import AutoTokenizer
    from trl import SFTTrainer, get_peft_config

    from spri_sft.format.template import check_template, encode_with_template, use_eos_token, use_training_template
    from spri_sft.train.progress import use_training_progress

    model_path = job.model_location(model_args)
    # One commit for model and tokenizer (two loads of `main` could straddle a push), recorded for a rerun to pin.
    resolved = job.resolve_revision(model_path, model_args.model_revision)
    revisions = {"model": resolved, "tokenizer": resolved}
    revision = resolved["commit"] or model_args.model_revision

    # Data
    dataset, source = job.load_training_dataset(script_args)
    train_dataset = job.dataset_split(dataset, source, script_args.dataset_train_split, "dataset_train_split")
    if "messages" not in train_dataset.column_names:
        raise UserError(
            f"the training split has no `messages` column (columns: {', '.join(train_dataset.column_names)})"
        )
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = job.dataset_split(
            dataset, source, script_args.dataset_test_split, "dataset_test_split", 'or eval_strategy to "no"'
        )

    # Tokenizer and the training chat template
    tokenizer = AutoTokenizer.from_pretrained(
        model_path, revision=revision, trust_remote_code=training_args.trust_remote_code
    )
    # SFTTrainer would make `eos_token` (Gemma-it's <end_of_turn>) the EOS when built; the template check must see it.
    use_eos_token(tokenizer, training_args.eos_token)
    # The model's own template (Mistral's [INST], say) when no marked one exists, assistant turns found by prefixes.
    encode = use_training_template(
        tokenizer, fallback=script_args.chat_template_fallback, template=script_args.training_template
    )
    unmarked_full_sequence = encode is not None and not training_args.assistant_only_loss
    if unmarked_full_sequence:
        encode = None  # every token is trained: the model's own template serves as is
    if script_args.check_template and not unmarked_full_sequence:
        check_template(tokenizer, train_dataset.select(range(min(32, len(train_dataset))))["messages"], encode=encode)
    if encode is not None:
        logger.info("the chat template has no generation markers: assistant turns are masked by prefix rendering")
        masks = "prefix rendering"
    else:
        masks = "chat template markers" if training_args.assistant_only_loss else "none: all tokens"
        encode = functools.partial(encode_with_template, tokenizer, training_args.assistant_only_loss)
    # Rows are tokenized here, with their assistant masks, so that rows over max_length are counted (and dropped
    # or kept, `overlong`) before TRL truncates them; TRL turns `assistant_masks` into labels by itself and skips
    # its own tokenization (its assistant_only_loss flag would want the raw `messages`).
    train_dataset = _encode_rows(train_dataset, encode)
    eval_dataset = _encode_rows(eval_dataset, encode) if eval_dataset is not None else None
    training_args.assistant_only_loss = False
    splits = {"train": train_dataset, "validation": eval_dataset}
    lengths = overlong.overlong_rows(splits, tokenizer.eos_token_id, training_args, script_args.overlong)
    if script_args.overlong == "drop":
        train_dataset, eval_dataset = (
            overlong.drop_overlong(d, training_args.max_length) for d in (train_dataset, eval_dataset)
        )

    model = job.load_model(model_path, model_args, training_args, tokenizer, revision)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[truthfulqa] if truthfulqa is not None else None,
    )
    trainer.truthfulqa = truthfulqa
    use_training_progress(trainer)
    # How the loss finds assistant tokens, for the saved effective config (assistant_only_loss reads false there:
    # the masks come with the data).
    trainer.assistant_masks = masks
    trainer.lengths = lengths
    trainer.effective_batch = effective_batch
    trainer.revisions = revisions
    return trainer


def _encode_rows(dataset, encode):
    """`input_ids` + `assistant_masks` per row: a processed dataset TRL trains on as is (truncation, packing)."""

    def tokenize(row):
        return encode(row["messages"])

    return dataset.map(tokenize, remove_columns=dataset.column_names, desc="Tokenizing with assistant masks")


def main(script_args: SFTScriptArguments, training_args, model_args, recipe: Path | None = None) -> dict:
    """Train, save, and return the final metrics (`recipe`: the file the settings came from, to name it).
    Tests call this directly."""
    trainer = build_trainer(script_args, training_args, model_args)  # TruthfulQA before training, if asked
    summary = job.training_summary(trainer, model_args, recipe)
    if trainer.lengths["max_length"] is not None:
        summary += "\n" + overlong.lengths_line(trainer.lengths)
    if trainer.accelerator.is_main_process:
        Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(training_args.output_dir) / "lengths.json").write_text(json.dumps(trainer.lengths, indent=2) + "\n")
    return job.train_and_save(
        trainer,
        script_args,
        training_args,
        model_args,
        summary,
        assistant_masks=trainer.assistant_masks,
        lengths=trainer.lengths,
    )


def cli(argv: list[str] | None = None) -> int:
    """`spri-sft train`: the recipe and the flags are checked (YAML, field names) before TRL parses them."""
    return job.run_job(argv, "spri-sft train", make_parser, main)
