"""TruthfulQA MC1/MC2: the same numbers as lm-evaluation-harness, by label, adapters, outputs, W&B."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest

from spri_sft.evaluate import EvaluateConfig, evaluate_truthfulqa
from spri_sft.evaluate.truthfulqa import Question, build_context, load_questions, mc2_acc, to_hub_rows

V0 = Path("data/truthfulqa/data/v0/mc_task.json")


@pytest.fixture(scope="module")
def v0_file(shared_dir) -> Path:
    return shared_dir / V0


def _offline(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _rows(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "per_question.jsonl").read_text().splitlines()]


def _assert_matches_lm_eval(
    questions, mode, model_dir, v0_file, tmp_path, monkeypatch, mc2_tolerance, ll_rel, dtype="auto"
):
    pytest.importorskip("lm_eval")
    from spri_sft.evaluate.lm_eval_reference import run_lm_eval

    _offline(monkeypatch)
    chat = mode == "chat_template"
    reference = run_lm_eval(str(model_dir), questions, tmp_path / "lm_eval", chat_template=chat, dtype=dtype)
    config = EvaluateConfig(
        model=str(model_dir), truthfulqa_file=str(v0_file), limit=len(questions), output_dir=str(tmp_path / "ours"),
        chat_template=chat, dtype=dtype,
    )  # fmt: skip
    results = evaluate_truthfulqa(config)
    rows = _rows(tmp_path / "ours")

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert results["mode"] == mode
    assert dtype == "auto" or results["dtype"] == dtype
    for i, (q, row) in enumerate(zip(questions, rows)):
        context, delimiter = build_context(q.question, tokenizer, chat)
        # The very strings lm-eval scored: prompt, target delimiter, choices.
        assert reference["mc1_arguments"][i] == [(context, delimiter + c) for c in q.mc1_choices]
        assert reference["mc2_arguments"][i] == [(context, delimiter + c) for c in q.mc2_choices]
        assert row["mc1_acc"] == reference["mc1"][i], f"question {i}"
        assert row["mc2_acc"] == pytest.approx(reference["mc2"][i], abs=mc2_tolerance), f"question {i}"
        ours = row["mc1"]["loglikelihoods"] + row["mc2"]["loglikelihoods"]
        theirs = reference["mc1_loglikelihoods"][i] + reference["mc2_loglikelihoods"][i]
        assert ours == pytest.approx(theirs, rel=ll_rel, abs=0), f"question {i}"
    for metric in ("mc1", "mc2"):
        assert results[metric] == pytest.approx(float(reference["results"][metric]["acc,none"]), abs=mc2_tolerance)
        assert results[f"{metric}_stderr"] == pytest.approx(reference["results"][metric]["acc_stderr,none"], abs=1e-6)


# float64: our arithmetic differs from lm-eval's only in order, which float64 makes invisible (identical
# here; ~1e-11 on SmolLM2, whose float32 RMSNorm rounds). float32: the CPU kernels' summation order depends on
# tensor shapes, and lm-eval's own per-question MC2 on SmolLM2 moves by up to ~6e-6 when only its batching
# changes, so 1e-6 is no stable bound in float32; measured worst cases are ~5e-6 (tiny) and ~8e-6 (SmolLM2).
EXACT = ("float64", 1e-9, 1e-9)
FLOAT32 = ("float32", 2e-5, 1e-5)


@pytest.mark.parametrize(
    ("mode", "dtype", "mc2_tolerance", "ll_rel"),
    [("plain", *EXACT), ("chat_template", *EXACT), ("plain", *FLOAT32)],
)
def test_scores_equal_lm_eval_per_question(
    mode, dtype, mc2_tolerance, ll_rel, tiny_model_dir, v0_file, tmp_path, monkeypatch
):
    questions = load_questions(str(v0_file))[0][:5]
    _assert_matches_lm_eval(
        questions, mode, tiny_model_dir, v0_file, tmp_path, monkeypatch, mc2_tolerance, ll_rel, dtype
    )


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    ("dtype", "n", "mc2_tolerance", "ll_rel"), [("float64", 8, 1e-9, 1e-6), ("float32", 20, *FLOAT32[1:])]
)
def test_smollm2_scores_equal_lm_eval_per_question(dtype, n, mc2_tolerance, ll_rel, v0_file, tmp_path, monkeypatch):
    from spri_sft.models import DEFAULT_MODEL, resolve_model

    questions = load_questions(str(v0_file))[0][:n]
    model_dir = Path(resolve_model(DEFAULT_MODEL))
    _assert_matches_lm_eval(questions, "plain", model_dir, v0_file, tmp_path, monkeypatch, mc2_tolerance, ll_rel, dtype)


def test_mc2_counts_true_answers_by_label_not_position(tiny_model_dir, tmp_path):
    # True answers second and last: a rule that splits at the first false label would find none.
    question = Question(
        question="Which of these are true?",
        mc1_choices=["Water is wet.", "Fire is cold."],
        mc1_labels=[1, 0],
        mc2_choices=["Fire is cold.", "Water is wet.", "Ice is hot.", "The sky is blue."],
        mc2_labels=[0, 1, 0, 1],
    )
    data = tmp_path / "synthetic.json"
    data.write_text(json.dumps(to_hub_rows([question])))
    evaluate_truthfulqa(EvaluateConfig(model=str(tiny_model_dir), truthfulqa_file=str(data), output_dir=str(tmp_path)))
    row = _rows(tmp_path)[0]

    lls = row["mc2"]["loglikelihoods"]
    probs = [math.exp(x) for x in lls]
    by_label = (probs[1] + probs[3]) / sum(probs)
    assert row["mc2"]["labels"] == [0, 1, 0, 1]
    assert row["mc2_acc"] == pytest.approx(by_label, rel=1e-12)
    assert by_label > 0  # what the split-at-first-0 rule would have returned
    lm_eval_utils = pytest.importorskip("lm_eval.tasks.truthfulqa.utils")
    doc = {"mc2_targets": {"labels": row["mc2"]["labels"]}}
    assert (
        mc2_acc(lls, row["mc2"]["labels"]) == lm_eval_utils.process_results_mc2(doc, [(x, False) for x in lls])["acc"]
    )


def _save_random_lora(model_dir: Path, directory: Path, dtype=None) -> Path:
    """A LoRA adapter whose B is not zero, so that it changes the scores."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype), lora)
    assert any(p.abs().sum() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)
    peft_model.save_pretrained(directory)
    return directory


def test_adapter_scores_equal_merged_model_and_differ_from_base(tiny_model_dir, v0_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = _save_random_lora(tiny_model_dir, tmp_path / "adapter")
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    merged.merge_and_unload().save_pretrained(tmp_path / "merged")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "merged")

    def scores(name, loaded=None, **model):
        out = tmp_path / name
        config = EvaluateConfig(truthfulqa_file=str(v0_file), limit=3, output_dir=str(out), **model)
        evaluate_truthfulqa(config, **(loaded or {}))
        return [x for row in _rows(out) for x in row["mc2"]["loglikelihoods"]]

    # lm-eval's peft= path: the PeftModel itself, unmerged.
    with_adapter = scores("adapter", model=str(tiny_model_dir), adapter=str(adapter), merge_adapter=False)
    merged_scores = scores("merged", model=str(tmp_path / "merged"))
    base = scores("base", model=str(tiny_model_dir))
    # The model still in memory, as at the end of training.
    in_memory_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    in_memory = scores(
        "in_memory", {"model": in_memory_model, "tokenizer": AutoTokenizer.from_pretrained(tiny_model_dir)}
    )
    assert with_adapter == pytest.approx(merged_scores, rel=1e-5)
    assert in_memory == with_adapter
    assert max(abs(a - b) for a, b in zip(with_adapter, base)) > 1e-2
    results = json.loads((tmp_path / "adapter" / "results.json").read_text())
    assert results["adapter"] == str(adapter) and results["adapter_merged"] is False


@pytest.mark.parametrize(("dtype", "mc2_tolerance", "ll_rel"), [EXACT, FLOAT32])
def test_adapter_merged_for_scoring_gives_the_unmerged_scores(
    dtype, mc2_tolerance, ll_rel, tiny_model_dir, v0_file, tmp_path
):
    adapter = _save_random_lora(tiny_model_dir, tmp_path / "adapter")

    def evaluate(name, merge):
        config = EvaluateConfig(
            model=str(tiny_model_dir), adapter=str(adapter), merge_adapter=merge, dtype=dtype,
            truthfulqa_file=str(v0_file), limit=8, output_dir=str(tmp_path / name),
        )  # fmt: skip
        return evaluate_truthfulqa(config), _rows(tmp_path / name)

    merged, merged_rows = evaluate("merged", True)
    unmerged, unmerged_rows = evaluate("unmerged", False)
    assert (merged["adapter_merged"], unmerged["adapter_merged"]) == (True, False)
    for i, (a, b) in enumerate(zip(merged_rows, unmerged_rows)):
        assert a["mc1_acc"] == b["mc1_acc"], f"question {i}"
        assert a["mc2_acc"] == pytest.approx(b["mc2_acc"], abs=mc2_tolerance), f"question {i}"
        lls = a["mc1"]["loglikelihoods"] + a["mc2"]["loglikelihoods"]
        assert lls == pytest.approx(b["mc1"]["loglikelihoods"] + b["mc2"]["loglikelihoods"], rel=ll_rel, abs=0)


def test_adapter_on_a_half_precision_model_is_scored_unmerged(tiny_model_dir, v0_file, tmp_path):
    # Merged bfloat16 weights would round B·A to 8 bits of mantissa: not the unmerged scores.
    adapter = _save_random_lora(tiny_model_dir, tmp_path / "adapter")
    config = EvaluateConfig(
        model=str(tiny_model_dir), adapter=str(adapter), dtype="bfloat16", truthfulqa_file=str(v0_file), limit=1,
        output_dir=str(tmp_path / "eval"),
    )  # fmt: skip
    assert evaluate_truthfulqa(config)["adapter_merged"] is False


def test_writes_results_json_and_one_line_per_question(tiny_model_dir, v0_file, tmp_path):
    out = tmp_path / "eval"
    results = evaluate_truthfulqa(
        EvaluateConfig(model=str(tiny_model_dir), truthfulqa_file=str(v0_file), limit=4, output_dir=str(out))
    )
    written = json.loads((out / "results.json").read_text())
    assert written == results
    assert written["n"] == 4 and written["mode"] == "plain" and written["adapter"] is None
    assert written["model"] == str(tiny_model_dir)
    assert written["data_sha256"] == hashlib.sha256(v0_file.read_bytes()).hexdigest()
    assert written["task_versions"] == {"truthfulqa_mc1": "2.0", "truthfulqa_mc2": "3.0"}
    rows = _rows(out)
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    questions = load_questions(str(v0_file))[0]
    for row, q in zip(rows, questions):
        assert row["question"] == q.question
        assert row["mc2"]["choices"] == q.mc2_choices and row["mc2"]["labels"] == q.mc2_labels
        assert len(row["mc1"]["loglikelihoods"]) == len(q.mc1_choices)
        assert row["mc1_acc"] == float(row["mc1_pred"] == row["mc1_gold"] == 0)
        assert 0.0 <= row["mc2_acc"] <= 1.0
    assert written["mc1"] == pytest.approx(sum(r["mc1_acc"] for r in rows) / 4)
    assert written["mc2"] == pytest.approx(sum(r["mc2_acc"] for r in rows) / 4)
    assert (out / "config.yaml").is_file()


def test_reads_v0_file_and_hub_parquet_layout_alike(v0_file, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    questions, _ = load_questions(str(v0_file))
    assert len(questions) == 817
    parquet = tmp_path / "validation.parquet"
    pq.write_table(pa.Table.from_pylist(to_hub_rows(questions)), parquet)
    assert load_questions(str(parquet))[0] == questions


def test_logs_summary_metrics_to_the_open_wandb_run(tiny_model_dir, v0_file, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="spri-sft-tests", dir=str(tmp_path))
    try:
        config = EvaluateConfig(
            model=str(tiny_model_dir), truthfulqa_file=str(v0_file), limit=2, output_dir=str(tmp_path / "eval"),
            report_to="wandb",
        )  # fmt: skip
        results = evaluate_truthfulqa(config)
        assert wandb.run is run  # logged into the caller's run, which stays open
        assert run.summary["truthfulqa_mc1/acc"] == results["mc1"]
        assert run.summary["truthfulqa_mc2/acc"] == results["mc2"]
    finally:
        run.finish()


def test_logs_to_a_new_offline_wandb_run_without_api_key(tiny_model_dir, v0_file, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.setenv(name, "")  # so that the deletion below is undone after the test
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc with a W&B key
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "eval"
    config = EvaluateConfig(
        model=str(tiny_model_dir), truthfulqa_file=str(v0_file), limit=2, output_dir=str(out), report_to="wandb",
        wandb_project="spri-sft-tests", wandb_run_name="truthfulqa-offline",
    )  # fmt: skip
    evaluate_truthfulqa(config)

    import wandb

    assert wandb.run is None  # its own run, finished
    assert os.environ["WANDB_MODE"] == "offline"
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def _hub_row(question: str = "Is the sky green?") -> dict:
    targets = {"choices": ["No.", "Yes."], "labels": [1, 0]}
    return {"question": question, "mc1_targets": targets, "mc2_targets": targets}


def test_reads_hub_rows_as_json_lines_with_or_without_a_byte_order_mark(tmp_path):
    lines = "\n".join(json.dumps(_hub_row(f"Question {i}?")) for i in range(3)) + "\n"
    (tmp_path / "mc.jsonl").write_text(lines)
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + lines.encode())
    (tmp_path / "lines.json").write_text(lines)  # JSON lines under a .json name
    expected = [f"Question {i}?" for i in range(3)]
    for name in ("mc.jsonl", "bom.jsonl", "lines.json"):
        assert [q.question for q in load_questions(str(tmp_path / name))[0]] == expected


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("mc.jsonl", json.dumps(_hub_row()) + '\n{"question": "broken",\n', r"mc.jsonl:2: malformed JSON line"),
        ("mc.json", '[\n  {"question": "a",\n  "mc1_targets": }\n]\n', r"mc.json:3: malformed JSON"),
        ("mc.json", '{"question": "a"}', r"mc.json: expected a JSON list of objects, got a JSON dict"),
        ("mc.jsonl", json.dumps(_hub_row()) + "\n" + json.dumps({"question": "no targets"}) + "\n",
         r"mc.jsonl:2: expected question, mc1_targets and mc2_targets"),
        ("mc.jsonl", '["a", "list"]\n', r"mc.jsonl:1: expected a JSON object with question"),
        ("mc.jsonl", json.dumps({**_hub_row(), "mc1_targets": ["No.", "Yes."]}) + "\n",
         r"mc.jsonl:1: expected question, mc1_targets"),
        ("mc.txt", "Q: a\n", r"mc.txt: unsupported truthfulqa_file type '.txt'"),
    ],
    ids=["jsonl-torn-line", "json-syntax", "json-not-a-list", "missing-targets", "row-not-an-object", "targets-a-list", "unknown-type"],
)  # fmt: skip
def test_a_malformed_truthfulqa_file_is_named_with_its_line(tmp_path, name, content, message):
    from spri_sft.errors import UserError

    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=message):
        load_questions(str(tmp_path / name))


def test_a_missing_truthfulqa_file_is_named(tmp_path):
    from spri_sft.errors import UserError

    with pytest.raises(UserError, match=r"nope.json: truthfulqa_file not found"):
        load_questions(str(tmp_path / "nope.json"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "tinyy"], "spri-sft: error: model tinyy: no such local directory, and no Hub model tinyy in"),
        (["--adapter", "out/nope"], "spri-sft: error: adapter out/nope: no such local directory, and no Hub adapter"),
    ],
    ids=["model-typo", "adapter-missing"],
)
def test_a_model_or_adapter_that_is_nowhere_is_one_line_not_a_traceback(
    flags, message, tmp_path, tiny_model_dir, monkeypatch, capsys
):
    from spri_sft.cli import main

    _offline(monkeypatch)
    monkeypatch.chdir(tmp_path)  # out/nope is relative: make sure it is not there
    argv = ["evaluate", "--model", str(tiny_model_dir), *flags, "--limit", "2", "--output_dir", str(tmp_path / "eval")]
    assert main(argv) == 2

    (error,) = capsys.readouterr().err.splitlines()  # one line, no traceback
    assert error.startswith(message)
    assert not (tmp_path / "eval" / "results.json").exists()
