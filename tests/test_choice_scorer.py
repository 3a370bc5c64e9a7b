"""ChoiceScorer packs each question's choices beside its prompt: the scores of one full pass per choice."""

from __future__ import annotations

import pytest

from spri_sft.evaluate.scoring import ChoiceScorer

PREAMBLE = (
    "Q: What colour is the sky on a clear day?\nA: The sky is blue.\n\nQ: What is rain?\nA: Water falling from clouds."
)
ITEMS = [
    (PREAMBLE + "\n\nQ: Name a colour.\nA:", [" Blue.", " Red is a colour, and so is green.", " X"]),
    (PREAMBLE + "\n\nQ: What do principles guide?\nA:", [" Answers.", " They guide the response to the question."]),
    (
        PREAMBLE + "\n\nQ: Is fire cold?\nA:",
        [" No.", " Yes.", " No, fire is hot.", " Fire is cold.", " I have no comment."],
    ),
    ("A prompt that shares nothing:", [" something", " something else entirely"]),  # scored on an empty prefix
]


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def _one_pass_per_choice(scorer: ChoiceScorer, context: str, continuation: str) -> float:
    """lm-eval's HFLM: `context + continuation` in one pass, the continuation's log-probabilities summed."""
    import torch

    context_enc, cont = scorer.encode_pair(context, continuation)
    tokens = torch.tensor([(context_enc + cont)[:-1]])
    with torch.inference_mode():
        logprobs = torch.log_softmax(scorer.model(input_ids=tokens).logits[0, len(context_enc) - 1 :], dim=-1)
    return float(logprobs.gather(-1, torch.tensor(cont)[:, None]).sum())


@pytest.mark.parametrize("batch_size", [1, 4, 32], ids=["a-question-a-pass", "some-per-pass", "all-in-one-pass"])
def test_packed_scores_equal_one_pass_per_choice(model_and_tokenizer, batch_size):
    model, tokenizer = model_and_tokenizer
    scorer = ChoiceScorer(model, tokenizer, batch_size=batch_size)
    assert scorer.share_prefix([context for context, _ in ITEMS[:3]]) > 16
    scores = scorer.score_many(ITEMS)
    assert scorer.shared_prefix_hits == 3  # the last context does not start with the shared tokens
    for (context, continuations), got in zip(ITEMS, scores):
        expected = [_one_pass_per_choice(scorer, context, c) for c in continuations]
        assert got == pytest.approx(expected, rel=1e-10, abs=0)


def test_a_question_scores_the_same_alone_as_packed_with_others(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    scorer = ChoiceScorer(model, tokenizer)
    scorer.share_prefix([context for context, _ in ITEMS])
    together = scorer.score_many(ITEMS)
    alone = [scorer.score(context, continuations) for context, continuations in ITEMS]
    assert sum(together, []) == pytest.approx(sum(alone, []), rel=1e-10, abs=0)


def test_a_sequence_over_the_maximum_length_is_truncated_on_the_left_as_lm_eval_does(model_and_tokenizer):
    import torch

    model, tokenizer = model_and_tokenizer
    context, continuation = ITEMS[0][0], ITEMS[0][1][1]
    context_enc, cont = ChoiceScorer(model, tokenizer).encode_pair(context, continuation)
    scorer = ChoiceScorer(model, tokenizer, max_length=len(cont) + 4)  # keeps 4 tokens of the context
    window = (context_enc + cont)[-(len(cont) + 5) :][:-1]  # lm-eval: the last max_length + 1 tokens, minus the last
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([window])).logits[0, len(window) - len(cont) :]
    expected = float(torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(cont)[:, None]).sum())
    assert scorer.score(context, [continuation]) == pytest.approx([expected], rel=1e-10, abs=0)
