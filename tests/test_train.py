"""LoRA SFT with the train entry script on a tiny real model (CPU)."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from conftest import build_sft_dataset, tiny_lora_argv, train_and_check_only_lora_moved

from spri_sft.errors import UserError
from spri_sft.train.sft import build_trainer, main, make_parser


@pytest.fixture(scope="module")
def sft_dataset(tmp_path_factory):
    return build_sft_dataset(tmp_path_factory.mktemp("sft-data") / "hf")


def parse(tiny_model_dir, sft_dataset, output_dir, *extra):
    argv = tiny_lora_argv(tiny_model_dir, sft_dataset, output_dir, "--learning_rate", "1e-2", *extra)
    return make_parser().parse_args_and_config(args=argv)


def test_lora_steps_change_every_trainable_parameter_and_no_frozen_one(tiny_model_dir, sft_dataset, tmp_path):
    train_and_check_only_lora_moved(build_trainer(*parse(tiny_model_dir, sft_dataset, tmp_path)))


def test_training_loss_goes_down_on_a_tiny_overfit_set(tiny_model_dir, sft_dataset, tmp_path):
    extra = [
        "--max_steps",
        "30",
        "--lr_scheduler_type",
        "constant",
        "--lora_target_modules",
        "all-linear",
        "--learning_rate",
        "3e-2",
    ]
    trainer = build_trainer(*parse(tiny_model_dir, sft_dataset, tmp_path, *extra))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_eos_is_among_the_trained_labels(tiny_model_dir, sft_dataset, tmp_path):
    trainer = build_trainer(*parse(tiny_model_dir, sft_dataset, tmp_path))
    batch = next(iter(trainer.get_train_dataloader()))
    eos = trainer.processing_class.eos_token_id
    trained = batch["labels"][batch["labels"] != -100]
    # One trained EOS per row: each row has one assistant turn.
    assert int((trained == eos).sum()) == batch["labels"].shape[0]
    # The user turn is not trained: fewer trained labels than real tokens.
    assert trained.numel() < int(batch["attention_mask"].sum())


def test_saved_adapter_reloads_with_peft_and_generates(tiny_model_dir, sft_dataset, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    main(*parse(tiny_model_dir, sft_dataset, tmp_path, "--merge_adapter", "true"))

    assert (tmp_path / "adapter_model.safetensors").exists() and (tmp_path / "README.md").exists()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert "endgeneration" in tokenizer.chat_template  # the training template was saved with the adapter
    assert GenerationConfig.from_pretrained(tmp_path).eos_token_id == tokenizer.eos_token_id
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is rain?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    merged_output = merged.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert torch.equal(output, merged_output)
    assert json.loads((tmp_path / "all_results.json").read_text())["train_loss"] > 0


def test_a_misspelt_recipe_field_is_one_line_naming_the_file_and_the_field_meant(tmp_path, capsys):
    from spri_sft.cli import main as spri_sft

    recipe = tmp_path / "lora.yaml"
    recipe.write_text("model_name_or_path: tiny-student\nuse_peft: true\nlearning_rat: 1.0e-4\n")

    assert spri_sft(["train", "--config", str(recipe)]) == 2

    assert capsys.readouterr().err == (
        f"spri-sft: error: {recipe}: unknown field 'learning_rat' (did you mean 'learning_rate'?)\n"
    )


def test_8bit_is_refused_on_cpu_before_loading_anything(sft_dataset, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = parse("/no/such/model", sft_dataset, tmp_path, "--load_in_8bit", "true")
    with pytest.raises(UserError, match="load_in_8bit needs a CUDA GPU"):
        main(*args)


def test_qlora_without_bitsandbytes_is_refused_before_loading_anything(sft_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    args = parse("/no/such/model", sft_dataset, tmp_path, "--load_in_4bit", "true")
    with pytest.raises(UserError, match=r"needs bitsandbytes: pip install"):
        main(*args)


def test_a_dataset_without_messages_is_refused(tiny_model_dir, tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list([{"text": "hello"}])}).save_to_disk(tmp_path / "hf")
    with pytest.raises(UserError, match="no `messages` column"):
        build_trainer(*parse(tiny_model_dir, tmp_path / "hf", tmp_path / "out"))


def test_packed_examples_do_not_attend_to_each_other(tiny_model_dir, sft_dataset, tmp_path):
    trainer = build_trainer(*parse(tiny_model_dir, sft_dataset, tmp_path, "--packing", "true", "--max_length", "64"))
    batch = next(iter(trainer.get_train_dataloader()))
    positions = batch["position_ids"][0]
    starts = [i for i, p in enumerate(positions.tolist()) if p == 0]
    assert "attention_mask" not in batch and len(starts) > 1  # several examples in one packed row
    model = trainer.model.eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        for start, end in zip(starts, starts[1:] + [positions.numel()]):
            alone = model(input_ids=batch["input_ids"][:, start:end]).logits[0]
            assert torch.allclose(packed[start:end], alone, atol=1e-4)


def test_wrapped_packing_is_refused(tiny_model_dir, sft_dataset, tmp_path):
    args = parse(tiny_model_dir, sft_dataset, tmp_path, "--packing", "true", "--packing_strategy", "wrapped")
    with pytest.raises(UserError, match="attend to each other"):
        build_trainer(*args)


def test_truthfulqa_is_scored_after_training_when_the_recipe_names_a_file(
    tiny_model_dir, sft_dataset, tmp_path, shared_dir
):
    truthfulqa = shared_dir / "data/truthfulqa/data/v0/mc_task.json"
    metrics = main(
        *parse(tiny_model_dir, sft_dataset, tmp_path, "--truthfulqa_file", str(truthfulqa), "--truthfulqa_limit", "3")
    )
    results = json.loads((tmp_path / "truthfulqa/results.json").read_text())
    assert results["n"] == 3 and results["adapter"] == str(tmp_path)
    assert metrics["truthfulqa_mc1"] == results["mc1"] and 0 <= metrics["truthfulqa_mc2"] <= 1


def test_truthfulqa_before_training_scores_the_untouched_model(tiny_model_dir, sft_dataset, tmp_path, shared_dir):
    from spri_sft.evaluate.config import EvaluateConfig
    from spri_sft.evaluate.run import evaluate_truthfulqa

    truthfulqa = str(shared_dir / "data/truthfulqa/data/v0/mc_task.json")
    options = ["--truthfulqa_file", truthfulqa, "--truthfulqa_limit", "3", "--truthfulqa_before", "true"]
    main(*parse(tiny_model_dir, sft_dataset, tmp_path / "run", *options, "--learning_rate", "1e-2"))
    base = evaluate_truthfulqa(
        EvaluateConfig(
            model=str(tiny_model_dir), truthfulqa_file=truthfulqa, limit=3, output_dir=str(tmp_path / "base")
        )
    )

    def loglikelihoods(directory):
        rows = [json.loads(line) for line in (directory / "per_question.jsonl").read_text().splitlines()]
        return [ll for row in rows for ll in row["mc2"]["loglikelihoods"]]

    before = loglikelihoods(tmp_path / "run/truthfulqa_before")
    assert before == pytest.approx(loglikelihoods(tmp_path / "base"), abs=1e-4)
    assert before != pytest.approx(loglikelihoods(tmp_path / "run/truthfulqa"), abs=1e-3)  # the adapter changed them
    assert base["n"] == 3


def test_truthfulqa_before_without_a_file_is_refused(tiny_model_dir, sft_dataset, tmp_path):
    with pytest.raises(UserError, match="truthfulqa_before needs truthfulqa_file"):
        main(*parse(tiny_model_dir, sft_dataset, tmp_path, "--truthfulqa_before", "true"))


@pytest.fixture(scope="module")
def inst_model_dir(tmp_path_factory):
    from conftest import build_tiny_model
    from test_template import INST_TEMPLATE

    return build_tiny_model(tmp_path_factory.mktemp("tiny-inst"), chat_template=INST_TEMPLATE)


def test_a_template_without_markers_trains_assistant_turns_found_by_prefix_rendering(
    inst_model_dir, sft_dataset, tmp_path
):
    from conftest import SFT_PAIRS

    trainer = build_trainer(*parse(inst_model_dir, sft_dataset, tmp_path))
    batch = next(iter(trainer.get_train_dataloader()))
    tokenizer = trainer.processing_class

    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        trained = tokenizer.decode([t for t, label in zip(ids.tolist(), labels.tolist()) if label != -100])
        assert trained in {" " + answer + tokenizer.eos_token for _, answer in SFT_PAIRS}
    assert "[INST]" in tokenizer.decode(batch["input_ids"][0])  # the model's own template, not a substitute
    assert trainer.train().training_loss > 0


def test_a_template_without_markers_trains_the_whole_sequence_without_assistant_only_loss(
    inst_model_dir, sft_dataset, tmp_path
):
    trainer = build_trainer(*parse(inst_model_dir, sft_dataset, tmp_path, "--assistant_only_loss", "false"))
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    trained = trainer.processing_class.decode([t for t, label in zip(ids, labels) if label != -100])
    assert "[INST]" in trained and "[/INST]" in trained  # the prompt is trained too


def lora_weights(trainer) -> dict:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if "lora_" in name}


def test_the_same_seed_gives_bit_identical_initial_adapters_and_losses(tiny_model_dir, sft_dataset, tmp_path):
    runs = []
    for attempt, seed in enumerate([7, 7, 8]):
        torch.manual_seed(1000 + attempt)  # a different global random state before each run: only `seed` may matter
        trainer = build_trainer(*parse(tiny_model_dir, sft_dataset, tmp_path / str(attempt), "--seed", str(seed)))
        initial = lora_weights(trainer)
        trainer.train()
        runs.append((initial, [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]))
    (first, first_losses), (again, again_losses), (other, _) = runs
    assert first.keys() == again.keys() and any("lora_A" in name for name in first)
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert first_losses == again_losses and len(first_losses) == 3
    assert not all(torch.equal(first[name], other[name]) for name in first)  # the seed does decide them


def test_model_revision_reaches_the_model_and_tokenizer_loads(tiny_model_dir, sft_dataset, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    revisions = {}
    load_tokenizer, load_model = AutoTokenizer.from_pretrained, AutoModelForCausalLM.from_pretrained

    def tokenizer_from_hub(name, revision=None, **kwargs):
        revisions["tokenizer"] = (name, revision)
        return load_tokenizer(tiny_model_dir, **kwargs)

    def model_from_hub(name, revision=None, **kwargs):
        revisions["model"] = (name, revision)
        return load_model(tiny_model_dir, **kwargs)

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer_from_hub)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model_from_hub)
    monkeypatch.setattr(
        "spri_sft.models._find_on_hub", lambda *args: None
    )  # the faked Hub has some-org/some-model@abc123
    script_args, training_args, model_args = parse(tiny_model_dir, sft_dataset, tmp_path, "--model_revision", "abc123")
    model_args.model_name_or_path = "some-org/some-model"  # a Hub id: the revision pins which commit is loaded
    build_trainer(script_args, training_args, model_args)
    assert revisions == {"tokenizer": ("some-org/some-model", "abc123"), "model": ("some-org/some-model", "abc123")}


def test_a_local_model_directory_is_recorded_by_its_path_without_a_commit(tiny_model_dir, sft_dataset, tmp_path):
    from huggingface_hub import ModelCard

    # A revision means nothing to a local directory (from_pretrained ignores it): no commit is claimed.
    main(*parse(tiny_model_dir, sft_dataset, tmp_path, "--model_revision", "v1.0"))
    revisions = json.loads((tmp_path / "effective_config.json").read_text())["revisions"]
    local = {
        "name_or_path": str(tiny_model_dir),
        "revision": None,
        "commit": None,
        "local_directory": str(tiny_model_dir),
    }
    assert revisions == {"model": local, "tokenizer": local}
    card = ModelCard.load(tmp_path / "README.md")
    assert getattr(card.data, "base_model_revision", None) is None  # no revision claimed in the metadata
    assert (
        f"Base model: `{tiny_model_dir}` (a local directory: no Hub commit to record, only its path); "
        "tokenizer: the same." in card.text
    )


def test_the_effective_batch_derives_gradient_accumulation_from_the_processes(tiny_model_dir, sft_dataset, tmp_path):
    from spri_sft.train.job import batch_line, use_effective_batch

    _, training_args, _ = parse(tiny_model_dir, sft_dataset, tmp_path, "--per_device_train_batch_size", "4")
    batch = use_effective_batch(16, training_args)
    assert training_args.gradient_accumulation_steps == 4 and batch["size"] == 16 and batch["processes"] == 1
    assert batch_line(batch) == (
        "[spri-sft]   effective batch 16 = 4 per device × 4 accumulation × 1 process "
        "(gradient_accumulation_steps derived from effective_batch_size)"
    )
    _, unset, _ = parse(tiny_model_dir, sft_dataset, tmp_path, "--gradient_accumulation_steps", "3")
    assert batch_line(use_effective_batch(None, unset)) == (
        "[spri-sft]   effective batch 12 = 4 per device × 3 accumulation × 1 process "
        "(effective_batch_size unset: it changes with the number of processes)"
    )


def with_processes(monkeypatch, training_args, processes: int):
    """`training_args` as accelerate launch with `processes` ranks would make it (world_size is a property)."""
    monkeypatch.setattr(type(training_args), "world_size", property(lambda self: processes))
    return training_args


def test_eight_processes_keep_the_effective_batch_with_less_accumulation(
    tiny_model_dir, sft_dataset, tmp_path, monkeypatch
):
    from spri_sft.train.job import use_effective_batch

    _, training_args, _ = parse(tiny_model_dir, sft_dataset, tmp_path, "--per_device_train_batch_size", "2")
    batch = use_effective_batch(16, with_processes(monkeypatch, training_args, 8))
    assert (training_args.gradient_accumulation_steps, batch["size"]) == (1, 16)


def test_an_effective_batch_the_processes_cannot_make_is_refused_before_loading_anything(
    sft_dataset, tmp_path, monkeypatch
):
    script_args, training_args, model_args = parse(
        "/no/such/model", sft_dataset, tmp_path, "--effective_batch_size", "16"
    )
    with_processes(monkeypatch, training_args, 8)  # ddp.yaml's 8 processes x 4 rows per device = 32 rows a step
    message = (
        r"^effective_batch_size 16 is not a multiple of 4 per device × 8 processes = 32 rows; set "
        r"per_device_train_batch_size to 2 or 1, or effective_batch_size to a multiple of 32$"
    )
    with pytest.raises(UserError, match=message):
        main(script_args, training_args, model_args)
    _, three, _ = parse("/no/such/model", sft_dataset, tmp_path)
    with pytest.raises(
        UserError, match=r"16 is not a multiple of 4 per device × 3 processes = 12 rows; set effective_batch"
    ):
        from spri_sft.train.job import use_effective_batch

        use_effective_batch(16, with_processes(monkeypatch, three, 3))  # the paper's 3 GPUs: no per-device size fits


def test_gradient_accumulation_that_contradicts_the_effective_batch_is_refused(sft_dataset, tmp_path):
    args = parse(
        "/no/such/model", sft_dataset, tmp_path, "--effective_batch_size", "16", "--gradient_accumulation_steps", "2"
    )
    with pytest.raises(
        UserError, match=r"gradient_accumulation_steps 2 contradicts effective_batch_size 16, which makes it 4"
    ):
        main(*args)


def test_the_effective_batch_of_two_cpu_ranks_is_the_one_asked_for(tiny_model_dir, sft_dataset, tmp_path):
    """Two real ranks (accelerate launch, ddp_cpu.yaml): 8 rows a step = 2 per device x 2 accumulation x 2 processes."""
    import os
    from pathlib import Path

    from test_train_distributed import free_port, run_to_end

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}
    argv = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(repo / "recipes/accelerate/ddp_cpu.yaml"),
        "--main_process_port", str(free_port()), str(repo / "scripts/sft.py"),
        *tiny_lora_argv(tiny_model_dir, sft_dataset, tmp_path / "out", "--per_device_train_batch_size", "2",
                        "--effective_batch_size", "8", "--max_steps", "2"),
    ]  # fmt: skip
    log = tmp_path / "launch.log"
    assert run_to_end(argv, env, log, 240) == 0, log.read_text()[-3000:]
    assert "effective batch 8 = 2 per device × 2 accumulation × 2 processes" in log.read_text()
    state = json.loads((tmp_path / "out/trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(2 * 8 / 8)  # 2 steps of 8 rows over the 8 train rows
    effective = json.loads((tmp_path / "out/effective_config.json").read_text())
    assert effective["SFTConfig"]["gradient_accumulation_steps"] == 2 and effective["effective_batch"]["processes"] == 2


def test_a_format_output_directory_is_read_with_or_without_hf(tiny_model_dir, tmp_path):
    from spri_sft.train.job import load_training_dataset
    from spri_sft.train.sft import SFTScriptArguments

    build_sft_dataset(tmp_path / "format" / "hf")
    for given in (tmp_path / "format", tmp_path / "format" / "hf"):
        dataset, _ = load_training_dataset(SFTScriptArguments(dataset_path=str(given)))
        assert set(dataset) == {"train", "validation"}


def test_a_missing_validation_split_names_the_splits_that_exist(tiny_model_dir, tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows)}).save_to_disk(tmp_path / "hf")
    args = parse(tiny_model_dir, tmp_path / "hf", tmp_path / "out", "--eval_strategy", "steps", "--eval_steps", "1")
    with pytest.raises(UserError, match=r"hf: no split 'validation' \(splits: train, test\); set dataset_test_split"):
        build_trainer(*args)


def test_a_directory_that_is_not_a_dataset_is_refused(tiny_model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: not a saved dataset"):
        build_trainer(*parse(tiny_model_dir, tmp_path / "empty", tmp_path / "out"))


def test_weights_the_checkpoint_lacks_are_initialised_from_the_seed(tiny_model_dir, sft_dataset, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    headless = tmp_path / "headless"
    shutil.copytree(tiny_model_dir, headless)
    weights = load_file(headless / "model.safetensors")
    del weights["lm_head.weight"]  # from_pretrained initialises it anew, before SFTTrainer seeds anything
    save_file(weights, headless / "model.safetensors", metadata={"format": "pt"})
    heads = []
    for attempt in range(2):
        torch.manual_seed(2000 + attempt)
        trainer = build_trainer(*parse(headless, sft_dataset, tmp_path / str(attempt), "--seed", "7"))
        heads.append(trainer.model.get_output_embeddings().weight.detach().clone())
    assert torch.equal(*heads)


def test_the_command_prints_a_short_summary_and_one_progress_bar(tiny_model_dir, sft_dataset, tmp_path):
    import os
    import subprocess
    import sys

    import yaml

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"seed": 7}))
    # 8 rows, 2 per batch, 2 batches per step: 2 steps an epoch (the summary counts them before training).
    argv = tiny_lora_argv(
        tiny_model_dir, sft_dataset, tmp_path / "out", "--max_steps", "-1", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2", "--eval_strategy", "epoch",
    )  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-m", "spri_sft.cli", "train", "--config", str(recipe), *argv],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]

    assert f"[spri-sft] train {tiny_model_dir}: 8 train rows, 4 validation, 2 steps, LoRA r=8, alpha=16" in done.stdout
    assert (
        "[spri-sft]   effective batch 4 = 2 per device × 2 accumulation × 1 process (effective_batch_size unset"
        in done.stdout
    )
    assert f"settings: {recipe}" in done.stdout
    assert '"SFTConfig"' not in done.stdout and '"ModelConfig"' not in done.stdout  # no configuration dump
    assert (tmp_path / "out" / "effective_config.json").is_file()  # which is kept in a file
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 2
    bars = {line.split(":")[0] for line in done.stderr.replace("\r", "\n").splitlines() if "%|" in line}
    assert bars == {"train"}, bars  # no bars for loading weights, tokenizing, evaluating or saving
    assert "{'loss'" not in done.stderr + done.stdout and "eval_loss=" in done.stderr  # losses beside the bar


LONG_ANSWER = " ".join(["Water falls from clouds when droplets grow heavy."] * 12)


@pytest.fixture(scope="module")
def dataset_with_long_rows(tmp_path_factory):
    """Eight short rows, one with a long answer, one with a long question (its prompt alone over 64 tokens)."""
    from conftest import SFT_PAIRS
    from datasets import Dataset, DatasetDict

    def row(question, answer):
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}

    rows = [row(q, a) for q, a in SFT_PAIRS * 2] + [row("What is rain?", LONG_ANSWER), row(LONG_ANSWER + "?", "Yes.")]
    path = tmp_path_factory.mktemp("long") / "hf"
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(path)
    return path


def test_rows_over_max_length_are_counted_and_dropped_by_default(tiny_model_dir, dataset_with_long_rows, tmp_path):
    trainer = build_trainer(*parse(tiny_model_dir, dataset_with_long_rows, tmp_path, "--max_length", "64"))
    train = trainer.lengths["splits"]["train"]
    assert (train["rows"], train["over_max_length"], train["lost_eos"], train["no_trained_token"]) == (10, 2, 2, 1)
    assert train["dropped"] == 2 and len(trainer.train_dataset) == 8
    assert max(len(ids) for ids in trainer.train_dataset["input_ids"]) <= 64


def test_kept_overlong_rows_are_cut_and_those_left_without_a_trained_token_dropped(
    tiny_model_dir, dataset_with_long_rows, tmp_path
):
    args = parse(tiny_model_dir, dataset_with_long_rows, tmp_path, "--max_length", "64", "--overlong", "keep")
    trainer = build_trainer(*args)
    assert trainer.lengths["policy"] == "keep" and trainer.lengths["splits"]["train"]["dropped"] == 1
    assert len(trainer.train_dataset) == 9  # the long answer kept, cut before its EOS; TRL drops the long question
    eos = trainer.processing_class.eos_token_id
    cut = [row for row in trainer.train_dataset if len(row["input_ids"]) == 64]
    assert len(cut) == 1 and eos not in [t for t, label in zip(cut[0]["input_ids"], cut[0]["labels"]) if label != -100]


def test_training_writes_the_length_counts_and_says_them(tiny_model_dir, dataset_with_long_rows, tmp_path, capsys):
    main(*parse(tiny_model_dir, dataset_with_long_rows, tmp_path, "--max_length", "64", "--max_steps", "1"))
    written = json.loads((tmp_path / "lengths.json").read_text())
    assert written["max_length"] == 64 and written["splits"]["train"]["over_max_length"] == 2
    assert "2 of 10 train rows exceed max_length=64 tokens and are dropped (overlong: drop)" in capsys.readouterr().out
