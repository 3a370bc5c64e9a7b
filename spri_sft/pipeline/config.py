"""The configuration of `spri-sft run`: the four jobs' own configs in one recipe, plus what ties them together."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from spri_sft.evaluate.config import EvaluateConfig
from spri_sft.format.config import FormatConfig
from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.modes import Mode


@dataclass
class TrainStage:
    """Fine-tuning: a `spri-sft train` recipe, overridden by `args`, run once per mode."""

    recipe: str | None = field(
        default=None,
        metadata={"help": "An SFT recipe YAML (e.g. recipes/<model>/sft/lora.yaml) read first; `args` override it."},
    )
    args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Any `spri-sft train` field (TRL's SFTConfig and ModelConfig, SFTScriptArguments). The pipeline "
            "sets output_dir, dataset_path, run_name and the W&B project/group itself."
        },
    )
    accelerate_config: str | None = field(
        default=None,
        metadata={
            "help": "Launch training with `accelerate launch --config_file` this file (several GPUs); else one process."
        },
    )


@dataclass
class DPOStage:
    """Preference tuning after SFT: a `spri-sft dpo` recipe, overridden by `args`, run on each mode's SFT model
    with the pairs format writes from that mode's critique trajectories (format.preference turns on with it)."""

    enabled: bool = field(
        default=False,
        metadata={
            "help": "After each mode's SFT, train DPO on its preference pairs into checkpoints/<mode>+dpo and score "
            "it as eval/<mode>+dpo; a mode whose records gave no training pair is skipped, with a line saying why."
        },
    )
    recipe: str | None = field(
        default=None,
        metadata={"help": "A DPO recipe YAML (e.g. recipes/<model>/dpo/lora.yaml) read first; `args` override it."},
    )
    args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Any `spri-sft dpo` field (TRL's DPOConfig and ModelConfig, DPOScriptArguments). The pipeline sets "
            "model_name_or_path and sft_adapter (the student and the mode's SFT adapter, continued, a frozen copy "
            "the reference; after a full SFT, the SFT model as model_name_or_path), use_peft with an SFT adapter, "
            "dataset_path, output_dir, run_name and the W&B project/group. train.accelerate_config launches it too."
        },
    )


@dataclass
class GRPOStage:
    """Online RL after SFT: a `spri-sft grpo` recipe, overridden by `args`, run on each mode's SFT model with the
    prompts of that mode's SFT train split, each completion rewarded by the critic's score against the prompt's own
    principles (the mode's records), judged by the critic of this run's generate section unless the recipe names a
    critic_config."""

    enabled: bool = field(
        default=False,
        metadata={
            "help": "After each mode's SFT, train GRPO on its SFT train split's prompts into checkpoints/<mode>+grpo "
            "and score it as eval/<mode>+grpo; a mode with no prompt to reward (its records have no principles, as "
            "direct's, or none accepted) is skipped, with a line saying why."
        },
    )
    recipe: str | None = field(
        default=None,
        metadata={"help": "A GRPO recipe YAML (e.g. recipes/<model>/grpo/lora.yaml) read first; `args` override it."},
    )
    args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Any `spri-sft grpo` field (TRL's GRPOConfig and ModelConfig, GRPOScriptArguments). The pipeline "
            "sets model_name_or_path and sft_adapter (the student and the mode's SFT adapter, continued; after a full "
            "SFT, the SFT model as model_name_or_path), use_peft with an SFT adapter, dataset_path (the mode's "
            "dataset), output_dir, run_name and the W&B project/group, and, unless set here, generate_config (this "
            "run's generate section for the mode, written to checkpoints/<mode>+grpo/generate.yaml: its critic judges, "
            "its threshold decided acceptance). train.accelerate_config launches it too."
        },
    )


# The trainings that continue each mode's SFT model, in the order they run, with the name of their report rows: each
# is a `spri-sft <job>` into checkpoints/<mode>+<job>, scored as eval/<mode>+<job>, from the SFT model (not from one
# another), on when its section's `enabled` is.
AFTER_SFT = {"dpo": "SFT+DPO", "grpo": "SFT+GRPO"}


# What the pipeline writes beside a mode's GRPO training, whether it trains or is skipped: the prompt selection.
PROMPTS_FILE = "prompts.json"


def continued(mode: str, job: str) -> str:
    """The model a training after SFT makes of a mode's SFT model: <mode>+<job> (its checkpoints/ and eval/ names)."""
    return f"{mode}+{job}"


def split_model(model: str) -> tuple[str, str | None]:
    """(mode, the job after SFT or None) of a trained model's name: spri+dpo -> (spri, dpo), spri -> (spri, None)."""
    mode, _, job = model.partition("+")
    return mode, job or None


# The fields of `spri-sft evaluate` the pipeline sets itself for each model it scores; a recipe leaves them at their
# defaults (`pipeline.run.check_recipe` refuses them): the student and each trained adapter (or model), an adapter
# on the commit its training recorded, on the base quantized as a QLoRA recipe trains it, TruthfulQA's validation
# split, into eval/<model>/, logged to the run's W&B group.
EVALUATE_SET_BY_PIPELINE = (
    "model", "adapter", "model_revision", "base_quantization", "dataset_split", "output_dir",
    "report_to", "wandb_project", "wandb_group", "wandb_run_name",
)  # fmt: skip


@dataclass
class EvaluateStage(EvaluateConfig):
    """TruthfulQA MC1/MC2 of the student model before fine-tuning and of each adapter after it; with
    `lm_eval_tasks`, lm-evaluation-harness tasks too (lm-eval's own runs and numbers), on the same models.

    The fields of `spri-sft evaluate` (one config: `spri_sft.evaluate.config.EvaluateConfig`), but those the
    pipeline sets (model, adapter, model_revision, base_quantization, dataset_split, output_dir, report_to,
    wandb_*), and two of the pipeline's own. Without `truthfulqa_file` the Hub dataset is snapshotted into
    eval/truthfulqa.jsonl, or, when the Hub is unreachable, the packaged copy of upstream's data/v0/mc_task.json is
    used (one line says which); one file serves every evaluation and the training-data guard.
    """

    enabled: bool = field(default=True, metadata={"help": "Score before and after; false skips evaluation."})
    guard_training_data: bool = field(
        default=True,
        metadata={
            "help": "Drop SFT rows overlapping the evaluated TruthfulQA questions (as format's truthfulqa_file, "
            "unless format.truthfulqa_file names another file) and the documents of the lm-eval tasks scored (as "
            "format's lm_eval_tasks, unless format names its own)."
        },
    )


@dataclass
class WandbSettings:
    """Weights & Biases: every stage's run in one group (offline when no API key is set)."""

    enabled: bool = field(default=True, metadata={"help": "Log to W&B; false turns it off for every stage."})
    project: str = field(default="spri-sft", metadata={"help": "W&B project."})
    group: str | None = field(default=None, metadata={"help": "W&B group of all the runs; default: run_name."})


# The columns of the SPRI paper's Table 4 (TruthfulQA, %): student model and SFT prompt set (Dolly, MixInstruct).
# Their published numbers are in spri_sft/data/paper_table4.csv.
PaperColumn = Literal[
    "L3.1-8B Dolly", "L3.1-8B Mix", "L3.1-8B-Inst Dolly", "L3.1-8B-Inst Mix",
    "Mistral-7B-v0.3 Dolly", "Mistral-7B-v0.3 Mix", "Mistral-7B-v0.3-Inst Dolly", "Mistral-7B-v0.3-Inst Mix",
    "Gemma-2-9B Dolly", "Gemma-2-9B Mix", "Gemma-2-9B-it Dolly", "Gemma-2-9B-it Mix",
]  # fmt: skip


@dataclass
class ReportSettings:
    """report.md: what the comparison is set beside."""

    paper_column: PaperColumn | None = field(
        default=None,
        metadata={
            "help": "The column of the SPRI paper's Table 4 this recipe reproduces (e.g. 'L3.1-8B Dolly'): report.md "
            "then lists the rows in the paper's order beside its published TruthfulQA number and the difference."
        },
    )


@dataclass
class PipelineConfig:
    """Run generate → format → train → evaluate (before and after) in one output directory.

    One output directory per run: generate/<mode>/ (or a shared `generate_dir`), dataset/<mode>/,
    checkpoints/<mode>/, eval/base/ and eval/<mode>/, report.md and report.json; with `dpo.enabled` (or
    `grpo.enabled`), checkpoints/<mode>+dpo/ and eval/<mode>+dpo/ (+grpo) too. Several `modes`
    make an ablation over the same prompts: one dataset and one adapter per mode, one comparison
    table. A rerun skips
    finished stages and resumes the unfinished one (generation and training resume mid-way). A
    stage whose settings changed since it ran is refused, never silently mixed with old outputs:
    the refusal names the settings and input files that changed and every directory redoing it
    takes (the stage and the later ones reading its outputs), which `redo` reruns in one go.
    Every setting is checked before the first model call: ranges, the training recipes by TRL's
    own parser (`spri_sft.pipeline.recipe_check`), lm-eval's task names.

    The jobs' sections are their own configs (`spri-sft generate/format/evaluate --help`), except the
    fields the pipeline sets: generate.output_dir and generate.mode (use `modes`),
    format.records and format.output_dir, evaluate's model, adapter and output fields
    (`EVALUATE_SET_BY_PIPELINE`); evaluate adds `enabled` and `guard_training_data`. Format's length fields come from the training recipe
    unless format sets tokenizer or max_length: the student (model_name_or_path) as tokenizer,
    training's max_length (TRL's default, 1024, when the recipe names none), and its
    training_template and overlong where format leaves them at their defaults.
    """

    output_dir: str = field(default="outputs/run", metadata={"help": "Where every stage's outputs and the report go."})
    run_name: str | None = field(default=None, metadata={"help": "Name of the run; default: the output_dir's name."})
    generate_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where generation writes <mode>/records.jsonl; default <output_dir>/generate. Recipes naming the "
            "same directory share their records (e.g. six students trained on one generation)."
        },
    )
    modes: list[Mode] = field(
        default_factory=lambda: ["spri"],
        metadata={
            "help": "Generation modes, each fine-tuning its own adapter: the paper's Table 4 rows spri, oracle, direct, "
            "self-instruct, self-refine, seed-principles, self-align (see `spri-sft generate --help` for all)."
        },
    )
    redo: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Stages to run again with everything after them that reads their outputs (e.g. "
            "`--redo checkpoints/spri`, or train/spri: retrains spri and rescores it, without regenerating or "
            "reformatting); their outputs are removed first. Names as the run prints them (generate/<mode>, "
            "dataset/<mode>, checkpoints/<mode>, eval/base, eval/<mode>); aliases train/, format/, evaluate/, dpo/, grpo/."
        },
    )
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    format: FormatConfig = field(default_factory=FormatConfig)
    train: TrainStage = field(default_factory=TrainStage)
    dpo: DPOStage = field(default_factory=DPOStage)
    grpo: GRPOStage = field(default_factory=GRPOStage)
    evaluate: EvaluateStage = field(default_factory=EvaluateStage)
    wandb: WandbSettings = field(default_factory=WandbSettings)
    report: ReportSettings = field(default_factory=ReportSettings)

    def after_sft(self) -> list[str]:
        """The trainings after SFT this run makes (`AFTER_SFT`'s jobs whose section is enabled), in their order."""
        return [job for job in AFTER_SFT if getattr(self, job).enabled]

    def generation_dir(self, mode: str) -> Path:
        return Path(self.generate_dir or Path(self.output_dir) / "generate") / mode
