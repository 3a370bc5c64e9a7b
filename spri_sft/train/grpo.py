"""Online RL on SPRI's principles: TRL GRPOTrainer + PEFT LoRA, rewarded by the critic's score against each
prompt's accepted principles.

The same job as `spri-sft train` and `spri-sft dpo` (`spri_sft.train.job`), with TRL's `GRPOConfig` and
`GRPOScriptArguments`, parsed by `TrlParser`: a YAML recipe sets everything, flags override it, an `env:`
block sets environment variables.

    # CPU: a fresh LoRA adapter on the embedded default, a few steps
    spri-sft grpo --config recipes/smollm2-135m-instruct/grpo/lora.yaml
    # after SFT: continue the SFT adapter (its frozen copy is the KL reference when beta > 0)
    spri-sft grpo --config recipes/smollm2-135m-instruct/grpo/lora.yaml \
        --sft_adapter outputs/smollm2-135m-instruct/sft/lora

What it does, top to bottom:
1. the checks, the CPU fallback, the effective batch and the model's commit of every job (`job`);
2. the prompts (`load_prompts`): the SFT dataset's train split (`dataset_path`, a `spri-sft format` output, so
   the split and format's filters are SFT's own: the reviewer's exclusions, the benchmark contamination guard,
   deduplication), each row joined by id to its record (in the records files the format output's config.yaml
   names, read a record at a time, keeping of the split's ids only the final principles and their acceptance)
   for the prompt's final principles; kept only when its principles stage ended accepted at the threshold of
   the generate run that wrote the records (its config.yaml beside them, or `generate_config`;
   `generate.record.stage_accepted`), unless `admit_unaccepted_principles`, and never without principles; every
   dropped row counted and said (`select_prompts`: the same selection without a model, as the pipeline asks it);
3. the critic (`critic_config`, by default the config.yaml of that generate run: its `critic:` role, `loop:`
   and templates; a `vllm` critic gets its server started as generate starts one, by the main process alone)
   as the reward (`spri_sft.train.grpo_reward.PrincipleReward`), started before the first step, so a critic that cannot load
   or be reached is one line;
4. the tokenizer with SFT's training template (or the SFT adapter's own), the model with a fresh LoRA adapter
   or the SFT adapter continued, and TRL's GRPOTrainer;
5. train (resuming from the last checkpoint), save the adapter, tokenizer, generation config and card as every
   job does, and the critic's totals, summed over the processes and over the sessions of a resumed run (each
   checkpoint holds them: `spri_sft.train.grpo_totals`), in `<output_dir>/reward.json`.

Several processes share one critic: an `openai` critic is a server they all ask; a `vllm` critic's server is
started by the main process alone, and the others wait for it and ask it at the main's URL (`shared_critic`).
Each process asks for its own completions' scores and reward.json sums them.

Not supported: full fine-tuning with a pretrained adapter; `truthfulqa_before` with `sft_adapter`;
several processes with a `transformers` critic, which each process would load again (one line).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from spri_sft.errors import UserError
from spri_sft.train import job

CONFIG_FILE = "config.yaml"  # the effective config generate and format write beside their outputs


@dataclass
class GRPOScriptArguments(job.JobScriptArguments):
    """GRPO's own script arguments beside every job's (`job.JobScriptArguments`: `dataset_path` is the SFT dataset's
    format output directory); the rest is TRL's GRPOConfig and ModelConfig."""

    generate_config: str | None = field(
        default=None,
        metadata={
            "help": "The config.yaml of the generate run that wrote the records: its loop's threshold decides which "
            "principles were accepted, and its critic: role judges unless critic_config names another. Unset: the "
            "config.yaml beside the first records file (the pipeline names its generation's, since its records may "
            "be a copy)."
        },
    )
    critic_config: str | None = field(
        default=None,
        metadata={
            "help": "A generate config (YAML) whose critic: role judges the completions, with its loop: "
            "(threshold, score_retries, official_checkout) and templates. Unset: the config.yaml of the "
            "generate run beside the first records file, so the critic that accepted the principles."
        },
    )
    admit_unaccepted_principles: bool = field(
        default=False,
        metadata={
            "help": "Also train on prompts whose principles stage ended without acceptance (max_rounds), with "
            "their final principles. Unset: they are dropped and counted."
        },
    )
    overlong_penalty_tokens: int | None = field(
        default=None,
        metadata={
            "help": "A second reward, TRL's soft overlong punishment (DAPO, Eq. 13): 0 for a completion up to "
            "max_completion_length - N tokens, falling linearly to -1 at max_completion_length. Weighed against "
            "the principles' reward by TRL's reward_weights ([principles, overlong]). Unset: the principles alone."
        },
    )
    sft_adapter: str | None = field(
        default=None,
        metadata={
            "help": "A `spri-sft train` LoRA adapter to continue (needs use_peft; its own r/alpha/targets); with "
            "beta > 0 a frozen copy of it is the KL reference. Unset: a fresh adapter on the base model."
        },
    )


def make_parser():
    from trl import GRPOConfig, ModelConfig

    return job.job_parser((GRPOScriptArguments, GRPOConfig, ModelConfig), prog="spri-sft grpo")


# -- the prompts -------------------------------------------------------------------------------


def format_dir_of(dataset_path: str) -> Path:
    """The `spri-sft format` output directory of `dataset_path` (itself, or the parent of its hf/)."""
    path = Path(dataset_path)
    if not (path / CONFIG_FILE).is_file() and path.name == "hf":
        path = path.parent
    if not (path / CONFIG_FILE).is_file():
        raise UserError(
            f"dataset_path {dataset_path}: no {CONFIG_FILE} there; give a `spri-sft format` output directory "
            "(its config.yaml names the records the prompts' principles come from)"
        )
    return path


def read_generate_config(path: Path, setting: str):
    """A generate config (`GenerateConfig`) from a YAML file, read as `spri-sft generate` reads it."""
    from spri_sft.config import from_dict, read_recipe
    from spri_sft.generate.config import GenerateConfig

    if not path.is_file():
        raise UserError(f"{setting} {path} not found (the config.yaml a `spri-sft generate` run writes)")
    return from_dict(GenerateConfig, read_recipe(path) or {}, str(path))


@dataclass(frozen=True)
class FinalPrinciples:
    """All GRPO keeps of a record: its final principles, and whether its principles stage ended accepted (None: the
    mode has no principles stage, its rubric is fixed rules: seed-principles-critic, ...)."""

    text: str | None
    accepted: bool | None


def final_principles(records: Iterable[dict], ids: set[str], threshold: float) -> dict[str, FinalPrinciples]:
    """The final principles of each record whose id is in `ids`, read from `records` one at a time (records files
    may be larger than memory should hold: the responses and every round's text are dropped as they are read)."""
    from spri_sft.generate.record import stage_accepted

    kept = {}
    for record in records:
        if record["id"] in ids:  # a later record of an id replaces an earlier one, as format's join does
            kept[record["id"]] = FinalPrinciples(
                record.get("principles"), stage_accepted(record, "principles", threshold)
            )
    return kept


def principle_prompts(
    split, principles: dict[str, FinalPrinciples], admit_unaccepted: bool
) -> tuple[list[dict], Counter]:
    """The GRPO rows of an SFT split: {prompt (the conversation up to the answer), principles, id} for each row
    whose record has principles, accepted unless `admit_unaccepted`; and the count of each reason a row was dropped."""
    rows, dropped = [], Counter()
    for row in split:
        final = principles.get(row["id"])
        if final is None:
            dropped["not_in_records"] += 1
            continue
        if not final.text:
            dropped["no_principles"] += 1
            continue
        if final.accepted is False and not admit_unaccepted:
            dropped["principles_not_accepted"] += 1
            continue
        prompt = [message for message in row["messages"] if message["role"] != "assistant"]
        rows.append({"prompt": prompt, "principles": final.text, "id": row["id"]})
    return rows, dropped


def principle_source(script_args: GRPOScriptArguments) -> tuple:
    """(the format config of `dataset_path`, the generate config of the run that wrote its records, that of the
    critic, the critic's config file): where each prompt's principles and their acceptance come from."""
    from spri_sft.config import from_dict, read_recipe
    from spri_sft.format.config import FormatConfig

    if not script_args.dataset_path:
        raise UserError("set dataset_path: the `spri-sft format` output of the SFT dataset (its train split's prompts)")
    format_dir = format_dir_of(script_args.dataset_path)
    format_config = from_dict(FormatConfig, read_recipe(format_dir / CONFIG_FILE) or {}, str(format_dir / CONFIG_FILE))
    # The run that wrote the records: its loop's threshold is what accepted their principles.
    if script_args.generate_config:
        run_path = Path(script_args.generate_config)
        run = read_generate_config(run_path, "generate_config")
    else:
        run_path = Path(format_config.records[0]).parent / CONFIG_FILE
        run = read_generate_config(run_path, f"the config of the generate run that wrote {format_config.records[0]}:")
    critic_path = Path(script_args.critic_config) if script_args.critic_config else run_path
    generate = read_generate_config(critic_path, "critic_config") if script_args.critic_config else run
    return format_config, run, generate, critic_path


def select_prompts(script_args: GRPOScriptArguments, splits: dict[str, str]) -> tuple[dict, dict, object]:
    """The GRPO rows of each of `splits` ({"train": split name, "validation": ...}) and what was kept of each
    ({rows, prompts, dropped}), without loading a model: also what the pipeline asks before starting a training
    (a mode whose records have no principles is skipped, not failed). Returns (rows, report, critic's config)."""
    from spri_sft.format.build import iter_records

    format_config, run, generate, critic_path = principle_source(script_args)
    dataset, source = job.load_training_dataset(script_args)
    chosen = {}
    for name, split_name in splits.items():
        option = "dataset_train_split" if name == "train" else "dataset_test_split"
        chosen[name] = job.dataset_split(
            dataset, source, split_name, option, 'or eval_strategy to "no"' if name != "train" else ""
        )
    ids = {row_id for split in chosen.values() for row_id in split["id"]}
    principles = final_principles(iter_records(format_config.records), ids, run.loop.threshold)
    rows, report = {}, {"dataset": source, "records": format_config.records, "critic_config": str(critic_path)}
    for name, split in chosen.items():
        rows[name], dropped = principle_prompts(split, principles, script_args.admit_unaccepted_principles)
        report[name] = {"rows": len(split), "prompts": len(rows[name]), "dropped": dict(dropped)}
    return rows, report, generate


def load_prompts(script_args: GRPOScriptArguments, training_args) -> tuple:
    """(train dataset, eval dataset or None, the generate config of the critic, a report of what was kept)."""
    from datasets import Dataset

    splits = {"train": script_args.dataset_train_split}
    if training_args.eval_strategy != "no":
        splits["validation"] = script_args.dataset_test_split
    rows, report, generate = select_prompts(script_args, splits)
    made = {}
    for name, split_name in splits.items():
        if not rows[name]:
            raise UserError(
                f"{report['dataset']}: none of the {report[name]['rows']} rows of split '{split_name}' has principles "
                f"to reward by ({dropped_words(Counter(report[name]['dropped']))}); give the format output of a mode "
                "with principles (spri)"
                + ("" if script_args.admit_unaccepted_principles else ", or set admit_unaccepted_principles true")
            )
        made[name] = Dataset.from_list(rows[name])
    return made["train"], made.get("validation"), generate, report


def fitting_prompts(prompts, tokenizer, training_args, kept: dict):
    """The prompts that leave room for a whole completion (max_completion_length tokens) in vLLM's context
    (`vllm_max_model_length`); the others are dropped and counted in `kept` (prompt_too_long). Without vLLM
    generation, or its context left to the model's, all of them.

    TRL's GRPO has no prompt length limit. vLLM (V1, `_validate_prompt_len` in vLLM 0.32) refuses, mid-run, only a
    prompt that leaves no room for one more token; a shorter one that leaves less than max_completion_length gets a
    completion cut at the end of the context. Dropping those too is this project's choice: a completion cut by the
    context is not what max_completion_length promises, and the critic would judge an answer cut off midway."""
    limit = training_args.vllm_max_model_length
    if not training_args.use_vllm or limit is None:
        return prompts
    room = limit - training_args.max_completion_length
    rendered = [
        tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        for prompt in prompts["prompt"]
    ]
    lengths = [len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]]
    fitting = [index for index, length in enumerate(lengths) if length <= room]
    if len(fitting) < len(lengths):
        kept["dropped"]["prompt_too_long"] = len(lengths) - len(fitting)
        kept["prompts"] = len(fitting)
    if not fitting:
        raise UserError(
            f"none of the {len(lengths)} prompts leaves room for max_completion_length {training_args.max_completion_length} "
            f"in vllm_max_model_length {limit} (the shortest is {min(lengths)} tokens): raise vllm_max_model_length"
        )
    return prompts.select(fitting)


def dropped_words(dropped: Counter) -> str:
    return ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in dropped.items()) or "none dropped"


def prompts_line(report: dict, admit_unaccepted: bool) -> str:
    train = report["train"]
    line = f"[spri-sft]   prompts: {train['prompts']} of the {train['rows']} SFT train rows"
    if train["dropped"]:
        line += f"; dropped {dropped_words(Counter(train['dropped']))}"
        if train["dropped"].get("principles_not_accepted"):
            line += " (admit_unaccepted_principles true trains on them)"
    elif admit_unaccepted:
        line += " (principles accepted or not: admit_unaccepted_principles)"
    return line


# -- the critic --------------------------------------------------------------------------------


def build_reward(generate, critic):
    """The critic of generate config `generate` as GRPO's reward, asked at `critic` (`shared_critic`'s endpoint)."""
    from spri_sft.generate.prompts import load_prompt_set
    from spri_sft.llm import build_backend
    from spri_sft.train.grpo_reward import PrincipleReward

    return PrincipleReward(
        build_backend(critic),
        loop=generate.loop,
        prompts=load_prompt_set(generate.loop.prompts_file),
        max_concurrent=generate.max_concurrent_prompts,
    )


def shared_critic(critic, servers, processes: int):
    """The endpoint every process asks: `critic` itself, or for a `vllm` critic the `openai` endpoint of its server,
    which the main process alone starts (in `servers`) while the others wait for its URL (a server per process
    would hold a copy of the critic on the GPUs each)."""
    if critic.backend != "vllm" or processes == 1:
        (endpoint,) = servers.endpoints(critic)
        return endpoint
    import socket

    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    started = [None]
    if state.is_main_process:
        try:
            (endpoint,) = servers.endpoints(critic)
            started[0] = (endpoint, socket.gethostname())
        except UserError as error:
            started[0] = error  # sent on, so the waiting processes stop with it instead of waiting forever
    broadcast_object_list(started)  # the other processes wait here while the main one starts the server
    if isinstance(started[0], UserError):
        if state.is_main_process:
            raise started[0]
        raise UserError(f"the main process could not start the critic's vllm server: {started[0]}")
    endpoint, main_machine = started[0]
    return critic_endpoint_on(socket.gethostname(), endpoint, main_machine, critic.vllm.host)


def critic_endpoint_on(machine: str, endpoint, main_machine: str, bind_host: str):
    """The endpoint a process on `machine` asks for the critic's server that the main process started on
    `main_machine`, listening on `bind_host`, at `endpoint` (its URL as the main machine reaches it).

    The main machine itself asks that URL. Another machine asks the main machine by its hostname where the server
    listens on every interface (0.0.0.0, whose URL here is 127.0.0.1), and is refused where the URL it would ask is
    loopback: its own machine, where no server runs."""
    import dataclasses
    from urllib.parse import urlsplit

    from spri_sft.serve.vllm import WILDCARD_HOSTS, is_loopback

    if machine == main_machine:
        return endpoint
    urls = endpoint.base_url
    if bind_host in WILDCARD_HOSTS:
        urls = [urlsplit(url)._replace(netloc=f"{main_machine}:{urlsplit(url).port}").geturl() for url in urls]
    loopback = [url for url in urls if is_loopback(urlsplit(url).hostname or "")]
    if loopback:
        raise UserError(
            f"critic vllm.host {bind_host}: its server on the main process's machine ({main_machine}) is asked at "
            f"{loopback[0]}, which from this process's machine ({machine}) is itself; set the critic's vllm.host to "
            "an address the other machines reach (or 0.0.0.0, with vllm.api_key_env), or serve it yourself and "
            "give it as backend: openai"
        )
    return dataclasses.replace(endpoint, base_url=urls)


def extra_rewards(script_args: GRPOScriptArguments, training_args) -> list:
    """The reward terms beside the principles' that the settings ask for (TRL's own functions)."""
    tokens = script_args.overlong_penalty_tokens
    if tokens is None:
        return []
    if not 0 < tokens <= training_args.max_completion_length:
        raise UserError(
            f"overlong_penalty_tokens must be from 1 to max_completion_length ({training_args.max_completion_length}), "
            f"got {tokens}"
        )
    from trl.rewards import get_soft_overlong_punishment

    return [get_soft_overlong_punishment(training_args.max_completion_length, tokens)]


def check_critic_processes(critic, processes: int, ddp_timeout: int | None = None) -> None:
    """Every process shares one critic: an `openai` critic is a server they all ask, a `vllm` critic's server is
    started once (`shared_critic`); a `transformers` critic's model would be loaded again by each process, so
    several processes refuse it. While the main process starts a `vllm` critic's server the others wait in a
    collective that torch.distributed gives up on after ddp_timeout seconds: a longer vllm.startup_timeout would
    end in its timeout traceback, not in the server's own one line (None: not checked)."""
    if processes > 1 and critic.backend == "transformers":
        raise UserError(
            f"critic backend transformers with {processes} processes would load a copy of the model in each; "
            "give the critic in critic_config as backend: vllm (one server, started by the main process) or as "
            "backend: openai with its base_url, or train in one process"
        )
    if (
        processes > 1
        and critic.backend == "vllm"
        and ddp_timeout is not None
        and critic.vllm.startup_timeout > ddp_timeout
    ):
        raise UserError(
            f"critic vllm.startup_timeout {critic.vllm.startup_timeout:g} s is longer than ddp_timeout {ddp_timeout} s, "
            f"which the other {processes - 1} processes wait at most for the main one to start the critic's server; "
            "raise ddp_timeout to it, or lower vllm.startup_timeout"
        )


def check_generation_batch(given: set[str], script_args: GRPOScriptArguments, training_args) -> None:
    """Refuse a generation batch (steps_per_generation, generation_batch_size) set with effective_batch_size, which
    sets the accumulation after GRPOConfig derived the generation batch from it: `follow_accumulation` derives it
    again and cannot tell a derived value from a set one, so a set one would be overwritten, or kept, unsaid."""
    if script_args.effective_batch_size is None:
        return
    for name in ("steps_per_generation", "generation_batch_size"):
        if name in given:
            raise UserError(
                f"{name} with effective_batch_size {script_args.effective_batch_size}: effective_batch_size derives "
                f"gradient_accumulation_steps, and a generation an optimizer step from it; unset {name}, or set "
                "--effective_batch_size None and gradient_accumulation_steps yourself"
            )


def follow_accumulation(training_args, parsed_accumulation: int) -> None:
    """GRPOConfig derives its generation batch when parsed: one generation an optimizer step, steps_per_generation =
    gradient_accumulation_steps. `effective_batch_size` sets the accumulation after that; derive it again, as TRL
    would have. (A generation batch set with effective_batch_size is refused on the command line,
    `check_generation_batch`; one that differs from the derived one is left as set.)"""
    accumulation = training_args.gradient_accumulation_steps
    if accumulation == parsed_accumulation or training_args.steps_per_generation != parsed_accumulation:
        return
    training_args.steps_per_generation = accumulation
    training_args.generation_batch_size = (
        training_args.per_device_train_batch_size * training_args.world_size * accumulation
    )
    # Whole groups still: GRPOConfig checked the parsed generation batch (accumulation 1, as use_effective_batch takes
    # it unset) held whole groups, and this one is a multiple of it.


def check_vllm_generation(training_args) -> None:
    """TRL's vLLM generation needs vLLM installed; TRL finds it missing only after the model loads, in a traceback."""
    from trl.import_utils import is_vllm_available

    if training_args.use_vllm and not is_vllm_available():
        raise UserError(
            "use_vllm: vLLM is not installed here (pip install vllm, see TRL's docs) — or set --use_vllm false"
        )


def close_reward(reward, trainer=None) -> None:
    """Close the critic, on the trainer's event loop where a trainer was built (where the critic started)."""
    if trainer is None:
        asyncio.run(reward.close())
    else:
        asyncio.run_coroutine_threadsafe(reward.close(), trainer.async_loop).result()


def critic_words(generate) -> str:
    critic = generate.critic
    where = f" at {', '.join(critic.base_url)}" if critic.backend == "openai" else f" ({critic.backend})"
    return f"{critic.model}{where}, score: {critic.score}"


# -- the job -----------------------------------------------------------------------------------


def build_trainer(script_args: GRPOScriptArguments, training_args, model_args, servers):
    """Checks, prompts, critic (started), tokenizer with its training template, model (and adapter), GRPOTrainer.

    The trainer carries `truthfulqa`, `effective_batch`, `revisions` (as every job's), `reward` (the
    PrincipleReward), `prompts_report` and `critic` (in words)."""
    from spri_sft import tracking

    job.check_model_args(model_args)
    check_vllm_generation(training_args)
    extras = extra_rewards(script_args, training_args)  # its settings checked before anything loads
    parsed_accumulation = training_args.gradient_accumulation_steps
    effective_batch = job.use_effective_batch(script_args.effective_batch_size, training_args)  # before the trainer
    follow_accumulation(training_args, parsed_accumulation)
    adapter_dir = job.check_sft_adapter(script_args.sft_adapter, model_args, script_args.truthfulqa_before)
    truthfulqa = job.truthfulqa_callback(script_args, training_args, model_args)  # its file read before any loading
    tracking.use_offline_without_key(training_args.report_to)

    from trl import GRPOTrainer, get_peft_config

    from spri_sft.format.template import use_training_template
    from spri_sft.train.progress import use_training_progress

    train_dataset, eval_dataset, generate, report = load_prompts(script_args, training_args)
    check_critic_processes(generate.critic, training_args.world_size, training_args.ddp_timeout)

    model_path = job.model_location(model_args)
    model_revision = job.resolve_revision(model_path, model_args.model_revision)
    revision = model_revision["commit"] or model_args.model_revision
    tokenizer, revisions = job.load_tokenizer(model_path, model_revision, adapter_dir, training_args.trust_remote_code)
    # Prompts render as they did in SFT: the training template (only the rendering matters, no assistant mask).
    use_training_template(
        tokenizer, fallback=script_args.chat_template_fallback, template=script_args.training_template
    )
    tokenizer.padding_side = "left"  # GRPO generates from the prompts' right edge
    train_dataset = fitting_prompts(train_dataset, tokenizer, training_args, report["train"])
    if eval_dataset is not None:
        eval_dataset = fitting_prompts(eval_dataset, tokenizer, training_args, report["validation"])

    model = job.load_model(model_path, model_args, training_args, tokenizer, revision)
    if adapter_dir is not None:
        model = job.continue_adapter(model, adapter_dir)
        peft_config = None  # GRPOTrainer adds the frozen "ref" copy of a pretrained adapter itself (beta > 0)
    else:
        peft_config = get_peft_config(model_args)

    reward = build_reward(generate, shared_critic(generate.critic, servers, training_args.world_size))
    trainer = None
    try:  # from here on a failure closes the critic (a vllm critic's server stops with `servers`)
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[reward, *extras],
            args=training_args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[truthfulqa] if truthfulqa is not None else None,
        )
        # The reward runs on the trainer's own event loop (TRL awaits async reward functions there): the critic is
        # loaded, or its servers checked, on that loop, before any step.
        asyncio.run_coroutine_threadsafe(reward.start(), trainer.async_loop).result()
    except BaseException:
        close_reward(reward, trainer)
        raise
    trainer.truthfulqa = truthfulqa
    trainer.effective_batch = effective_batch
    trainer.revisions = revisions
    trainer.reward = reward
    trainer.prompts_report = report
    trainer.critic = critic_words(generate)
    use_training_progress(trainer)
    return trainer


def main(script_args: GRPOScriptArguments, training_args, model_args, recipe: Path | None = None) -> dict:
    """Train, save, and return the final metrics (`recipe`: the file the settings came from). Tests call this."""
    from spri_sft.generate.servers import ServedModels
    from spri_sft.train.grpo_totals import CriticTotals, saved_totals

    output_dir = Path(training_args.output_dir)
    with ServedModels(output_dir / "servers") as servers:  # a vllm critic's server, stopped however training ends
        trainer = build_trainer(script_args, training_args, model_args, servers)
        try:
            adapter = job.continued_adapter_words(trainer.model, script_args.sft_adapter)
            summary = job.training_summary(
                trainer,
                model_args,
                recipe,
                command="grpo",
                unit="prompts",
                adapter=adapter,
                steps=planned_steps(trainer),
            )
            summary += "\n" + prompts_line(trainer.prompts_report, script_args.admit_unaccepted_principles)
            summary += (
                f"\n[spri-sft]   reward: the critic {trainer.critic} against each prompt's principles, scaled to "
                f"[0, 1]; {training_args.num_generations} completions per prompt, beta={training_args.beta}"
            )
            # The run's totals: those of the checkpoint it resumes from (its earlier sessions) and this session's.
            counting = CriticTotals(trainer.reward, saved_totals(job.resume_checkpoint(training_args)))
            trainer.add_callback(counting)  # saves them with every checkpoint
            totals = {}

            def sum_totals():  # every process's, to every process, while the process group still stands
                totals.update(counting.whole_run())

            metrics = job.train_and_save(
                trainer, script_args, training_args, model_args, summary, before_teardown=sum_totals,
                prompts=trainer.prompts_report, critic=trainer.critic,
            )  # fmt: skip
        finally:
            close_reward(trainer.reward, trainer)
    if trainer.accelerator.is_main_process:
        (output_dir / "reward.json").write_text(json.dumps(totals, indent=2) + "\n")
        print(reward_line(totals), flush=True)
    job.drop_reference_copy(trainer.model, training_args.output_dir)
    return metrics | {f"critic/{key}": value for key, value in totals.items()}


def planned_steps(trainer) -> int:
    """The optimizer steps GRPO will take: max_steps, else as the Trainer counts them from GRPO's dataloader (each
    prompt repeated num_generations x num_iterations times, a generation batch's leftover prompts dropped)."""
    import math

    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    per_epoch = max(1, math.ceil(len(trainer.get_train_dataloader()) / args.gradient_accumulation_steps))
    return math.ceil(args.num_train_epochs * per_epoch)


def reward_line(totals: dict) -> str:
    """What the critic did over the whole run, in one line: completions scored, unscored and failed, calls, tokens."""
    done = totals.get("completions", 0)
    tokens = totals.get("prompt_tokens", 0) + totals.get("completion_tokens", 0)
    return (
        f"[spri-sft] grpo: the critic scored {totals.get('scored', 0)} of {done} completions "
        f"({totals.get('unscored', 0)} unscored, {totals.get('failed', 0)} unanswered after retries: reward None, "
        f"left out by TRL); {totals.get('calls', 0)} calls, {tokens:,} tokens"
    )


def cli(argv: list[str] | None = None) -> int:
    """`spri-sft grpo`: as `spri-sft train`, with the GRPO fields."""
    return job.run_job(argv, "spri-sft grpo", make_parser, main, check_given=check_given)


def check_given(given: set[str], script_args, training_args) -> None:
    """GRPO's checks of the fields a recipe and flags set (`job.run_job`), run by `spri-sft grpo` and, before a
    pipeline's generation, by its recipe check (`pipeline.recipe_check`)."""
    check_generation_batch(given, script_args, training_args)
