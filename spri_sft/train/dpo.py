"""Direct preference optimization on a `spri-sft format` preference dataset: TRL DPOTrainer + PEFT LoRA.

Shaped like TRL's own trl/scripts/dpo.py, as `spri_sft.train.sft` is like its sft.py: the script arguments
(`DPOScriptArguments`, beside TRL's `DPOConfig` and `ModelConfig`), `make_parser`, `build_trainer`, `main`,
`cli`; what it shares with `spri-sft train` is `spri_sft.train.job`'s. A YAML recipe sets everything, flags
override it, an `env:` block sets environment variables.

    # CPU: a fresh LoRA adapter on the base model, the base model as the reference
    spri-sft dpo --config recipes/smollm2-135m-instruct/dpo/lora.yaml
    # after SFT: continue the SFT adapter, the SFT policy as the reference
    spri-sft dpo --config recipes/smollm2-135m-instruct/dpo/lora.yaml \
        --sft_adapter outputs/smollm2-135m-instruct/sft/lora
    # one or several GPUs
    accelerate launch --config_file recipes/accelerate/ddp.yaml scripts/dpo.py \
        --config recipes/smollm2-135m-instruct/dpo/lora.yaml

What it does, top to bottom: check the recipe and flags, train on the CPU in float32 without a GPU,
derive gradient accumulation from `effective_batch_size` and resolve the base model's commit, as
`spri-sft train` does; load the dataset (the `preference/` directory `spri-sft format --preference
true` writes, with or without its `hf/`) and check it has TRL's preference columns (`prompt`, `chosen`,
`rejected`); give the tokenizer the training chat template SFT uses (or, with `sft_adapter`, the one
saved with that adapter), so prompts render as they did in SFT; seed, then load the model; then either
a fresh LoRA adapter from the `lora_*` fields, with the base model (the adapter disabled) as the
reference, or, with `sft_adapter`, that adapter loaded trainable and continued, its shape its own,
with a frozen copy of it (TRL's "ref" adapter) as the reference: the usual DPO setup, where the
reference is the SFT model. Train on the DPO loss (`beta`, `loss_type`), evaluating on the validation
split; resume from the last checkpoint; save the adapter (only the trained one: the reference copy is
the SFT adapter itself), tokenizer, generation config, model card, and optionally the merged model.
The saved adapter applies to the base model like any `spri-sft train` adapter, so `spri-sft evaluate
--adapter` scores it the same way.

Not supported: full fine-tuning with a pretrained adapter; `truthfulqa_before` with `sft_adapter` (it
would score the base model, not the SFT one: score the SFT adapter with `spri-sft evaluate`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from spri_sft.errors import UserError
from spri_sft.train import job

logger = logging.getLogger(__name__)

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


@dataclass
class DPOScriptArguments(job.JobScriptArguments):
    """DPO's own script arguments beside every job's (`job.JobScriptArguments`); the rest is TRL's DPOConfig and
    ModelConfig."""

    sft_adapter: str | None = field(
        default=None,
        metadata={
            "help": "A `spri-sft train` LoRA adapter to continue (needs use_peft; its own r/alpha/targets, "
            "the lora_* fields unused); a frozen copy of it is the reference. Unset: a fresh adapter on "
            "the base model, which is the reference. Not with truthfulqa_before (it would score the base model)."
        },
    )


def make_parser():
    from trl import DPOConfig, ModelConfig

    return job.job_parser((DPOScriptArguments, DPOConfig, ModelConfig), prog="spri-sft dpo")


def build_trainer(script_args: DPOScriptArguments, training_args, model_args):
    """Checks, data, tokenizer with its training template, model (and adapter), DPOTrainer.

    The trainer carries `truthfulqa` (its TruthfulQACallback, or None), `reference` (in words), `effective_batch`
    and `revisions` (as `spri-sft train`'s)."""
    from spri_sft import tracking

    job.check_model_args(model_args)
    effective_batch = job.use_effective_batch(script_args.effective_batch_size, training_args)  # before the trainer
    adapter_dir = job.check_sft_adapter(script_args.sft_adapter, model_args, script_args.truthfulqa_before)
    truthfulqa = job.truthfulqa_callback(script_args, training_args, model_args)  # its file read before any loading
    tracking.use_offline_without_key(training_args.report_to)

    from trl import DPOTrainer, get_peft_config

    from spri_sft.format.template import use_training_template
    from spri_sft.train.progress import use_training_progress

    model_path = job.model_location(model_args)
    model_revision = job.resolve_revision(model_path, model_args.model_revision)  # the commit both loads read
    revision = model_revision["commit"] or model_args.model_revision

    # Data
    dataset, source = job.load_training_dataset(script_args)
    train_dataset = job.dataset_split(dataset, source, script_args.dataset_train_split, "dataset_train_split")
    _check_preference_columns(train_dataset, source)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        eval_dataset = job.dataset_split(
            dataset, source, script_args.dataset_test_split, "dataset_test_split", 'or eval_strategy to "no"'
        )

    # Tokenizer: the SFT adapter's own (saved with its training template), else the base model's given the
    # training template SFT would give it, so a prompt renders here as it did in SFT.
    tokenizer, revisions = job.load_tokenizer(model_path, model_revision, adapter_dir, training_args.trust_remote_code)
    # A template that cannot be marked is kept as it is: DPO needs no assistant mask, only the rendering.
    use_training_template(
        tokenizer, fallback=script_args.chat_template_fallback, template=script_args.training_template
    )

    model = job.load_model(model_path, model_args, training_args, tokenizer, revision)
    if adapter_dir is not None:
        model = job.continue_adapter(model, adapter_dir)
        peft_config = None  # DPOTrainer adds the frozen "ref" copy of a pretrained adapter itself
        reference = f"the SFT adapter {adapter_dir} (a frozen copy)"
    else:
        peft_config = get_peft_config(model_args)
        reference = "the base model (adapter disabled)" if peft_config is not None else "a copy of the base model"

    trainer = DPOTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[truthfulqa] if truthfulqa is not None else None,
    )
    trainer.truthfulqa = truthfulqa
    trainer.reference = reference
    trainer.effective_batch = effective_batch
    trainer.revisions = revisions
    use_training_progress(trainer)
    return trainer


def _check_preference_columns(train_dataset, source: str) -> None:
    missing = [name for name in PREFERENCE_COLUMNS if name not in train_dataset.column_names]
    if missing:
        raise UserError(
            f"{source}: the training split has no {', '.join(missing)} column(s) (columns: "
            f"{', '.join(train_dataset.column_names)}); give the preference/ directory that "
            "`spri-sft format --preference true` writes beside the SFT dataset"
        )


def main(script_args: DPOScriptArguments, training_args, model_args, recipe: Path | None = None) -> dict:
    """Train, save, and return the final metrics (`recipe`: the file the settings came from). Tests call this."""
    trainer = build_trainer(script_args, training_args, model_args)
    adapter = job.continued_adapter_words(trainer.model, script_args.sft_adapter)
    summary = job.training_summary(trainer, model_args, recipe, command="dpo", unit="pairs", adapter=adapter)
    summary += f"\n[spri-sft]   DPO beta={training_args.beta}, loss {'+'.join(training_args.loss_type)}; reference: {trainer.reference}"
    metrics = job.train_and_save(trainer, script_args, training_args, model_args, summary, reference=trainer.reference)
    job.drop_reference_copy(trainer.model, training_args.output_dir)
    return metrics


def cli(argv: list[str] | None = None) -> int:
    """`spri-sft dpo`: as `spri-sft train`, with the DPO fields."""
    return job.run_job(argv, "spri-sft dpo", make_parser, main)
