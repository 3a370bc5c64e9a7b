"""TruthfulQA scoring on every model family: lm-eval's per-question numbers, its BOS settings, sliding windows, QLoRA.

Each family fixture (support.families) is the layout that breaks scoring code written for one model: which
BOS its tokenizer adds (Qwen2.5: none), Gemma-2's alternating sliding-window layers and softcapping, Llama-3.1's real
128k vocabulary. lm-eval's HFLM on the same directory is the reference; both run in float32 on the CPU, where the
kernels' summation order depends on tensor shapes, hence tolerances instead of equality (tests/test_evaluate.py
measures them: per-choice log-likelihoods within ~1e-5 relative, a question's MC2 within ~2e-5).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from support.families import FAMILIES

from spri_sft.errors import UserError
from spri_sft.evaluate import EvaluateConfig, evaluate_truthfulqa
from spri_sft.evaluate.scoring import ChoiceScorer
from spri_sft.evaluate.truthfulqa import build_context, load_questions
from spri_sft.truthfulqa_data import write_packaged_copy

INSTRUCT = [name for name, family in FAMILIES.items() if family.instruct]
MC2_ABS, LL_REL = 2e-5, 1e-5


@pytest.fixture(scope="module")
def questions_file(tmp_path_factory) -> Path:
    return write_packaged_copy(tmp_path_factory.mktemp("truthfulqa"))


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _evaluate(model_dir: Path, questions_file: Path, n: int, out: Path, **settings) -> tuple[dict, list[dict]]:
    config = EvaluateConfig(
        model=str(model_dir), truthfulqa_file=str(questions_file), limit=n, output_dir=str(out), dtype="float32",
        **settings,
    )  # fmt: skip
    results = evaluate_truthfulqa(config)
    return results, [json.loads(line) for line in (out / "per_question.jsonl").read_text().splitlines()]


def _lm_eval(model_dir: Path, questions_file: Path, n: int, work: Path, **settings) -> dict:
    pytest.importorskip("lm_eval")
    from spri_sft.evaluate.lm_eval_reference import run_lm_eval

    questions = load_questions(str(questions_file))[0][:n]
    return run_lm_eval(str(model_dir), questions, work, dtype="float32", **settings)


def _assert_equal_per_question(rows: list[dict], reference: dict) -> None:
    assert len(rows) == len(reference["mc1"])
    for i, row in enumerate(rows):
        assert row["mc1_acc"] == reference["mc1"][i], f"question {i}"
        assert row["mc2_acc"] == pytest.approx(reference["mc2"][i], abs=MC2_ABS), f"question {i}"
        ours = row["mc1"]["loglikelihoods"] + row["mc2"]["loglikelihoods"]
        theirs = reference["mc1_loglikelihoods"][i] + reference["mc2_loglikelihoods"][i]
        assert ours == pytest.approx(theirs, rel=LL_REL, abs=0), f"question {i}"


# lm-eval's one pass per choice with a log-softmax over every position dominates (Llama-3.1's 128k vocabulary: ~4 s
# a question on two busy cores), so the default run takes a few questions and the slow one twenty.
FEW = [5, pytest.param(20, marks=pytest.mark.slow)]


@pytest.mark.parametrize("n", FEW)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_plain_prompt_scores_equal_lm_eval_per_question(family, n, family_dir, questions_file, tmp_path):
    model_dir = family_dir(family)
    results, rows = _evaluate(model_dir, questions_file, n, tmp_path / "ours")
    reference = _lm_eval(model_dir, questions_file, n, tmp_path / "lm_eval")

    _assert_equal_per_question(rows, reference)
    # auto: the tokenizer's default, a BOS for every family but Qwen2.5, and results.json says so.
    assert (results["add_bos_token_setting"], results["add_bos_token"]) == ("auto", FAMILIES[family].bos is not None)


@pytest.mark.parametrize("n", [2, pytest.param(20, marks=pytest.mark.slow)])
@pytest.mark.parametrize("family", INSTRUCT)
def test_chat_template_scores_equal_lm_eval_per_question(family, n, family_dir, questions_file, tmp_path):
    model_dir = family_dir(family)
    results, rows = _evaluate(model_dir, questions_file, n, tmp_path / "ours", chat_template=True)
    reference = _lm_eval(model_dir, questions_file, n, tmp_path / "lm_eval", chat_template=True)

    assert results["mode"] == "chat_template"
    _assert_equal_per_question(rows, reference)


@functools.cache
def _loaded(model_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir)


# The tiny model's tokenizer has a BOS it does not add by default: forcing it (lm-eval loads the tokenizer with
# add_bos_token=True) must prepend one. Qwen2.5 has no BOS at all: no setting can add one.
@pytest.mark.parametrize("family", ["llama-3.1", "gemma-2", "mistral-v0.3", "qwen2.5-instruct", "tiny"])
@pytest.mark.parametrize("add_bos_token", [None, True, False], ids=["auto", "true", "false"])
def test_tokenization_equals_lm_eval_under_each_add_bos_token(
    family, add_bos_token, family_dir, tiny_model_dir, questions_file
):
    lm_eval_hf = pytest.importorskip("lm_eval.models.huggingface")
    from transformers import AutoTokenizer

    model_dir = tiny_model_dir if family == "tiny" else family_dir(family)
    model = _loaded(model_dir)
    # HFLM loads its tokenizer from the path, with add_bos_token=<setting> when one is set; the model is only held.
    lm = lm_eval_hf.HFLM(pretrained=model, tokenizer=str(model_dir), add_bos_token=add_bos_token, device="cpu")
    scorer = ChoiceScorer(model, AutoTokenizer.from_pretrained(model_dir), add_bos_token=add_bos_token)
    for q in load_questions(str(questions_file))[0][:3]:
        for chat in (False, True)[: 1 + bool(scorer.tokenizer.chat_template)]:  # a template writes its own BOS text
            context, delimiter = build_context(q.question, scorer.tokenizer, chat)
            for choice in q.mc2_choices[:2]:
                assert scorer.encode_pair(context, delimiter + choice) == lm._encode_pair(context, delimiter + choice)
    bos = scorer.tokenizer.bos_token_id
    assert scorer.starts_with_bos("Q: a?") == (bos is not None and lm.tok_encode("Q: a?")[:1] == [bos])


@pytest.mark.parametrize("family", ["llama-3.1", "gemma-2"])
def test_a_forced_add_bos_token_scores_equal_lm_eval_with_the_same_setting(
    family, family_dir, questions_file, tmp_path
):
    # false: the paper-era (lm-eval <= 0.4.9.1) convention for Llama; these tokenizers add a BOS by default.
    model_dir = family_dir(family)
    results, rows = _evaluate(model_dir, questions_file, 2, tmp_path / "ours", add_bos_token=False)
    reference = _lm_eval(model_dir, questions_file, 2, tmp_path / "lm_eval", add_bos_token=False)
    _, auto_rows = _evaluate(model_dir, questions_file, 2, tmp_path / "auto")

    _assert_equal_per_question(rows, reference)
    assert (results["add_bos_token_setting"], results["add_bos_token"]) == (False, False)
    without, with_bos = rows[0]["mc2"]["loglikelihoods"], auto_rows[0]["mc2"]["loglikelihoods"]
    assert max(abs(a - b) for a, b in zip(without, with_bos)) > 1e-3  # the BOS is read: the setting matters


def test_a_chat_templates_own_bos_is_recorded_whatever_the_setting(family_dir, questions_file, tmp_path):
    # Gemma's template writes <bos> itself: the prompts start with it even under add_bos_token false.
    model_dir = family_dir("gemma-2-it")
    results, _ = _evaluate(model_dir, questions_file, 1, tmp_path, chat_template=True, add_bos_token=False)
    assert (results["add_bos_token_setting"], results["add_bos_token"]) == (False, True)


def _longest_inputs(model_dir: Path, questions_file: Path, n: int) -> list[int]:
    """Per question: the most model inputs one of its choices needs (context + choice, less the last token)."""
    from transformers import AutoTokenizer

    scorer = ChoiceScorer(_loaded(model_dir), AutoTokenizer.from_pretrained(model_dir))
    longest = []
    for q in load_questions(str(questions_file))[0][:n]:
        context, delimiter = build_context(q.question)
        pairs = [scorer.encode_pair(context, delimiter + c) for c in dict.fromkeys(q.mc1_choices + q.mc2_choices)]
        longest.append(max(len(ctx) + len(cont) - 1 for ctx, cont in pairs))
    return longest


@pytest.mark.parametrize("family", ["gemma-2-it", "mistral-v0.3"])
def test_a_sliding_window_shorter_than_some_questions_scores_equal_lm_eval(
    family, family_dir, questions_file, tmp_path
):
    # The window splits the questions: those that fit it are packed, the others scored one pass per choice. Before,
    # Gemma-2 crashed (its sliding layers' prefix cache kept only the last window - 1 tokens) and a packed question
    # longer than the window read keys its sliding layers never see.
    n = 6
    window = sorted(_longest_inputs(family_dir(family), questions_file, n))[n // 2]
    model_dir = family_dir(family, sliding_window=window)
    results, rows = _evaluate(model_dir, questions_file, n, tmp_path / "ours")
    reference = _lm_eval(model_dir, questions_file, n, tmp_path / "lm_eval")

    _assert_equal_per_question(rows, reference)
    assert 0 < results["questions_scored_alone"] < n


def test_a_window_shorter_than_the_shared_prompt_scores_equal_lm_eval(family_dir, questions_file, tmp_path):
    # The case: Gemma-2 with a 128-token window, shorter than TruthfulQA's six-pair preamble alone.
    model_dir = family_dir("gemma-2-it", sliding_window=128)
    results, rows = _evaluate(model_dir, questions_file, 2, tmp_path / "ours")
    reference = _lm_eval(model_dir, questions_file, 2, tmp_path / "lm_eval")

    _assert_equal_per_question(rows, reference)
    assert results["questions_scored_alone"] == 2


@pytest.mark.parametrize("extra", [0, 1], ids=["as-long-as-the-window", "one-past-the-window"])
def test_a_sequence_packs_up_to_exactly_the_window(extra, family_dir):
    # Mistral's every layer slides: a query reads the keys fewer than `window` positions before it, so `window`
    # inputs are attended in full and one more is not (its last query no longer reaches the first token).
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    window = 24
    model_dir = family_dir("mistral-v0.3", sliding_window=window)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    scorer = ChoiceScorer(model, AutoTokenizer.from_pretrained(model_dir))
    continuation = " Water falling from the clouds."
    for words in range(window):  # one more word, one more token: until context + choice is window + extra inputs
        context = "rain " * words + "Q: What is rain?\nA:"
        context_enc, cont = scorer.encode_pair(context, continuation)
        if len(context_enc) + len(cont) - 1 >= window + extra:
            break
    assert len(context_enc) + len(cont) - 1 == window + extra
    inputs = torch.tensor([(context_enc + cont)[:-1]])
    with torch.inference_mode():  # one pass with the model's own sliding-window mask: lm-eval's
        logprobs = torch.log_softmax(model(input_ids=inputs).logits[0, len(context_enc) - 1 :], dim=-1)
    expected = float(logprobs.gather(-1, torch.tensor(cont)[:, None]).sum())

    assert scorer.score(context, [continuation]) == pytest.approx([expected], rel=1e-10, abs=0)
    assert scorer.scored_alone == extra


# --- QLoRA: an adapter trained on a 4-bit base is scored on that base -------------------------------------------

QLORA_FAMILY = "gemma-2"  # a small vocabulary: its 4-bit layers are most of the model


def _four_bit_base(model_dir: Path):
    """The family model as QLoRA training loads it on the CPU: bitsandbytes NF4, float32 compute and dtype."""
    pytest.importorskip("bitsandbytes")
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    return AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quantization, dtype=torch.float32, device_map={"": "cpu"}
    )


@pytest.fixture(scope="module")
def qlora_adapter(family_dir, tmp_path_factory) -> tuple[Path, object]:
    """A random LoRA (B not zero) saved from a 4-bit base, with the effective_config.json training writes beside it;
    and the 4-bit PeftModel still in memory, as at the end of training. Its weights are bfloat16, as TRL's SFTTrainer
    casts a QLoRA adapter's (trl/trainer/sft_trainer.py, the QLoRA paper's recipe), and saved so."""
    import torch
    from peft import LoraConfig, get_peft_model
    from trl import ModelConfig

    from spri_sft.train.job import write_effective_config

    model_dir = family_dir(QLORA_FAMILY)
    adapter = tmp_path_factory.mktemp("qlora") / "adapter"
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(_four_bit_base(model_dir), lora)
    for parameter in (p for p in model.parameters() if p.requires_grad):
        parameter.data = parameter.data.to(torch.bfloat16)
    model.save_pretrained(adapter)
    trained = ModelConfig(
        model_name_or_path=str(model_dir), dtype="float32", use_peft=True, load_in_4bit=True, bnb_4bit_quant_type="nf4"
    )  # fmt: skip
    write_effective_config(str(adapter), trained)
    return adapter, model


def _rows_lls(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "per_question.jsonl").read_text().splitlines()]
    return [x for row in rows for x in row["mc1"]["loglikelihoods"] + row["mc2"]["loglikelihoods"]]


def test_a_qlora_adapter_scores_as_its_4bit_model_in_training(qlora_adapter, family_dir, questions_file, tmp_path):
    from transformers import AutoTokenizer, TrainerControl, TrainerState

    from spri_sft.evaluate.callback import AFTER_DIR, TruthfulQACallback

    adapter, in_training = qlora_adapter
    model_dir = family_dir(QLORA_FAMILY)
    config = EvaluateConfig(
        model=str(model_dir), adapter=str(adapter), truthfulqa_file=str(questions_file), limit=3,
        output_dir=str(tmp_path / "saved"),
    )  # fmt: skip
    results = evaluate_truthfulqa(config)
    # The callback's after-scores: the model in memory at the end of training.
    callback = TruthfulQACallback(
        str(questions_file), output_dir=str(tmp_path / "training"), model_name=str(model_dir), adapter=str(adapter),
        limit=3,
    )  # fmt: skip
    callback.on_train_end(
        None, TrainerState(is_world_process_zero=True), TrainerControl(), model=in_training,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )  # fmt: skip

    assert _rows_lls(tmp_path / "saved") == _rows_lls(tmp_path / "training" / AFTER_DIR)
    assert results["adapter_merged"] is False  # merging into 4-bit weights would round B·A
    assert results["quantization"]["load_in_4bit"] is True
    assert results["quantization"]["bnb_4bit_quant_type"] == "nf4"
    assert results["quantization"] == callback.after["quantization"]


def test_quantization_none_scores_a_qlora_adapter_on_the_unquantized_base(
    qlora_adapter, family_dir, questions_file, tmp_path
):
    adapter, _ = qlora_adapter

    def evaluate(name, **settings):
        config = EvaluateConfig(
            model=str(family_dir(QLORA_FAMILY)), adapter=str(adapter), truthfulqa_file=str(questions_file), limit=3,
            dtype="float32", output_dir=str(tmp_path / name), **settings,
        )  # fmt: skip
        return evaluate_truthfulqa(config), _rows_lls(tmp_path / name)

    four_bit, four_bit_lls = evaluate("auto")
    unquantized, unquantized_lls = evaluate("none", quantization="none")

    assert unquantized["quantization"] is None and four_bit["quantization"]["load_in_4bit"] is True
    assert max(abs(a - b) for a, b in zip(four_bit_lls, unquantized_lls)) > 1e-2  # NF4 rounding moves the scores


def test_a_dtype_other_than_the_qlora_trainings_is_refused_naming_both(
    qlora_adapter, family_dir, questions_file, tmp_path
):
    adapter, _ = qlora_adapter
    config = EvaluateConfig(
        model=str(family_dir(QLORA_FAMILY)), adapter=str(adapter), truthfulqa_file=str(questions_file), limit=1,
        dtype="bfloat16", output_dir=str(tmp_path),
    )  # fmt: skip
    with pytest.raises(UserError, match=r"trained on a 4-bit nf4 base \(dtype float32.*dtype bfloat16 would score"):
        evaluate_truthfulqa(config)


def test_a_checkpoint_reads_the_quantization_its_run_was_trained_with(tmp_path):
    from spri_sft.evaluate.run import trained_quantization

    (tmp_path / "checkpoint-2").mkdir()
    trained = {"ModelConfig": {"load_in_4bit": True, "dtype": "bfloat16"}}
    (tmp_path / "effective_config.json").write_text(json.dumps(trained))
    found = trained_quantization(str(tmp_path / "checkpoint-2"))

    assert found is not None and found.fields == {"load_in_4bit": True, "dtype": "bfloat16"}
    assert found.source == tmp_path / "effective_config.json"


def test_a_base_scored_with_base_quantization_is_the_4bit_model_training_starts_from(
    family_dir, questions_file, tmp_path
):
    """A QLoRA run's 'before' score: the student on the 4-bit base its adapter will be scored on."""
    from transformers import AutoTokenizer

    model_dir = family_dir(QLORA_FAMILY)
    common = dict(model=str(model_dir), truthfulqa_file=str(questions_file), limit=3)
    fields = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "dtype": "float32"}
    results = evaluate_truthfulqa(EvaluateConfig(**common, base_quantization=fields, output_dir=str(tmp_path / "q")))
    evaluate_truthfulqa(
        EvaluateConfig(**common, output_dir=str(tmp_path / "in-memory")),
        model=_four_bit_base(model_dir), tokenizer=AutoTokenizer.from_pretrained(model_dir),
    )  # fmt: skip
    evaluate_truthfulqa(EvaluateConfig(**common, dtype="float32", output_dir=str(tmp_path / "unquantized")))

    assert results["quantization"]["load_in_4bit"] is True
    assert _rows_lls(tmp_path / "q") == _rows_lls(tmp_path / "in-memory")
    assert _rows_lls(tmp_path / "q") != _rows_lls(tmp_path / "unquantized")
