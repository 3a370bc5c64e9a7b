"""`spri-sft`: parses the command line and dispatches to a job; holds no job logic itself."""

from __future__ import annotations

import inspect
import logging
import signal
import sys
import threading

from spri_sft.errors import Terminated, UserError
from spri_sft.train import JOB_MODULES, job_module

USAGE = """usage: spri-sft COMMAND [RECIPE.yaml] [--section.field VALUE ...]

Commands:
  generate         Write SPRI (or baseline) SFT records for a set of prompts.
  format           Turn records.jsonl files into a chat SFT dataset (filters, dedupe, TruthfulQA guard).
  train            Fine-tune with TRL SFTTrainer + LoRA/QLoRA on a formatted dataset
                   (TRL's flags; run under `accelerate launch scripts/sft.py` for several GPUs).
  dpo              DPO with TRL DPOTrainer + LoRA on format's preference pairs (`format --preference true`),
                   fresh or continuing an SFT adapter (`--sft_adapter`; `scripts/dpo.py` for several GPUs).
  grpo             GRPO with TRL GRPOTrainer + LoRA on the SFT train split's prompts, rewarded by the critic's
                   score of each completion against that prompt's accepted principles (`--sft_adapter` continues SFT).
  evaluate         Score a model (optionally + LoRA adapter) on TruthfulQA MC1/MC2 as lm-evaluation-harness does.
  check-template   Check that a model's chat template trains its assistant turns and EOS.
  run              The whole pipeline from one recipe: generate → format → train → evaluate before/after,
                   one output directory, a report, resumable stage by stage (`spri-sft run RECIPE.yaml`).
  plan             Generate a few prompts of each mode of a recipe (pipeline or generate) for real and
                   predict the whole generation: calls, tokens, wall time, GPU-hours, cost
                   (`spri-sft plan RECIPE.yaml [--plan.sample 4]`).
  view             Look at records in the browser (a pipeline output dir, a generate output dir or records
                   files) and exclude or keep them for the dataset; `--export FILE.html` writes a shareable sample
                   (`spri-sft view PATH [--port N] [--read-only] [--export FILE.html --sample N]`).

generate, format, evaluate, run, plan, train, dpo and grpo read their settings from a YAML recipe, named first
(or as --config RECIPE.yaml, not both), then from overrides of any field: --dotted.name VALUE (train, dpo
and grpo: TRL's flags, e.g. --learning_rate 1e-4). `spri-sft COMMAND --help` lists the fields, or for run its
sections; `--help=SECTION` prints one section's (`spri-sft run --help=evaluate`). check-template and view
take a model or paths first; their flags may be written with _ or - (--eos_token = --eos-token).
`spri-sft --version` (-V) prints the versions of spri-sft and of the libraries a run depends on.
"""

# What a run's results depend on besides spri-sft itself, in the order a bug report would list them.
REPRODUCING_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "lm-eval", "vllm")


def versions() -> str:
    """`spri-sft --version`: the installed spri-sft, Python and the packages of REPRODUCING_PACKAGES, one a
    line, read from the installed distributions' metadata (none is imported, so it is instant)."""
    import platform
    from importlib import metadata

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    lines = [f"spri-sft {version('spri-sft')}", f"python {platform.python_version()}"]
    return "\n".join(lines + [f"{package} {version(package)}" for package in REPRODUCING_PACKAGES])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    if argv[0] in ("-V", "--version"):
        print(versions())
        return 0
    command, rest = argv[0], argv[1:]
    # Our own progress notes at INFO; libraries (httpx logs every request at INFO) only warn.
    logging.basicConfig(level=logging.WARNING, format="[spri-sft] %(message)s")
    logging.getLogger("spri_sft").setLevel(logging.INFO)
    # bitsandbytes, imported by PEFT, tries at import to fetch a faster CPU 4-bit kernel from the Hub (through the
    # `kernels` package, which warns offline that it skips the publisher check) and warns when it cannot, then uses
    # its own kernels: nothing for the user to fix, and not spri-sft's message.
    for library in ("bitsandbytes.backends.cpu.ops", "kernels"):
        logging.getLogger(library).setLevel(logging.ERROR)
    # SIGTERM (a scheduler's stop, `kill`, the pipeline stopping its trainer) stops a job the way Ctrl-C does.
    previous_sigterm = _stop_on_sigterm()
    try:
        if command == "generate":
            return _generate(rest)
        if command == "format":
            return _format(rest)
        if command == "evaluate":
            return _evaluate(rest)
        if command in JOB_MODULES:  # train, dpo, grpo: TRL's parser reads their flags
            return job_module(command).cli(_trl_argv(command, rest))
        if command == "check-template":
            return _check_template(rest)
        if command == "run":
            return _run(rest)
        if command == "plan":
            return _plan(rest)
        if command == "view":
            return _view(rest)
        raise UserError(f"unknown command {command!r} (try: spri-sft --help)")
    except UserError as err:
        print(f"spri-sft: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        kept = KEPT_WHEN_STOPPED.get(command, "rerun the same command to start it again")
        print(f"spri-sft: {'stopped by SIGTERM' if terminated else 'interrupted'}; {kept}", file=sys.stderr)
        return 143 if terminated else 130  # 128 + the signal, as a shell reports it
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


# What a command stopped midway keeps, as its stop line says; the others start over.
KEPT_WHEN_STOPPED = {
    "generate": "finished records are kept; rerun the same command to resume",
    "run": "finished stages are kept; rerun the same command to resume (training from its last complete checkpoint)",
    "train": "rerun the same command to resume from the last complete checkpoint, if one was saved",
    "dpo": "rerun the same command to resume from the last complete checkpoint, if one was saved",
    "grpo": "rerun the same command to resume from the last complete checkpoint, if one was saved",
    "view": "every decision made is kept in the review's decisions.jsonl",
}


def _stop_on_sigterm():
    """Make SIGTERM raise `Terminated` in the main thread; returns the handler it replaced (None: not installed)."""
    if threading.current_thread() is not threading.main_thread():
        return None  # only the main thread may set handlers (main() called from a worker thread)

    def terminate(signum, frame):
        # One stop: a second SIGTERM (a process group signalled twice) must not cut the clean-up short;
        # a no-op handler, not SIG_IGN, which children started meanwhile would inherit.
        signal.signal(signal.SIGTERM, lambda *_: None)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    return signal.SIG_DFL if previous is None else previous


def _parse_job_config(
    command: str,
    config_class: type,
    argv: list[str],
    set_by_command: frozenset[str] = frozenset(),
    sections_only: bool = False,
):
    """The job's config from its recipe and dotted overrides; None when --help was asked for (and printed).
    `set_by_command`: dotted fields the command sets itself, left out of the help; `sections_only`: the plain
    help lists each section in one line (`--help=SECTION` prints its fields)."""
    from spri_sft.config import (
        format_help,
        format_section_help,
        format_sections_overview,
        help_request,
        load_config,
        sections,
    )

    asked = help_request(argv)
    if asked is None:
        return load_config(config_class, argv)
    if asked:
        print(format_section_help(config_class, asked, set_by_command))
        inside = sorted(name for name in set_by_command if name.startswith(asked + "."))
        if inside:
            print(f"\nSet by `spri-sft {command}` itself, not in a recipe: {', '.join(inside)}")
        return None
    print(f"usage: spri-sft {command} [RECIPE.yaml] [--section.field VALUE ...]  (or --config RECIPE.yaml)\n")
    print(inspect.cleandoc(config_class.__doc__ or "") + "\n\nFields:")
    if sections_only:
        print(format_sections_overview(config_class, command, set_by_command))
    else:
        print(format_help(config_class, omit=set_by_command))
        if sections(config_class):
            print(f"\n`spri-sft {command} --help=SECTION` prints one section's fields.")
    return None


def _trl_argv(command: str, argv: list[str]) -> list[str]:
    """train's, dpo's and grpo's argv as TRL's parser reads it: a recipe named first becomes `--config RECIPE.yaml`."""
    from spri_sft.config import help_request, recipe_and_options

    asked = help_request(argv)
    if asked:
        raise UserError(
            f"{command} --help={asked}: TRL's flags have no sections; `spri-sft {command} --help` lists all"
        )
    if asked == "":
        return argv
    recipe, options = recipe_and_options(argv)
    return (["--config", recipe] if recipe is not None else []) + options


def _generate(argv: list[str]) -> int:
    from spri_sft.generate.config import GenerateConfig

    config = _parse_job_config("generate", GenerateConfig, argv)
    if config is None:
        return 0

    from spri_sft.generate.run import generate

    summary = generate(config)
    print(
        f"[spri-sft] {summary['records']} records in {config.output_dir}/records.jsonl: "
        + (", ".join(f"{n} {status}" for status, n in sorted(summary["status"].items())) or "none yet")
        + f" ({summary['wall_seconds']:.0f} s)"
    )
    return 0 if not summary["missing"] or summary["stopped_by_budget"] else 1


def _format(argv: list[str]) -> int:
    from spri_sft.format.config import FormatConfig

    config = _parse_job_config("format", FormatConfig, argv)
    if config is None:
        return 0

    from spri_sft.format.build import build_dataset

    summary = build_dataset(config)
    dropped = ", ".join(f"{n} {reason}" for reason, n in summary["dropped"].items() if n) or "none"
    print(
        f"[spri-sft] {summary['rows']} rows (train {summary['splits']['train']}, "
        f"validation {summary['splits'].get('validation', 0)}) in {config.output_dir}; dropped: {dropped}"
    )
    if "preference" in summary:
        pairs = summary["preference"]
        no_pair = ", ".join(f"{n} {reason}" for reason, n in pairs["no_pair"].items() if n) or "none"
        print(
            f"[spri-sft] {pairs['pairs']} preference pairs ("
            + ", ".join(f"{split} {n}" for split, n in pairs["splits"].items())
            + f") in {config.output_dir}/preference; without a pair: {no_pair}"
        )
    return 0


def _evaluate(argv: list[str]) -> int:
    from spri_sft.evaluate.config import EvaluateConfig

    config = _parse_job_config("evaluate", EvaluateConfig, argv)
    if config is None:
        return 0

    from spri_sft.evaluate.run import run_evaluation

    run_evaluation(config)  # prints the scores and where results.json went (lm-eval's too, with lm_eval_tasks)
    return 0


def _run(argv: list[str]) -> int:
    from spri_sft.pipeline.config import PipelineConfig

    config = _parse_job_config("run", PipelineConfig, argv, _set_by_pipeline(), sections_only=True)
    if config is None:
        return 0

    from spri_sft.pipeline.run import run_pipeline

    run_pipeline(config)  # prints the report
    return 0


def _set_by_pipeline() -> frozenset[str]:
    """The jobs' fields a recipe may not set (`pipeline.run.check_recipe` refuses them): not in `run --help`."""
    from spri_sft.pipeline.run import SET_BY_PIPELINE

    return frozenset(SET_BY_PIPELINE) | {"generate.mode"}  # the pipeline's `modes` instead


def _plan(argv: list[str]) -> int:
    from spri_sft.config import help_request, recipe_and_options
    from spri_sft.pipeline.plan import PlanSettings

    asked = help_request(argv)
    if asked is not None:
        from spri_sft.config import format_help, format_section_help

        if asked and asked != "plan":  # a section of the recipe the other flags override
            from spri_sft.pipeline.config import PipelineConfig

            print(format_section_help(PipelineConfig, asked, _set_by_pipeline()))
            return 0
        print("usage: spri-sft plan RECIPE.yaml [--plan.field VALUE ...] [--section.field VALUE ...]\n")
        print("RECIPE is a pipeline recipe or a generate config; flags other than --plan.* override its fields")
        print("(`spri-sft run --help`, `spri-sft generate --help`; `spri-sft plan --help=SECTION` prints a section).\n")
        print("Fields:\n" + format_help(PlanSettings, prefix="plan."))
        return 0
    recipe, options = recipe_and_options(argv)
    if recipe is None:
        raise UserError("plan: give a recipe (usage: spri-sft plan RECIPE.yaml [--plan.sample N])")
    own, overrides = _split_prefixed(options, "--plan.")

    from spri_sft.config import load_config
    from spri_sft.pipeline.plan import load_recipe, plan_recipe

    settings = load_config(PlanSettings, own)
    plan_recipe(load_recipe(recipe, overrides), settings)  # prints the plan and where plan.json went
    return 0


def _view(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="spri-sft view",
        description="Serve a local web page of the records of PATH (a pipeline output dir, a generate output dir "
        "or records files; several modes at once): an overview per mode, a filtered and searchable list, each "
        "record with its rounds and the same prompt in the other modes. Decisions (exclude/keep) go to "
        "<review dir>/decisions.jsonl, which `spri-sft format` obeys.",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--port", type=int, default=0, help="the port to listen on (default: a free one)")
    parser.add_argument(
        "--host", default="127.0.0.1",
        help="the address to listen on; another than this machine's (e.g. 0.0.0.0) only with SPRI_SFT_VIEW_TOKEN "
        "set, which every request must then carry",
    )  # fmt: skip
    parser.add_argument(
        "--read-only", "--read_only", action="store_true", help="show the records without the decision buttons"
    )
    parser.add_argument("--reviewer", help="the name decisions are recorded under (default: the login name)")
    parser.add_argument(
        "--export", metavar="FILE.html", help="write one self-contained HTML file of a sample instead of serving"
    )
    parser.add_argument(
        "--sample", type=int, help="records in the --export file, stratified by mode and status (default 200)"
    )
    parser.add_argument("--seed", type=int, default=0, help="which sample --export draws")
    args = parser.parse_args(argv)
    if args.sample is not None and args.export is None:
        raise UserError("view: --sample is for --export FILE.html (the viewer itself shows every record)")
    if args.export is not None:
        from spri_sft.review.export import DEFAULT_SAMPLE, export_html

        out = export_html(args.paths, args.export, DEFAULT_SAMPLE if args.sample is None else args.sample, args.seed)
        print(f"[spri-sft] view: exported to {out}")
        return 0

    from spri_sft.review.server import serve

    serve(args.paths, host=args.host, port=args.port, read_only=args.read_only, reviewer=args.reviewer)
    return 0


def _split_prefixed(argv: list[str], prefix: str) -> tuple[list[str], list[str]]:
    """The `--prefix.name value ...` options (as `--name value ...`) and the other options, each with its words."""
    from spri_sft.config import option_groups

    own, others = [], []
    for option, *words in option_groups(argv):
        if option.startswith(prefix):
            own += ["--" + option[len(prefix) :], *words]
        else:
            others += [option, *words]
    return own, others


def _check_template(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="spri-sft check-template",
        description="Render sample conversations with MODEL's tokenizer and its training chat template; fail "
        "when the assistant mask is empty, EOS would not be trained, a row gets two BOS tokens, or there is no "
        "chat template.",
    )
    parser.add_argument("model", help="Hub id or local model directory")
    parser.add_argument("--fallback", choices=["alpaca"], help="template for a tokenizer without one (base models)")
    parser.add_argument(
        "--template",
        choices=["model", "alpaca"],
        default="model",
        help="'alpaca' trains on the Alpaca format even when the tokenizer ships a chat template (base students)",
    )
    parser.add_argument(
        "--eos-token",
        "--eos_token",
        help="the token assistant turns end with, when it is not the tokenizer's EOS (the recipe's eos_token, e.g. "
        "Gemma-it's <end_of_turn>)",
    )
    parser.add_argument("--dataset", help="a `spri-sft format` output directory to take the sample rows from")
    parser.add_argument("--trust-remote-code", "--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from spri_sft.format.template import (
        PROBE_CONVERSATIONS,
        UnmarkableTemplateError,
        check_template,
        choose_training_template,
        use_eos_token,
        use_training_template,
    )
    from spri_sft.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model), trust_remote_code=args.trust_remote_code)
    use_eos_token(tokenizer, args.eos_token)
    try:
        how = choose_training_template(tokenizer, fallback=args.fallback, template=args.template).source
    except UnmarkableTemplateError:
        how = "the model's own chat template, assistant turns masked by prefix rendering"
    encode = use_training_template(tokenizer, fallback=args.fallback, template=args.template)
    conversations = [c for c in PROBE_CONVERSATIONS if any(m["role"] == "assistant" and m["content"] for m in c)]
    if args.dataset:
        # Training's own reader: the format output directory (its dataset is in hf/) or any saved dataset.
        from spri_sft.train.job import JobScriptArguments, dataset_split, load_training_dataset

        dataset, source = load_training_dataset(JobScriptArguments(dataset_path=args.dataset))
        train = dataset_split(dataset, source, "train", "--dataset")
        conversations = train.select(range(min(32, len(train))))["messages"]
    if not args.dataset:
        # The probes include system messages, which some templates refuse (Gemma) or move (Mistral v0.3).
        conversations = [
            c for c in conversations if _renders(tokenizer, c) and (encode is None or c[0]["role"] != "system")
        ]
    report = check_template(tokenizer, conversations, encode=encode)
    print(
        f"{args.model}: ok, trains on {how} — {report.rows} rows, {report.trained_tokens}/{report.tokens} tokens trained, "
        f"EOS trained in {report.eos_trained}/{report.assistant_turns} assistant turns"
    )
    return 0


def _renders(tokenizer, conversation) -> bool:
    from jinja2 import TemplateError

    try:
        tokenizer.apply_chat_template(conversation, tokenize=False)
    except TemplateError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
