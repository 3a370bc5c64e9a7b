"""Training chat templates: same text as the original, loss on assistant content + end-of-turn token, checks."""

from __future__ import annotations

import pytest
from conftest import CHATML_TEMPLATE

from spri_sft.format.template import (
    ALPACA_PREAMBLE,
    ALPACA_TEMPLATE,
    TemplateError,
    UnmarkableTemplateError,
    check_template,
    choose_training_template,
    encode_with_prefix_masks,
    training_chat_template,
)

CONVERSATIONS = [
    [{"role": "user", "content": "What is a principle?"}, {"role": "assistant", "content": "A rule to follow."}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a safe response."},
        {"role": "assistant", "content": "One that is honest,\nand kind."},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": " Hello there "},
        {"role": "user", "content": "Explain the principles."},
        {"role": "assistant", "content": "Be helpful and harmless."},
    ],
]

# SmolLM2-135M-Instruct's template: ChatML with a default system message when the conversation has none.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def assistant_spans(tokenizer, conversation) -> list[str]:
    """The text of each run of assistant-masked tokens, as the chat template's markers mask them."""
    encoded = tokenizer.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    return masked_text(tokenizer, encoded)


def masked_text(tokenizer, encoded) -> list[str]:
    """The text of each run of tokens in `encoded["assistant_masks"]`."""
    spans, current = [], []
    for token, masked in zip([*encoded["input_ids"], None], [*encoded["assistant_masks"], 0]):
        if masked:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    return spans


@pytest.mark.parametrize("original", [CHATML_TEMPLATE, SMOLLM2_TEMPLATE], ids=["chatml", "smollm2"])
def test_training_template_renders_the_original_text(tokenizer, original):
    from trl.chat_template_utils import has_generation_markers

    tokenizer.chat_template = original
    training = training_chat_template(tokenizer)

    assert has_generation_markers(training) and not has_generation_markers(original)
    for conversation in CONVERSATIONS:
        expected = tokenizer.apply_chat_template(conversation, tokenize=False)
        assert tokenizer.apply_chat_template(conversation, chat_template=training, tokenize=False) == expected


def test_mask_covers_exactly_assistant_content_and_end_of_turn(tokenizer):
    tokenizer.chat_template = training_chat_template(tokenizer)

    for conversation in CONVERSATIONS:
        expected = [m["content"] + "<|im_end|>" for m in conversation if m["role"] == "assistant"]
        assert assistant_spans(tokenizer, conversation) == expected


def test_default_system_message_stays_outside_the_mask(tokenizer):
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    tokenizer.chat_template = training_chat_template(tokenizer)

    conversation = CONVERSATIONS[0]
    assert "named SmolLM" in tokenizer.apply_chat_template(conversation, tokenize=False)
    assert assistant_spans(tokenizer, conversation) == ["A rule to follow.<|im_end|>"]


def test_trl_collator_keeps_eos_labels_when_pad_is_eos(tokenizer):
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenizer.chat_template = training_chat_template(tokenizer)
    tokenizer.pad_token = tokenizer.eos_token  # as in SmolLM2; the rows below have different lengths, so padding
    examples = []
    for conversation in CONVERSATIONS:
        encoded = tokenizer.apply_chat_template(
            conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = encoded["input_ids"], encoded["assistant_masks"]
        examples.append({"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)]})

    labels = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(examples)["labels"]

    turns = [sum(m["role"] == "assistant" for m in conversation) for conversation in CONVERSATIONS]
    assert (labels == tokenizer.eos_token_id).sum(dim=1).tolist() == turns


def test_check_passes_and_reports_every_eos_trained(tokenizer):
    tokenizer.chat_template = training_chat_template(tokenizer)

    report = check_template(tokenizer, CONVERSATIONS)

    assert report.assistant_turns == 4
    assert report.eos_trained == 4
    assert 0 < report.trained_tokens < report.tokens


def test_known_template_uses_trls_training_variant(tokenizer):
    from trl.chat_template_utils import qwen2_5_chat_template, qwen2_5_training_chat_template

    tokenizer.chat_template = qwen2_5_chat_template

    assert training_chat_template(tokenizer) == qwen2_5_training_chat_template


def test_template_with_markers_is_kept(tokenizer):
    tokenizer.chat_template = training_chat_template(tokenizer)
    marked = tokenizer.chat_template

    assert training_chat_template(tokenizer) == marked


def test_no_chat_template_and_no_fallback_is_an_error(tokenizer):
    tokenizer.chat_template = None

    with pytest.raises(TemplateError, match="no chat template.*fallback='alpaca'"):
        training_chat_template(tokenizer)


def test_check_catches_tokenizer_without_chat_template(tokenizer):
    tokenizer.chat_template = None

    with pytest.raises(TemplateError, match="no chat template"):
        check_template(tokenizer, CONVERSATIONS)


def test_alpaca_fallback_trains_response_and_eos(tokenizer):
    tokenizer.chat_template = None
    tokenizer.chat_template = training_chat_template(tokenizer, fallback="alpaca")

    text = tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False)
    assert text == (
        f"{ALPACA_PREAMBLE}\n\n### Instruction:\nWhat is a principle?\n\n### Response:\nA rule to follow.<|im_end|>"
    )
    assert assistant_spans(tokenizer, CONVERSATIONS[0]) == ["A rule to follow.<|im_end|>"]
    report = check_template(tokenizer, CONVERSATIONS)
    assert report.eos_trained == report.assistant_turns == 4


def test_alpaca_fallback_never_replaces_an_existing_template(tokenizer):
    training = training_chat_template(tokenizer, fallback="alpaca")

    assert training == training_chat_template(tokenizer)
    assert "### Instruction" not in training


def test_template_neither_chatml_nor_marked_is_an_error(tokenizer):
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"

    with pytest.raises(UnmarkableTemplateError, match="does not render ChatML"):
        training_chat_template(tokenizer)


def test_check_catches_template_without_markers(tokenizer):
    with pytest.raises(TemplateError, match="marks no assistant token"):
        check_template(tokenizer, CONVERSATIONS)


def test_check_catches_end_of_turn_outside_the_mask(tokenizer):
    tokenizer.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
        "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}"
        "{% else %}{{ m['content'] }}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    )

    with pytest.raises(TemplateError, match="not inside the assistant mask"):
        check_template(tokenizer, CONVERSATIONS)


def test_check_catches_hf_collator_masking_eos_as_padding(tokenizer):
    from transformers import DataCollatorForLanguageModeling

    tokenizer.chat_template = training_chat_template(tokenizer)
    tokenizer.pad_token = tokenizer.eos_token

    with pytest.raises(TemplateError, match="collator drops the label of the EOS"):
        check_template(tokenizer, CONVERSATIONS, collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))


def test_check_catches_a_template_that_writes_bos_twice(tokenizer):
    tokenizer.chat_template = "{{ bos_token }}" + training_chat_template(tokenizer)

    with pytest.raises(TemplateError, match="two BOS tokens"):
        check_template(tokenizer, CONVERSATIONS)


def test_check_reports_double_bos_when_rendered_text_is_retokenized(tokenizer):
    # The ChatML text starts with `<|im_start|>`, this tokenizer's BOS; make default tokenizing add one more.
    # Training tokenizes conversations without adding special tokens, so this is reported, not refused.
    tokenizer.chat_template = training_chat_template(tokenizer)
    tokenizer.add_bos_token = True
    assert tokenizer("x")["input_ids"][0] == tokenizer.bos_token_id

    assert check_template(tokenizer, CONVERSATIONS).retokenized_double_bos


def test_check_reports_no_double_bos_for_a_clean_tokenizer(tokenizer):
    tokenizer.chat_template = training_chat_template(tokenizer)
    assert not check_template(tokenizer, CONVERSATIONS).retokenized_double_bos


@pytest.mark.slow
def test_smollm2_training_template_passes_the_check():
    from transformers import AutoTokenizer

    from spri_sft.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct"))
    original = tokenizer.chat_template
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the setup where an id-based collator fails
    tokenizer.chat_template = training_chat_template(tokenizer)

    for conversation in CONVERSATIONS:
        expected = tokenizer.apply_chat_template(conversation, chat_template=original, tokenize=False)
        assert tokenizer.apply_chat_template(conversation, tokenize=False) == expected
    report = check_template(tokenizer, CONVERSATIONS)
    assert report.eos_trained == report.assistant_turns == 4
    assert assistant_spans(tokenizer, CONVERSATIONS[1]) == ["One that is honest,\nand kind.<|im_end|>"]


# Mistral-Instruct's [INST] family: no markers, unknown to TRL, not ChatML.
INST_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)
# Mistral v0.3's habit: the system message joins the *last* user message, so it moves as the conversation grows.
SYSTEM_ON_LAST_USER_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% endif %}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{% if loop.last and system is defined %}{{ '[INST] ' + system + ' ' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% else %}{{ ' ' + message['content'] + eos_token }}{% endif %}{% endfor %}"
)


def test_an_inst_template_cannot_be_marked(tokenizer):
    tokenizer.chat_template = INST_TEMPLATE
    with pytest.raises(UnmarkableTemplateError):
        training_chat_template(tokenizer)


def test_prefix_masks_cover_each_assistant_turn_and_its_eos_in_the_models_own_tokens(tokenizer):
    tokenizer.chat_template = INST_TEMPLATE
    conversation = CONVERSATIONS[2]

    encoded = encode_with_prefix_masks(tokenizer, conversation)

    assert encoded["input_ids"] == list(
        tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
    )
    assert masked_text(tokenizer, encoded) == ["  Hello there <|im_end|>", " Be helpful and harmless.<|im_end|>"]


def test_check_passes_on_an_inst_template_with_prefix_masks(tokenizer):
    tokenizer.chat_template = INST_TEMPLATE
    rows = [c for c in CONVERSATIONS if c[0]["role"] != "system"]

    report = check_template(tokenizer, rows, encode=lambda c: encode_with_prefix_masks(tokenizer, c))

    assert report.assistant_turns == report.eos_trained == 3


def test_a_template_that_moves_the_system_message_is_refused_for_prefix_masks(tokenizer):
    tokenizer.chat_template = SYSTEM_ON_LAST_USER_TEMPLATE
    assert encode_with_prefix_masks(tokenizer, CONVERSATIONS[0])["assistant_masks"].count(1) > 0
    with pytest.raises(TemplateError, match="not render this conversation's turns as prefixes"):
        encode_with_prefix_masks(tokenizer, CONVERSATIONS[1])


def test_check_template_command_falls_back_to_prefix_masks(tmp_path, capsys):
    from conftest import build_tiny_model

    from spri_sft.cli import main

    model_dir = build_tiny_model(tmp_path / "inst", chat_template=INST_TEMPLATE)
    assert main(["check-template", str(model_dir)]) == 0
    assert (
        "ok, trains on the model's own chat template, assistant turns masked by prefix rendering"
        in capsys.readouterr().out
    )


def test_check_template_command_says_alpaca_trains_when_asked_over_a_shipped_template(tmp_path, capsys):
    from conftest import build_tiny_model

    from spri_sft.cli import main

    model_dir = build_tiny_model(tmp_path / "inst", chat_template=INST_TEMPLATE)
    assert main(["check-template", str(model_dir), "--template", "alpaca"]) == 0
    assert "ok, trains on Alpaca (training_template: alpaca)" in capsys.readouterr().out


def test_the_alpaca_template_replaces_a_shipped_chat_template_when_asked(tokenizer):
    tokenizer.chat_template = INST_TEMPLATE
    chosen = choose_training_template(tokenizer, template="alpaca")
    assert chosen.text == ALPACA_TEMPLATE
    with pytest.raises(UnmarkableTemplateError):  # the fallback alone never replaces a shipped template
        choose_training_template(tokenizer, fallback="alpaca")
