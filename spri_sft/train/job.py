"""What every training job shares (`spri-sft train`, `dpo`, `grpo`): its command line, its setup, its run.

A job is TRL's shape (trl/scripts/sft.py): script arguments plus TRL's own config dataclasses, parsed by
`TrlParser` (a YAML recipe via --config, flags over it, an `env:` block), a `build_trainer` and a `main`.
The entries (`spri_sft.train.sft`, `spri_sft.train.dpo`, `spri_sft.train.grpo`) hold what differs; this module
holds the rest:

* the command line (`run_job`): the recipe read and its field names checked (`check_recipe_fields`, with the
  closest known name) before TRL builds anything, the CPU in float32 without a GPU, one job per output_dir;
* the script arguments every job takes (`JobScriptArguments`);
* setup: the batch an optimizer step takes (`use_effective_batch`), the model's commit (`resolve_revision`),
  the model (`load_model`), the dataset (`load_training_dataset`, `dataset_split`), the TruthfulQA callback;
* continuing an SFT adapter (dpo and grpo's `sft_adapter`): `check_sft_adapter`, `load_tokenizer`,
  `continue_adapter`, `continued_adapter_words`, `drop_reference_copy`;
* the run (`train_and_save`): effective config, summary, resume, train, evaluate, save, card, metrics.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spri_sft.errors import UserError

logger = logging.getLogger(__name__)

EFFECTIVE_BATCH_HELP = (
    "Rows per optimizer step, whatever the number of processes: gradient_accumulation_steps is derived as "
    "effective_batch_size / (per_device_train_batch_size x processes), and a remainder is refused. Unset (None): "
    "gradient_accumulation_steps as given, so the batch grows with the GPU count."
)


@dataclass
class JobScriptArguments:
    """What every job trains on and does around training; each job's own dataclass adds its own fields. The rest
    is TRL's config (SFTConfig, DPOConfig, GRPOConfig) and ModelConfig."""

    dataset_path: str | None = field(
        default=None,
        metadata={
            "help": "A dataset `spri-sft format` wrote, or any datasets.save_to_disk one. train: the format output "
            "directory (itself or its hf/); dpo: its preference/ directory (`--preference true`), itself or its hf/; "
            "grpo: the format output directory (its train split's prompts; its config.yaml names their records)."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Or a Hugging Face dataset id: train needs a `messages` column, dpo prompt/chosen/rejected ones "
            "(grpo takes none: its prompts' principles are in the records)."
        },
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Training split."})
    dataset_test_split: str = field(
        default="validation", metadata={"help": "Validation split (eval loss, best checkpoint)."}
    )
    chat_template_fallback: str | None = field(
        default=None,
        metadata={
            "help": "Template for a tokenizer without a chat template (base models): 'alpaca', or unset to refuse."
        },
    )
    training_template: str = field(
        default="model",
        metadata={
            "help": "'model': the tokenizer's own chat template (chat_template_fallback when it has none); "
            "'alpaca': the Alpaca format even when it ships one (the paper's setup for base students). "
            "DPO after SFT: use the SFT recipe's value."
        },
    )
    effective_batch_size: int | None = field(default=None, metadata={"help": EFFECTIVE_BATCH_HELP})
    merge_adapter: bool = field(
        default=False, metadata={"help": "Also save the LoRA adapter merged into the base model."}
    )
    log_dataset_artifact: bool = field(
        default=True, metadata={"help": "Log the training dataset (with its card) to W&B."}
    )
    truthfulqa_file: str | None = field(
        default=None,
        metadata={
            "help": "After training, score the trained model on this TruthfulQA file (mc_task.json or the Hub "
            "parquet layout); the results land in <output_dir>/truthfulqa and the training's W&B run."
        },
    )
    truthfulqa_limit: int | None = field(
        default=None, metadata={"help": "Score only the first N TruthfulQA questions."}
    )
    truthfulqa_before: bool = field(
        default=False,
        metadata={
            "help": "Also score the untouched model (adapter disabled) before training, into "
            "<output_dir>/truthfulqa_before and the run's before/truthfulqa_mc{1,2}/acc; a resumed run reuses it."
        },
    )


# -- the command line --------------------------------------------------------------------------


def job_parser(dataclass_types: tuple, prog: str):
    """TRL's parser (YAML via --config, flags override it, an `env:` block) whose errors are one line."""
    from trl import TrlParser

    class Parser(TrlParser):
        def error(self, message):  # argparse would print its whole usage before the one line that matters
            raise UserError(message)

    return Parser(dataclass_types, prog=prog)


def field_names(parser) -> set[str]:
    """Every field a recipe of `parser`'s job may set (its script arguments, TRL's config and ModelConfig)."""
    return {action.dest for action in parser._actions if action.dest != "help"}


def unknown_field(name: str, known: Iterable[str], where: str, command: str) -> UserError:
    """The one-line error for a field `name` that `command` does not know, set by `where` (a file or a flag),
    with the closest known name when one is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" ({command} --help lists every field)"
    return UserError(f"{where}: unknown field '{name}'{hint}")


def check_recipe_fields(recipe: dict, parser, where: str) -> None:
    """Every key of `recipe` (its `env:` block aside) is a field of `parser`'s job; `where` names the recipe.

    `spri-sft train`/`dpo` check their --config file with it, and the pipeline its train and dpo recipes."""
    known = field_names(parser)
    for key in recipe:
        if key != "env" and key not in known:
            raise unknown_field(str(key), known, where, parser.prog)


def run_job(argv: list[str] | None, command: str, make_parser, main, check_given=None) -> int:
    """Check the recipe and flags (YAML, field names), train on the CPU without a GPU, parse, run `main`.

    `check_given(given, script_args, training_args)`, a job's own check of what the recipe and flags set (`given`:
    their field names, which the parsed values cannot tell from defaults), runs after parsing, before `main`."""
    import warnings

    argv = list(sys.argv[1:] if argv is None else argv)
    recipe_path, recipe = _read_recipe(argv, command) if "-h" not in argv and "--help" not in argv else (None, {})
    parser = make_parser()  # imports TRL (seconds): after the recipe's own checks
    if "-h" in argv or "--help" in argv:
        parser.parse_args_and_config(args=["--help"])  # prints every field and exits
    given = _fields_given(parser, recipe_path, recipe, argv)
    argv += _cpu_without_a_gpu(given)
    # transformers 5 renamed gradient checkpointing; TRL's SFTConfig default and its trainer still use the old
    # names, which would warn on every run although the user set neither.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    if "gradient_checkpointing" not in given:
        warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(args=argv)
    except ValueError as err:  # invalid values: TRL and transformers say which
        raise UserError(f"{recipe_path or command}: {err}") from None
    if check_given is not None:
        check_given(given, script_args, training_args)
    from spri_sft.processes import hold_output_dir
    from spri_sft.train.progress import only_stage_bars

    # One training per output_dir: a second would resume from, and save over, the first one's checkpoints.
    with hold_output_dir(training_args.output_dir), only_stage_bars():  # no bars for loading, tokenizing, saving
        main(script_args, training_args, model_args, recipe=recipe_path)
    return 0


def _read_recipe(argv: list[str], command: str = "spri-sft train") -> tuple[Path | None, dict]:
    """The recipe named by `--config` as a mapping; a missing, malformed or empty file is one line."""
    from spri_sft.config import read_yaml

    if "--config" not in argv:
        return None, {}
    index = argv.index("--config")
    if index + 1 >= len(argv):
        raise UserError("--config needs a value (the recipe YAML file)")
    path = Path(argv[index + 1])
    recipe = read_yaml(path)
    if recipe is None:
        raise UserError(f"{path}: the recipe is empty (expected `{command}` fields, e.g. model_name_or_path)")
    if not isinstance(recipe, dict):
        raise UserError(f"{path}: expected a mapping of `{command}` fields, got a YAML {type(recipe).__name__}")
    return path, recipe


def _fields_given(parser, recipe_path: Path | None, recipe: dict, argv: list[str]) -> set[str]:
    """The names the recipe and the flags set, each one a known field (before TRL builds, and checks, anything)."""
    check_recipe_fields(recipe, parser, str(recipe_path))
    known = field_names(parser)
    field_of_option = {option: action.dest for action in parser._actions for option in action.option_strings}
    flags = set()
    for arg in argv:
        if arg.startswith("--") and arg != "--config":
            flag = arg.split("=", 1)[0]
            if flag not in field_of_option:
                raise unknown_field(flag[2:], known, flag, parser.prog)
            flags.add(field_of_option[flag])
    return set(recipe) | flags


def _cpu_without_a_gpu(given: set[str]) -> list[str]:
    """Flags that train on the CPU in float32 when there is no accelerator and the user chose no device or
    precision (TRL's SFTConfig defaults to bf16, which transformers refuses without a GPU unless use_cpu is set)."""
    if has_accelerator() or "use_cpu" in given:
        return []
    flags = ["--use_cpu", "true"]
    if not given & {"bf16", "fp16"}:
        flags += ["--bf16", "false"]
    print(f"[spri-sft] no GPU: training on the CPU ({' '.join(flags)})")
    return flags


def has_accelerator() -> bool:
    """A GPU (CUDA, ROCm, MPS, XPU) that transformers would train on."""
    import torch

    accelerator = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator is not None:
        return accelerator.is_available()
    return torch.cuda.is_available() or torch.backends.mps.is_available()


# -- setup -------------------------------------------------------------------------------------


def use_effective_batch(effective_batch_size: int | None, training_args) -> dict:
    """Set gradient_accumulation_steps so that an optimizer step takes `effective_batch_size` rows on any number of
    processes (None: as the recipe gives it); returns how the batch is made, for the summary line and the saved
    effective config. Called before the trainer is built: its accelerator reads gradient_accumulation_steps once."""
    per_device = training_args.per_device_train_batch_size
    processes = training_args.world_size  # accelerate/torchrun ranks, known before the trainer exists
    gpus = max(1, training_args.n_gpu)  # several: one process drives them all (torch DataParallel)
    per_step = per_device * gpus * processes
    if effective_batch_size is not None:
        if effective_batch_size < 1:
            raise UserError(f"effective_batch_size must be a positive number of rows (got {effective_batch_size})")
        made = _batch_words(per_device, None, processes, gpus)
        if effective_batch_size % per_step:
            fits = [n for n in range(per_device - 1, 0, -1) if effective_batch_size % (n * gpus * processes) == 0]
            hint = f"per_device_train_batch_size to {' or '.join(map(str, fits[:3]))}, or " if fits else ""
            raise UserError(
                f"effective_batch_size {effective_batch_size} is not a multiple of {made} = {per_step} rows; set "
                f"{hint}effective_batch_size to a multiple of {per_step}"
            )
        accumulation = effective_batch_size // per_step
        given = training_args.gradient_accumulation_steps
        if given not in (1, accumulation):  # 1, TrainingArguments' default, is taken as unset
            raise UserError(
                f"gradient_accumulation_steps {given} contradicts effective_batch_size {effective_batch_size}, which "
                f"makes it {accumulation} ({made}); set one of them (--effective_batch_size None turns it off)"
            )
        training_args.gradient_accumulation_steps = accumulation
    accumulation = training_args.gradient_accumulation_steps
    return {
        "size": per_step * accumulation, "per_device": per_device, "accumulation": accumulation,
        "processes": processes, "gpus_per_process": gpus, "from_effective_batch_size": effective_batch_size is not None,
    }  # fmt: skip


def _batch_words(per_device: int, accumulation: int | None, processes: int, gpus: int = 1) -> str:
    words = [f"{per_device} per device"]
    if gpus > 1:
        words.append(f"{gpus} GPUs in one process (DataParallel)")
    if accumulation is not None:
        words.append(f"{accumulation} accumulation")
    words.append(f"{processes} process" + ("es" if processes != 1 else ""))
    return " × ".join(words)


def batch_line(batch: dict) -> str:
    """One line on the rows an optimizer step takes and how that number is made (printed with every training)."""
    words = _batch_words(batch["per_device"], batch["accumulation"], batch["processes"], batch["gpus_per_process"])
    how = (
        "gradient_accumulation_steps derived from effective_batch_size"
        if batch["from_effective_batch_size"]
        else "effective_batch_size unset: it changes with the number of processes"
    )
    return f"[spri-sft]   effective batch {batch['size']} = {words} ({how})"


def resolve_revision(name_or_path: str, revision: str | None) -> dict:
    """Which commit a load of `name_or_path` at `revision` reads: {"name_or_path", "revision", "commit"}, and
    "local_directory" for a directory.

    A Hub id is resolved once, through huggingface_hub (the Hub, or its local cache offline), to the commit `revision`
    points to now; transformers 5 keeps no commit on what it loads (`config._commit_hash` and the tokenizer's are
    gone). A local directory has no commit (None), unless it is a snapshot of the Hub cache (`.../snapshots/<commit>`,
    where `resolve_model` finds the embedded default). A Hub id that cannot be resolved (gated, unreachable, unknown)
    gets commit None, and from_pretrained then says why it cannot load it."""
    path = Path(name_or_path)
    if path.is_dir():
        snapshot = re.search(r"/snapshots/([0-9a-f]{40})(/|$)", path.resolve().as_posix())
        return {"name_or_path": name_or_path, "revision": None, "commit": snapshot.group(1) if snapshot else None,
                "local_directory": str(path.resolve())}  # fmt: skip
    from huggingface_hub import hf_hub_download

    try:
        config = hf_hub_download(name_or_path, "config.json", revision=revision)
    except Exception as err:  # noqa: BLE001 - from_pretrained reports it better, or loads what it can
        logger.info("could not resolve revision %s of %s (%s)", revision, name_or_path, type(err).__name__)
        return {"name_or_path": name_or_path, "revision": revision, "commit": None}
    snapshot = re.search(r"/snapshots/([0-9a-f]{40})/", Path(config).as_posix())
    return {"name_or_path": name_or_path, "revision": revision, "commit": snapshot.group(1) if snapshot else None}


def revision_words(resolved: dict) -> str:
    """`resolve_revision`'s answer in words, for the model card."""
    name = f"`{resolved['name_or_path']}`"
    if resolved.get("local_directory") is not None:
        if resolved["commit"]:
            return f"{name} (a Hub cache snapshot: commit `{resolved['commit']}`)"
        return f"{name} (a local directory: no Hub commit to record, only its path)"
    if resolved["commit"] is None:
        return f"{name}, revision `{resolved['revision']}` (its commit could not be resolved)"
    asked = f", revision `{resolved['revision']}`" if resolved["revision"] not in (None, resolved["commit"]) else ""
    return f"{name}, commit `{resolved['commit']}`{asked}"


def check_model_args(model_args) -> None:
    """A model is named; 8-bit without CUDA, and QLoRA without bitsandbytes, are refused before anything is loaded."""
    import torch

    if model_args.model_name_or_path is None:
        raise UserError("model_name_or_path is required (a Hub id or a local model directory)")
    if model_args.load_in_8bit and not torch.cuda.is_available():
        raise UserError(
            "load_in_8bit needs a CUDA GPU; this machine has none. On the CPU, bitsandbytes quantizes 4-bit NF4 "
            "(load_in_4bit: true), or use the LoRA recipe."
        )
    if model_args.load_in_4bit or model_args.load_in_8bit:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise UserError(
                'QLoRA (load_in_4bit) needs bitsandbytes: pip install -e ".[qlora]" (or pip install bitsandbytes)'
            ) from None


def model_location(model_args) -> str:
    """Where the model loads from at model_revision: `resolve_model`'s answer, as evaluate's (the embedded default's
    local copy at main, from the Hub at a pinned revision); a name neither local nor on the Hub is one line naming
    the setting, not a traceback."""
    from spri_sft.models import resolve_model

    return resolve_model(model_args.model_name_or_path, model_args.model_revision, setting="model_name_or_path")


def load_model(model_path: str, model_args, training_args, tokenizer, revision: str | None = None):
    """The model to train (at `revision`, else model_revision), loaded after seeding, its generation config stopping
    at the tokenizer's EOS.

    The trainers seed just before they build the LoRA adapter, but the model is loaded here, before that:
    seeding now makes the weights from_pretrained initialises (those a checkpoint lacks) follow `seed` too."""
    import torch
    from transformers import AutoModelForCausalLM, enable_full_determinism, set_seed
    from trl import get_quantization_config

    if training_args.full_determinism:
        enable_full_determinism(training_args.seed)
    else:
        set_seed(training_args.seed)
    quantization_config = get_quantization_config(model_args)
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model = AutoModelForCausalLM.from_pretrained(
        model_path,
        revision=revision or model_args.model_revision,
        dtype=dtype,
        quantization_config=quantization_config,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=training_args.trust_remote_code,
        # A quantized model is placed at load, on the device this process trains on: its GPU, or the CPU (no GPU, or
        # use_cpu; bitsandbytes' NF4 runs there).
        device_map={"": str(training_args.device)} if quantization_config is not None else None,
    )
    # Generation stops at the end-of-turn token the template trains, and still at every token the model's own
    # generation config stops at (Llama-3.1-Instruct has three, Gemma-it two).
    model.generation_config.eos_token_id = stop_token_ids(model.generation_config.eos_token_id, tokenizer.eos_token_id)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def stop_token_ids(model_stops: int | list[int] | None, trained_eos: int) -> int | list[int]:
    """The model's stop ids with the trained end-of-turn id added (one id stays an int, as configs write it)."""
    stops = [] if model_stops is None else [model_stops] if isinstance(model_stops, int) else list(model_stops)
    if trained_eos not in stops:
        stops.append(trained_eos)
    return stops[0] if len(stops) == 1 else stops


# -- continuing an SFT adapter (dpo, grpo) ----------------------------------------------------


def check_sft_adapter(sft_adapter: str | None, model_args, truthfulqa_before: bool) -> Path | None:
    """The `spri-sft train` adapter a job continues (`sft_adapter`), checked before anything loads; None without one."""
    if sft_adapter is None:
        return None
    path = Path(sft_adapter)
    if not (path / "adapter_config.json").is_file():
        raise UserError(f"sft_adapter {path}: no adapter_config.json there (give a `spri-sft train` output_dir)")
    if not model_args.use_peft:
        raise UserError(
            "sft_adapter continues a LoRA adapter: set use_peft true (its r, alpha and targets are its own)"
        )
    if truthfulqa_before:
        raise UserError(
            "truthfulqa_before with sft_adapter would score the base model, not the SFT one; "
            "score the SFT adapter with `spri-sft evaluate --adapter` instead"
        )
    return path


def load_tokenizer(model_path: str, model_revision: dict, adapter_dir: Path | None, trust_remote_code: bool):
    """(tokenizer, revisions): the SFT adapter's own tokenizer (saved with its training template) when it has one,
    else the base model's at its resolved commit; `revisions` as `train_and_save` records them."""
    from transformers import AutoTokenizer

    own = adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(
        adapter_dir if own else model_path,
        revision=None if own else model_revision["commit"] or model_revision["revision"],
        trust_remote_code=trust_remote_code,
    )
    tokenizer_revision = resolve_revision(str(adapter_dir), None) if own else model_revision
    return tokenizer, {"model": model_revision, "tokenizer": tokenizer_revision}


def continue_adapter(model, adapter_dir: Path):
    """`model` with the SFT adapter loaded trainable; the trainers add its frozen "ref" copy where they need one."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


def continued_adapter_words(model, sft_adapter: str | None) -> str | None:
    """The adapter in the summary line: the continued SFT adapter's own shape, else None (the recipe's)."""
    if sft_adapter is None:
        return None
    config = model.peft_config["default"]
    return f"LoRA r={config.r}, alpha={config.lora_alpha} continued from {sft_adapter}"


def drop_reference_copy(model, output_dir: str) -> None:
    """PEFT saves every adapter the model holds; a "ref" copy is the SFT adapter, which stays where it was."""
    import shutil

    if "ref" in getattr(model, "peft_config", {}):
        shutil.rmtree(Path(output_dir) / "ref", ignore_errors=True)


def load_training_dataset(script_args: JobScriptArguments):
    """(the DatasetDict, where it came from): a `spri-sft format` output directory (with or without its
    `hf/`), any `save_to_disk` directory, or a Hub dataset."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    if script_args.dataset_path:
        path = Path(script_args.dataset_path)
        if not path.exists():
            raise UserError(f"dataset_path {path}: dataset not found (write it with `spri-sft format`)")
        if not _is_saved_dataset(path) and _is_saved_dataset(path / "hf"):
            path = path / "hf"  # the format output directory itself: its dataset is in hf/
            script_args.dataset_path = str(path)
        if not _is_saved_dataset(path):
            raise UserError(
                f"dataset_path {path}: not a saved dataset (no dataset_dict.json); give the `spri-sft format` "
                "output directory or its hf/"
            )
        dataset = load_from_disk(str(path))
        source = f"dataset_path {path}"
    elif script_args.dataset_name:
        dataset = load_dataset(script_args.dataset_name)
        source = f"dataset_name {script_args.dataset_name}"
    else:
        raise UserError("set dataset_path (from `spri-sft format`) or dataset_name")
    if not isinstance(dataset, DatasetDict):
        raise UserError(
            f"{source}: a single split without a name; save a DatasetDict with train (and validation) splits"
        )
    return dataset, source


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def dataset_split(dataset, source: str, name: str, option: str, alternative: str = ""):
    """`dataset[name]`, or an error naming the splits there are and the option that chose `name`."""
    if name not in dataset:
        raise UserError(
            f"{source}: no split '{name}' (splits: {', '.join(dataset) or 'none'}); set {option} to one of them"
            + (f" {alternative}" if alternative else "")
        )
    return dataset[name]


def truthfulqa_callback(script_args, training_args, model_args):
    """Evaluation's TruthfulQA callback for these settings (its file read now), or None without truthfulqa_file."""
    if script_args.truthfulqa_before and not script_args.truthfulqa_file:
        raise UserError("truthfulqa_before needs truthfulqa_file (the questions to score before and after)")
    if not script_args.truthfulqa_file:
        return None
    from spri_sft import tracking
    from spri_sft.evaluate.callback import TruthfulQACallback

    return TruthfulQACallback(
        script_args.truthfulqa_file,
        output_dir=training_args.output_dir,
        model_name=model_args.model_name_or_path,
        adapter=training_args.output_dir if model_args.use_peft else None,
        limit=script_args.truthfulqa_limit,
        before=script_args.truthfulqa_before,
        report_to="wandb" if tracking.reports_to_wandb(training_args.report_to) else "none",
    )


# -- the run -----------------------------------------------------------------------------------


def train_and_save(
    trainer, script_args, training_args, model_args, summary: str, before_teardown=None, **facts
) -> dict:
    """Everything after the trainer is built, for SFT and DPO alike: the effective config (with `facts`, the
    trainer's `effective_batch` and `revisions`) and `summary` printed, resume, train, evaluate, save, card (with
    the base model's commit), metrics; returns the final metrics. `before_teardown`, called on every process after
    saving, is the last point where the processes can still exchange data (GRPO sums its critic's totals there)."""
    from spri_sft import tracking

    facts = {"effective_batch": trainer.effective_batch, "revisions": trainer.revisions, **facts}
    if trainer.accelerator.is_main_process:
        write_effective_config(training_args.output_dir, script_args, training_args, model_args, **facts)
        print(summary, flush=True)

    checkpoint = resume_checkpoint(training_args)
    reached = finished_checkpoint(checkpoint, training_args)
    if reached is not None and not (trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled):
        metrics = _from_finished_checkpoint(trainer, training_args, checkpoint, reached)
    else:
        if checkpoint is not None and training_args.resume_from_checkpoint is None:
            trainer.accelerator.print(f"[spri-sft] resuming from {checkpoint}")
        result = trainer.train(resume_from_checkpoint=checkpoint)  # TruthfulQA after training, if asked, at its end
        metrics = dict(result.metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())

    # Save: adapter (or full model), tokenizer with its training template, generation config, card.
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        trainer.model.generation_config.save_pretrained(training_args.output_dir)
        trainer.create_model_card(dataset_name=script_args.dataset_path or script_args.dataset_name)
        _record_base_model(Path(training_args.output_dir) / "README.md", trainer.revisions)
        if script_args.merge_adapter and model_args.use_peft:
            merged_dir = Path(training_args.output_dir) / "merged"
            trainer.model.merge_and_unload().save_pretrained(merged_dir)
            trainer.processing_class.save_pretrained(merged_dir)
        trainer.save_metrics("all", metrics)
        trainer.save_state()  # trainer_state.json (steps, log history) beside the adapter, not only in checkpoints
        if script_args.log_dataset_artifact and script_args.dataset_path:
            _log_dataset_artifact(script_args.dataset_path)
        if trainer.truthfulqa is not None:
            metrics.update(trainer.truthfulqa.metrics())
    if before_teardown is not None:
        before_teardown()
    # Barrier first: with gloo, tearing the group down right after a collective can deadlock a rank on exit.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()  # = Trainer.end(), which transformers 5.17 (the GPU machine's) lacks
    tracking.finish_active_run()  # the trainer's W&B callback leaves its run open; a later run must not reuse it
    return metrics


def finished_checkpoint(checkpoint: str | None, training_args) -> int | None:
    """The step of `checkpoint` when it has already reached max_steps, else None. transformers (5.25) resumed from
    such a checkpoint trains one step more (its loop checks max_steps only after a step): rerunning a finished
    command would train past max_steps and overwrite the result."""
    state = Path(checkpoint) / "trainer_state.json" if checkpoint is not None else None
    if state is None or training_args.max_steps <= 0 or not state.is_file():  # weights alone: the Trainer's case
        return None
    step = json.loads(state.read_text())["global_step"]
    return step if step >= training_args.max_steps else None


def _from_finished_checkpoint(trainer, training_args, checkpoint: str, step: int) -> dict:
    """What `trainer.train` leaves after a training with nothing left to do: the checkpoint's weights and state (as
    `train` loads them when resuming; this process's rank, not the saving one's), the best checkpoint's weights when
    the recipe keeps the best (as `train` ends), TruthfulQA after training when asked; the training's metrics are
    the earlier session's (all_results.json), none where it never wrote them."""
    from transformers.trainer_callback import TrainerState

    trainer.accelerator.print(
        f"[spri-sft] {checkpoint} is at step {step}, max_steps {training_args.max_steps}: nothing left to train; "
        "saving it as the result"
    )
    trainer._load_from_checkpoint(checkpoint)  # transformers' own loading of a resumed model (adapters included)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / "trainer_state.json"))
    trainer.state.is_local_process_zero = trainer.is_local_process_zero()  # as saved: the main process's
    trainer.state.is_world_process_zero = trainer.is_world_process_zero()
    best = trainer.state.best_model_checkpoint
    if training_args.load_best_model_at_end and best is not None and Path(best).is_dir():
        trainer._load_best_model()
    if trainer.truthfulqa is not None:  # its "after training" scoring, run by `train` at its end
        trainer.truthfulqa.on_train_end(
            training_args,
            trainer.state,
            trainer.control,
            model=trainer.model,
            processing_class=trainer.processing_class,
        )
    earlier = Path(training_args.output_dir) / "all_results.json"
    trained = json.loads(earlier.read_text()) if earlier.is_file() else {}
    return {key: value for key, value in trained.items() if not key.startswith("eval_")}


def resume_checkpoint(training_args) -> str | None:
    """The checkpoint a training resumes from: resume_from_checkpoint, else the last complete one in output_dir
    (None: from the start)."""
    if training_args.resume_from_checkpoint is not None or not Path(training_args.output_dir).is_dir():
        return training_args.resume_from_checkpoint
    return last_complete_checkpoint(training_args.output_dir)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest `checkpoint-N` whose trainer_state.json (written last) parses: a kill mid-save leaves a torn one."""
    checkpoints = sorted(
        (p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
        key=lambda p: int(p.name.split("-")[-1]),
        reverse=True,
    )
    for checkpoint in checkpoints:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            return str(checkpoint)
        except (OSError, json.JSONDecodeError):
            logger.warning("skipping %s: it was not completely written (killed while saving?)", checkpoint)
    return None


def _record_base_model(card_path: Path, revisions: dict) -> None:
    """The commit of the base model (and of the tokenizer) in the model card: its metadata and a line of its text."""
    from huggingface_hub import ModelCard

    model, tokenizer = revisions["model"], revisions["tokenizer"]
    card = ModelCard.load(card_path)
    card.data.base_model_revision = model["commit"] or model["revision"]
    line = f"Base model: {revision_words(model)}; tokenizer: "
    line += "the same." if tokenizer == model else f"{revision_words(tokenizer)}."
    if model["commit"] and model.get("local_directory") is None:
        line += f" A rerun loads these files with `model_revision: {model['commit']}`."
    line += "\n\n"
    intro, heading, rest = card.text.partition("## Quick start")  # TRL's card: the line joins its introduction
    card.text = intro + line + heading + rest if heading else card.text + "\n" + line
    card.save(card_path)


def write_effective_config(output_dir: str, *configs, **facts) -> None:
    """Every setting, resolved, in effective_config.json (printed in short by `training_summary`)."""
    from dataclasses import asdict

    effective = {type(c).__name__: {k: _plain(v) for k, v in asdict(c).items()} for c in configs} | facts
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "effective_config.json").write_text(json.dumps(effective, indent=2, default=str))


def training_summary(
    trainer,
    model_args,
    recipe: Path | None = None,
    command: str = "train",
    unit: str = "rows",
    adapter: str | None = None,
    steps: int | None = None,
) -> str:
    """A few lines on what is about to be trained: model, rows (or pairs: `unit`), steps (`planned_steps`, or
    `steps` where the job counts them itself), LoRA (or `adapter`), and where the settings are."""
    args = trainer.args
    train_rows = len(trainer.train_dataset)
    validation = f", {len(trainer.eval_dataset)} validation" if trainer.eval_dataset is not None else ""
    if adapter is None:
        adapter = (
            f"LoRA r={model_args.lora_r}, alpha={model_args.lora_alpha}" if model_args.use_peft else "full fine-tuning"
        )
        if model_args.use_peft and (model_args.load_in_4bit or model_args.load_in_8bit):
            adapter = "Q" + adapter
    where = Path(args.output_dir)
    lines = [
        f"[spri-sft] {command} {model_args.model_name_or_path}: {train_rows} train {unit}{validation}, "
        f"{steps or planned_steps(args, train_rows, trainer.accelerator.num_processes)} steps, {adapter}",
        batch_line(trainer.effective_batch),
        f"[spri-sft]   settings: {recipe or 'command line'} (all of them: {where / 'effective_config.json'}); "
        f"output: {where}",
    ]
    return "\n".join(lines)


def planned_steps(args, train_rows: int, processes: int = 1) -> int:
    """The optimizer steps the trainer will take: max_steps, else epochs x batches per epoch (as the Trainer counts)."""
    import math

    if args.max_steps > 0:
        return args.max_steps
    per_batch = max(1, args.train_batch_size * processes)  # train_batch_size: per device x GPUs of this process
    batches = train_rows // per_batch if args.dataloader_drop_last else math.ceil(train_rows / per_batch)
    return math.ceil(args.num_train_epochs * max(1, math.ceil(batches / args.gradient_accumulation_steps)))


def _plain(value):
    return value if isinstance(value, (str, int, float, bool, type(None), list, dict)) else str(value)


def _log_dataset_artifact(dataset_path: str) -> None:
    """Attach the dataset (and its card) to the training run the trainer's W&B callback opened."""
    from spri_sft import tracking

    run = tracking.active_run()
    if run is None:  # report_to did not include wandb
        return
    root = Path(dataset_path)
    # Tokenization caches (cache-*.arrow) land in the dataset folder; they are not the data.
    files = {
        str(file.relative_to(root)): file
        for file in sorted(p for p in root.rglob("*") if p.is_file())
        if not file.name.startswith("cache-")
    }
    run.log_artifact(root.resolve().name or "sft-dataset", "dataset", files)
