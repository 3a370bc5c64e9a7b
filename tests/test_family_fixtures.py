"""The family fixtures have their released checkpoints' layouts (tests/support/families.py's table).

Each value asserted here is read off the released tokenizer_config.json / generation_config.json of the model the
fixture stands for; a fixture that drifts from it would test the wrong layout.
"""

from __future__ import annotations

import pytest
from support.families import FAMILIES

CONVERSATION = [{"role": "user", "content": "What is rain?"}, {"role": "assistant", "content": "Water."}]

# family: (the tokenizer's BOS (None: it has none), its EOS, the rendered conversation (None: no template))
RELEASED = {
    "llama-3.1": ("<|begin_of_text|>", "<|end_of_text|>", "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge "
                  "Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user<|end_header_id|>"
                  "\n\nWhat is rain?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nWater.<|eot_id|>"),
    "llama-3.1-instruct": ("<|begin_of_text|>", "<|eot_id|>", "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting "
                           "Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|><|start_header_id|>user"
                           "<|end_header_id|>\n\nWhat is rain?<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
                           "\n\nWater.<|eot_id|>"),
    "mistral-v0.3": ("<s>", "</s>", None),
    "mistral-v0.3-instruct": ("<s>", "</s>", "<s>[INST] What is rain?[/INST] Water.</s>"),
    "gemma-2": ("<bos>", "<eos>", "<bos><start_of_turn>user\nWhat is rain?<end_of_turn>\n<start_of_turn>model\nWater.<end_of_turn>\n"),
    "gemma-2-it": ("<bos>", "<eos>", "<bos><start_of_turn>user\nWhat is rain?<end_of_turn>\n<start_of_turn>model\nWater.<end_of_turn>\n"),
    "qwen2.5-instruct": (None, "<|im_end|>", "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a "
                         "helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is rain?<|im_end|>\n<|im_start|>assistant"
                         "\nWater.<|im_end|>\n"),
}  # fmt: skip


def test_every_family_has_its_released_layout_listed():
    assert set(RELEASED) == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_tokenizer_bos_eos_and_chat_template_are_the_released_ones(name, family_dir):
    from transformers import AutoTokenizer

    family = FAMILIES[name]
    tokenizer = AutoTokenizer.from_pretrained(family_dir(name))
    bos, eos, rendered = RELEASED[name]
    assert (tokenizer.bos_token, tokenizer.eos_token) == (bos, eos)
    first = tokenizer("Rain falls.")["input_ids"][0]
    assert (first == tokenizer.bos_token_id) == (family.bos is not None)  # it adds its BOS in front, or (Qwen) has none
    if rendered is None:
        assert not tokenizer.chat_template
    else:
        assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False) == rendered


@pytest.mark.parametrize(
    "name, stops",
    [("llama-3.1", 128001), ("llama-3.1-instruct", [128001, 128008, 128009]), ("mistral-v0.3-instruct", 2),
     ("gemma-2-it", [1, 107]), ("qwen2.5-instruct", ["<|im_end|>", "<|endoftext|>"])],
)  # fmt: skip
def test_generation_config_stops_where_the_released_one_does(name, stops, family_dir):
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(family_dir(name))
    expected = (
        tokenizer.convert_tokens_to_ids(stops) if isinstance(stops, list) and isinstance(stops[0], str) else stops
    )
    assert GenerationConfig.from_pretrained(family_dir(name)).eos_token_id == expected


def test_gemma_2_alternates_sliding_window_layers_and_softcaps(family_dir):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(family_dir("gemma-2-it"))
    assert config.layer_types == ["sliding_attention", "full_attention"]
    assert (config.sliding_window, config.attn_logit_softcapping, config.final_logit_softcapping) == (4096, 50.0, 30.0)
    assert AutoConfig.from_pretrained(family_dir("gemma-2-it", sliding_window=16)).sliding_window == 16
