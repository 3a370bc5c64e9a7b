"""The configuration of `spri-sft format`: one dataclass, YAML + dotted command-line overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

OVERLONG = ("drop", "keep")
NEAR_DUPLICATE_FIELDS = ("instruction+prompt", "instruction", "prompt")
COMPARES_INSTRUCTION = ("instruction+prompt", "instruction")  # the fields whose first text is the instruction


@dataclass
class FormatConfig:
    """Turn generation records into a Hugging Face SFT dataset in TRL's conversational format.

    Records pass, in this order: the reviewer's exclusions (`review_file`), the quality filters (`statuses`,
    empty response, `drop_truncated`, `min_response_score`), the benchmark contamination guard
    (TruthfulQA, `truthfulqa_file`, on by default, and `lm_eval_tasks`), then prompt deduplication
    (exact, then `near_duplicate_threshold`); the first step a record fails is the reason it is
    counted under. The rules are documented in `spri_sft.format.build`.

    Fields, by purpose:
    - input and output: `records`, `output_dir`, `push_to_hub`;
    - a reviewer's decisions (`spri-sft view`): `review_file`;
    - quality filters: `statuses`, `min_response_score`, `drop_truncated`;
    - deduplication: `near_duplicate_threshold`, `near_duplicate_field`;
    - benchmark contamination (`spri_sft.format.contamination`): `truthfulqa_file`, `lm_eval_tasks`,
      `lm_eval_include_path`, `lm_eval_include_defaults`, `contamination_ngram`, `contamination_threshold`,
      `contamination_responses`;
    - rows and split: `system_prompt`, `validation_fraction` or `validation_rows`, `seed`. The split
      keys on the prompt: a prompt whose generate source named its split (`sft_split`, e.g. a
      dataset's own validation split) goes there; the others are split by a seeded hash;
    - preference pairs for DPO: `preference`, `preference_margin` (the rules are in
      `spri_sft.format.preference`);
    - rows over the training max_length: `tokenizer`, `max_length`, `training_template`, `overlong`
      (step 7 of `spri_sft.format.build`). Unset (the default), no row is measured and
      summary.json says so; `spri-sft run` takes them from its training recipe unless its
      format section sets tokenizer or max_length.
    """

    records: list[str] = field(
        default_factory=lambda: ["outputs/generate/records.jsonl"],
        metadata={"help": "One or more records.jsonl files from `spri-sft generate`, read in this order."},
    )
    output_dir: str = field(
        default="outputs/format",
        metadata={
            "help": "Where hf/ (load_from_disk), {train,validation}.{jsonl,parquet}, README.md and summary.json go."
        },
    )
    review_file: str | None = field(
        default=None,
        metadata={
            "help": "A reviewer's decisions (`spri-sft view` writes review/decisions.jsonl): records whose last "
            "decision is exclude are dropped, counted under review by reason. Unset: review/decisions.jsonl "
            "beside the first records file, when there is one; none turns it off."
        },
    )
    statuses: list[str] = field(
        default_factory=lambda: ["accepted", "max_rounds"],
        metadata={"help": "Keep records with these statuses (accepted, max_rounds, failed)."},
    )
    min_response_score: int | None = field(
        default=None,
        metadata={
            "help": "Keep records whose final response version has a critic score >= this; unscored ones are dropped.",
            "ge": 1,
            "le": 5,
        },
    )
    drop_truncated: bool = field(
        default=True, metadata={"help": "Drop records whose final response was cut off (finish_reason 'length')."}
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "A system message put first in every row's messages."}
    )
    validation_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Fraction of prompts in the validation split (rounded up), counting those a source named validation; 0 (and none named) writes train only.",
            "ge": 0,
            "lt": 1,
        },
    )
    validation_rows: int | None = field(
        default=None,
        metadata={
            "help": "This many validation prompts instead of validation_fraction (e.g. the paper's 2,000), counting those a source named validation.",
            "ge": 1,
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the train/validation split."})
    near_duplicate_threshold: float | None = field(
        default=0.9,
        metadata={
            "help": "Drop a record whose near_duplicate_field has a word 3-gram Jaccard similarity >= this to an "
            "earlier kept record's (found exactly, every such pair); null turns it off.",
            "gt": 0,
            "le": 1,
        },
    )
    near_duplicate_field: Literal["instruction+prompt", "instruction", "prompt"] = field(
        default="instruction+prompt",
        metadata={
            "help": "What near_duplicate_threshold compares. 'instruction+prompt': two records are near duplicates "
            "when their instructions are and their whole prompts are too, so neither two questions about one "
            "passage (same context) nor one generic instruction ('Summarize this.') over two passages counts; "
            "'instruction': the instruction alone (the prompt without the context generate's "
            "prompts.context_column added), so that second case counts; 'prompt': the whole prompt, so the first "
            "case counts. A record without an instruction apart (no context, or generated before) uses its prompt."
        },
    )
    truthfulqa_file: str | None = field(
        default=None,
        metadata={
            "help": "Rows overlapping TruthfulQA's questions are dropped: of this file (mc_task.json, the "
            "packaged mc_task.json.gz, TruthfulQA.csv, or the Hub layout as .json/.jsonl/.parquet); unset, of "
            "the Hub dataset truthfulqa/truthful_qa, else (offline) of the packaged copy; none turns TruthfulQA off."
        },
    )
    lm_eval_tasks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "lm-evaluation-harness tasks or groups whose test and validation documents the rows are checked "
            "against too, read through lm-eval (as evaluate.lm_eval_tasks; `spri-sft run` fills in evaluate's "
            "when this is empty). Needs pip install 'spri-sft[lm-eval]'."
        },
    )
    lm_eval_include_path: str | None = field(
        default=None,
        metadata={"help": "A folder of local lm-eval task YAMLs (lm-eval's --include_path), as evaluate's."},
    )
    lm_eval_include_defaults: bool = field(
        default=True,
        metadata={
            "help": "false: only the tasks of lm_eval_include_path (skips indexing lm-eval's own, about a minute)."
        },
    )
    contamination_ngram: int = field(
        default=13,
        metadata={
            "help": "Word n-gram length of the benchmark overlap rule; 13 is the common choice (GPT-3's, "
            "lm-eval's decontamination).",
            "ge": 1,
        },
    )
    contamination_threshold: float = field(
        default=0.5,
        metadata={
            "help": "Drop a row covering at least this fraction of a benchmark document's words with n-grams it "
            "shares (open-instruct's match score); a document shorter than n words counts when held whole.",
            "gt": 0,
            "le": 1,
        },
    )
    contamination_responses: bool = field(
        default=False,
        metadata={"help": "Check each row's final response against the benchmarks too, not only its prompt."},
    )
    preference: bool = field(
        default=False,
        metadata={
            "help": "Also write DPO pairs (the final response against an earlier version the critic scored "
            "lower) from the kept records, in <output_dir>/preference, split like the SFT rows."
        },
    )
    preference_margin: float = field(
        default=1.0,
        metadata={
            "help": "A rejected version's critic score is at least this much below the final one's "
            "(under score: expected, the digits' mean).",
            "gt": 0,
        },
    )
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "The student's tokenizer (a local model directory or Hub id, e.g. the training recipe's "
            "model_name_or_path): with max_length, every row is measured in its tokens as training renders "
            "it. `spri-sft run` takes it from train's recipe."
        },
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Training's max_length in tokens (TRL's SFTConfig; it cuts a longer row at this length): rows "
            "over it are counted per split. `spri-sft run` takes it from train's recipe.",
            "ge": 1,
        },
    )
    training_template: Literal["model", "alpaca"] = field(
        default="model",
        metadata={
            "help": "How training renders a row (`spri-sft train`'s training_template): 'model', the "
            "tokenizer's chat template (without one, the Alpaca layout, and the count is approximate); "
            "'alpaca', the Alpaca layout. `spri-sft run` takes it from train's recipe."
        },
    )
    overlong: Literal["drop", "keep"] = field(
        default="drop",
        metadata={
            "help": "What to do with a row over max_length: 'drop' it (counted under overlong), or 'keep' it "
            "and count how many lost their end-of-turn token. Drop is this project's choice, not the paper's "
            "(it gives no max length): training cuts such a row at max_length, so the model learns a "
            "response that never ends, i.e. not to stop."
        },
    )
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Hub dataset repo id to push the splits and the card to (needs a token)."}
    )
