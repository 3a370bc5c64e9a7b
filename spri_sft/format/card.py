"""The dataset card (README.md) written beside the formatted data.

Its YAML header names the parquet files per split, so `datasets.load_dataset(output_dir)` reads
them; its text states the method, the models, the filters with their counts, the rows over
training's max_length (or that they were not counted), and the score distribution, all taken from
the summary `build_dataset` returns.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from spri_sft.format.benchmarks import TRUTHFULQA
from spri_sft.format.config import FormatConfig
from spri_sft.format.contamination import WHOLE_TEXT_WORDS
from spri_sft.format.dedupe import SHINGLE_WORDS
from spri_sft.generate.modes import MODES, mode_spec
from spri_sft.truthfulqa_data import SOURCE

# What the near-duplicate step compares, by `near_duplicate_field`, as the card's filter table says it.
COMPARED = {
    "instruction": "instruction (the prompt without the context generate added)",
    "prompt": "prompt (instruction and context)",
}
NOT_MEASURED = "tokenizer and max_length unset: rows were not measured against training's max_length"


def _near_duplicate_rule(config: FormatConfig) -> str:
    threshold = config.near_duplicate_threshold
    if config.near_duplicate_field == "instruction+prompt":
        return (
            f"no earlier kept record has both an instruction (the prompt without the context generate added) and a "
            f"whole prompt of word {SHINGLE_WORDS}-gram Jaccard similarity >= {threshold} to its own"
        )
    return (
        f"the word {SHINGLE_WORDS}-gram Jaccard similarity of its {COMPARED[config.near_duplicate_field]} to every "
        f"earlier kept record's is under {threshold}"
    )


def render_card(summary: dict, config: FormatConfig) -> str:
    header = {
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": name, "path": f"{name}.parquet"} for name in summary["splits"]],
            }
        ],
        "tags": ["sft", "synthetic", *(["spri"] if "spri" in summary["modes"] else [])],
        "task_categories": ["text-generation"],
    }
    parts = [
        "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n",
        "# SFT data from spri-sft\n",
        f"{summary['rows']} (prompt, final response) pairs written by `spri-sft generate` and formatted by "
        "`spri-sft format`, in TRL's conversational format (a `messages` column): `trl.SFTTrainer` takes a "
        "split as it is.\n",
        _method(summary),
        _splits(summary, config),
        _filters(summary, config),
        _lengths(summary),
        _scores(summary),
        _columns(config),
        _benchmark(summary),
    ]
    return "\n".join(parts)


def lengths_line(lengths: dict) -> str:
    """One sentence of the row-length counts (`build.check_lengths`): printed by format, written in the card."""
    if not lengths.get("checked"):
        return f"row lengths not checked ({lengths.get('why', NOT_MEASURED)})"
    rows, over = sum(lengths["rows"].values()), sum(lengths["over_max_length"].values())
    lost, no_prompt = sum(lengths["lost_eos"].values()), sum(lengths["prompt_too_long"].values())
    approx = ""
    if lengths["approximate"]:
        approx = ", approximate: the tokenizer has no chat template, measured in the Alpaca layout"
    text = f"{over} of {rows} rows exceed max_length={lengths['max_length']} tokens of `{lengths['tokenizer']}`{approx}"
    if not over:
        return f"{text} (the longest has {lengths['longest']})"
    if lengths["policy"] == "drop":
        return f"{text} ({lost} would lose their end-of-turn token, {no_prompt} keep no trained token) and were dropped"
    return (
        f"{text} ({lost} lost their end-of-turn token, {no_prompt} keep no trained token and are dropped by TRL) and "
        f"were kept: training cuts them at {lengths['max_length']} tokens"
    )


def _method(summary: dict) -> str:
    lines = ["## Method\n"]
    for mode, rows in summary["modes"].items():
        lines.append(f"- {_mode_line(mode, rows)}")
    for role in ("base", "critic"):
        models = summary["models"][role]
        if models:
            lines.append(f"- {role} model: " + ", ".join(f"`{model}` ({rows} rows)" for model, rows in models.items()))
        else:
            lines.append(f"- {role} model: none recorded")
    return "\n".join(lines) + "\n"


def _mode_line(mode: str, rows: int) -> str:
    """A mode as the Method section names it: its heading, its place in the paper, its rows and what it does."""
    if mode not in MODES:  # records of a mode this version does not know
        return f"**{mode}**: {rows} rows."
    spec = mode_spec(mode)
    row = f"the paper's Table 4 row `{spec.paper_row.label}`" if spec.paper_row else "not a row of the paper"
    return f"**{spec.title or spec.name}** ({row}; {rows} rows): {spec.description}"


def _splits(summary: dict, config: FormatConfig) -> str:
    lines = ["## Splits\n", "| split | rows |", "| --- | --- |"]
    lines += [f"| {name} | {rows} |" for name, rows in summary["splits"].items()]
    named = summary.get("named_split_prompts") or {}
    if "validation" in summary["splits"]:
        size = f"{config.validation_rows}" if config.validation_rows else f"{config.validation_fraction:.0%} of the"
        how = (
            f"Keyed on the prompt alone, before any filter: the {size} distinct prompts of the records with the "
            f"lowest sha256(seed={config.seed}, normalized prompt) are the validation prompts, so every mode "
            "generated on the same prompts is validated on the same ones (minus the rows its filters dropped)."
        )
        if any(named.values()):
            total = config.validation_rows or f"{config.validation_fraction:.0%} of the distinct prompts as"
            how = (
                "Keyed on the prompt alone, before any filter. Prompts whose generate source named their split "
                f"(`sft_split`) are in it: {named.get('validation', 0)} validation and {named.get('train', 0)} train "
                f"prompts (e.g. a dataset's own validation split). Of the other prompts, those with the lowest "
                f"sha256(seed={config.seed}, normalized prompt) are validation prompts too, as many as it takes to "
                f"reach {total} validation prompts in all (none when the named ones reach it). So every mode "
                "generated on the same prompts is validated on the same ones (minus the rows its filters dropped)."
            )
    else:
        how = "No validation split (`validation_fraction: 0`)."
    return "\n".join(lines) + "\n\n" + how + "\n"


def _filters(summary: dict, config: FormatConfig) -> str:
    def off(setting: str) -> str:
        return f"off ({setting})"

    rules = {
        "review": _review_rule(summary, config),
        "status": "status is one of " + ", ".join(config.statuses),
        "empty_response": "the response is not missing or blank",
        "truncated": "the final response was not cut off (finish_reason `length`)"
        if config.drop_truncated
        else off("drop_truncated: false"),
        "response_score": f"the final response's critic score is >= {config.min_response_score} (unscored fails)"
        if config.min_response_score is not None
        else off("min_response_score: null"),
        "contamination": _contamination_rule(summary),
        "duplicate": "the normalized prompt (lowercase, punctuation and whitespace runs to one space) is new",
        "overlong": f"the row fits in training's max_length={config.max_length} tokens"
        if config.overlong == "drop"
        else off("overlong: keep"),
        "near_duplicate": _near_duplicate_rule(config)
        if config.near_duplicate_threshold is not None
        else off("near_duplicate_threshold: null"),
    }
    remaining = summary["records"]
    files = ", ".join(f"`{Path(p).name}`" for p in config.records)
    lines = [
        "## Filters and counts\n",
        "Applied in this order; a record is counted under the first step that drops it, and a duplicate keeps the "
        "first record of its group.\n",
        "| step | keeps a record when | dropped | remaining |",
        "| --- | --- | --- | --- |",
        f"| records read | {files} | | {remaining} |",
    ]
    for reason, count in summary["dropped"].items():
        remaining -= count
        lines.append(f"| {reason} | {rules[reason]} | {count} | {remaining} |")
    return "\n".join(lines) + "\n"


def _review_rule(summary: dict, config: FormatConfig) -> str:
    """The review step's row: whose decisions, and the exclusions by the reviewer's reason."""
    review = summary.get("review") or {}
    if not review.get("file"):
        return "off (review_file: none)" if config.review_file else "off (no review/decisions.jsonl beside the records)"
    reasons = ", ".join(f"{reason} {n}" for reason, n in (summary.get("review_reasons") or {}).items())
    return (
        f"a reviewer did not exclude it in `{Path(review['file']).name}` (`spri-sft view`)"
        + (f"; excluded by reason: {reasons}" if reasons else "")
        + f"; {review['kept']} kept by decision"
    )


def _lengths(summary: dict) -> str:
    lengths = summary.get("lengths") or {}
    if not lengths.get("checked"):
        return (
            "## Row lengths\n\nNot checked: no `tokenizer` and `max_length` were given, so rows longer than training's "
            "max_length (which training cuts, losing their end-of-turn token) are not counted.\n"
        )
    lines = [
        "## Row lengths\n",
        lengths_line(lengths) + f". Rows rendered as training renders them: {lengths['template']}. A row over "
        "max_length is cut there by "
        "training and loses the end of its response, its end-of-turn token with it (the model then learns not to "
        "stop); one whose prompt alone reaches max_length keeps no trained token. Dropping such rows is this "
        "project's choice, not the paper's.\n",
        "| split | rows | over max_length | lost end-of-turn | prompt alone too long | dropped |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, rows in lengths["rows"].items():
        cells = [lengths[key][name] for key in ("over_max_length", "lost_eos", "prompt_too_long", "dropped")]
        lines.append(f"| {name} | {rows} | " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def _scores(summary: dict) -> str:
    scores = summary["final_score"]
    keys = sorted({k for stage in scores.values() for k in stage}, key=lambda k: (k == "None", k))
    lines = [
        "## Final critic scores\n",
        "The critic's 1-5 score of the version kept, over the rows; `unscored`: the critic gave no score, or the "
        "mode has no critic.\n",
        "| score | response | principles |",
        "| --- | --- | --- |",
    ]
    for key in keys:
        label = "unscored" if key == "None" else key
        lines.append(f"| {label} | {scores['response'].get(key, 0)} | {scores['principles'].get(key, 0)} |")
    return "\n".join(lines) + "\n"


def _columns(config: FormatConfig) -> str:
    system = "a system message, then " if config.system_prompt else ""
    return (
        "## Columns\n\n"
        f"- `messages`: {system}the user's prompt, then the assistant's final response.\n"
        "- `id`: the record id from `records.jsonl` (a hash of the prompt, mode and generation settings).\n"
        "- `mode`: the generation method (see Method).\n"
        "- `principles`: the principles (or fixed rules) that guided the response; null in modes without them.\n"
        "- `principles_score`, `response_score`: the critic's score of the final principles and response; null "
        "when unscored.\n"
        "- `status`: `accepted` (every stage passed its threshold) or `max_rounds` (kept after the round limit).\n"
        "- `source_id`: the prompt's own id in the source it was read from (`prompts.id_column` of `spri-sft "
        "generate`), to join rows back to it; null when no id column was set.\n"
    )


def _contamination_rule(summary: dict) -> str:
    contamination = summary["contamination"]
    if not contamination["benchmarks"]:
        return "off (truthfulqa_file: none, no lm_eval_tasks)"
    return (
        f"the {' and '.join(contamination['fields'])} covers under {contamination['threshold']:.0%} of every benchmark "
        f"document's words with shared word {contamination['ngram']}-grams (see Benchmark contamination)"
    )


def _truthfulqa_named(source: str) -> str:
    """TruthfulQA's questions as the card names them: a file by its name, the packaged copy or the Hub in words."""
    if Path(source).is_file():
        return f"`{Path(source).name}`"
    return source if source == SOURCE else f"the Hub dataset {source}"


def _benchmark(summary: dict) -> str:
    contamination = summary["contamination"]
    n, fields = contamination["ngram"], " and ".join(contamination["fields"])
    lines = ["## Benchmark contamination\n"]
    if contamination["benchmarks"]:
        lines += [
            f"Rows were dropped when their {fields} covers at least {contamination['threshold']:.0%} of a benchmark "
            f"document's words with word {n}-grams they share (a document of fewer than {n} words: held whole, word "
            f"for word; of fewer than {WHOLE_TEXT_WORDS} words: the whole {fields}), text lowercased and punctuation "
            "removed on both sides. Each dropped row is in dropped.jsonl with the document it matched and the "
            "words they share.\n",
            "| benchmark | documents | rows dropped |",
            "| --- | ---: | ---: |",
        ]
        for name, entry in contamination["benchmarks"].items():
            label = (
                f"TruthfulQA ({_truthfulqa_named(contamination['truthfulqa_source'])})"
                if name == TRUTHFULQA
                else (f"lm-eval `{name}` (test and validation documents)")
            )
            lines.append(f"| {label} | {entry['documents']:,} | {entry['dropped']:,} |")
        lines.append("")
    if contamination["truthfulqa_source"] is None:
        lines.append(
            "**These rows were not checked against TruthfulQA** (`truthfulqa_file: none`). Check them (leave "
            "truthfulqa_file unset, or name a file) before evaluating a model trained on this data on TruthfulQA.\n"
        )
    return "\n".join(lines)
