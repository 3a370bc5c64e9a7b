"""Tiny random-weight models laid out like the paper's students and Qwen2.5, built from scratch (no download).

What differs between model families is exactly what breaks training and scoring code written for one of them:
which token starts a sequence and whether the tokenizer adds it, which token ends an assistant turn (and whether
that is the tokenizer's EOS), the pad token or its absence, the chat template, the stop ids in
`generation_config.json`, and the architecture's quirks (Gemma-2's logit softcapping and alternating sliding-window
layers, Qwen2's attention biases, Llama-3.1's rope scaling). Each fixture here has its family's real layout,
written from the released checkpoints' `tokenizer_config.json`, `config.json` and `generation_config.json`:

| fixture | stands for | vocabulary | BOS (added?) | EOS (tokenizer) | turn ends with | pad | generation stops at |
| --- | --- | --- | --- | --- | --- | --- | --- |
| llama-3.1 | meta-llama/Llama-3.1-8B | real (llama-models' tiktoken file) | `<|begin_of_text|>` (yes) | `<|end_of_text|>` | (Alpaca: EOS) | none | 128001 |
| llama-3.1-instruct | meta-llama/Llama-3.1-8B-Instruct | real | `<|begin_of_text|>` (yes) | `<|eot_id|>` | `<|eot_id|>` | none | 128001, 128008, 128009 |
| mistral-v0.3 | mistralai/Mistral-7B-v0.3 | real (mistral-common's v3 SentencePiece) | `<s>` (yes) | `</s>` | (Alpaca: EOS) | none | 2 |
| mistral-v0.3-instruct | mistralai/Mistral-7B-Instruct-v0.3 | real | `<s>` (yes) | `</s>` | `</s>` | none | 2 |
| gemma-2 | google/gemma-2-9b | BPE trained here, Gemma's special ids | `<bos>` (yes) | `<eos>` | (Alpaca: EOS) | `<pad>` | 1 |
| gemma-2-it | google/gemma-2-9b-it | BPE trained here | `<bos>` (yes) | `<eos>` | `<end_of_turn>` (not EOS) | `<pad>` | 1, 107 |
| qwen2.5-instruct | Qwen/Qwen2.5-7B-Instruct | byte-level BPE trained here | none | `<|im_end|>` | `<|im_end|>` | `<|endoftext|>` | `<|im_end|>`, `<|endoftext|>` |

Chat templates: TRL's shipped copies of the real Llama-3.1, Gemma and Qwen2.5 templates
(`trl/chat_templates/`); the base Llama-3.1 and Gemma-2 tokenizers ship their instruct sibling's template, as the
released ones do. Mistral-Instruct-v0.3's layout is written here (below): `<s>[INST] user[/INST] answer</s>`, a
system message joined to the last user message; the base Mistral tokenizer has no template.

The models are two layers of hidden size 64 (bitsandbytes quantizes 4-bit NF4 blocks of 64 values, so QLoRA works
on them, on the CPU too). Llama-3.1's real vocabulary makes its embeddings the largest part (128,256 x 64 x 2).
"""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

HIDDEN = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)

# Mistral-Instruct-v0.3's rendering (its tool-calling branches left out): BOS once, `[INST] ` + user + `[/INST]`,
# ` ` + trimmed answer + EOS; a system message goes in front of the *last* user message, so rendering a longer
# conversation changes an earlier turn (which is why training masks its turns by prefix only without one).
MISTRAL_V03_TEMPLATE = """\
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.last and system_message is defined %}
            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + '[/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content']|trim + eos_token }}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}"""

# Llama 3's special tokens, ids 128000-128255, in order.
LLAMA3_SPECIAL = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|eot_id|>", "<|python_tag|>",
] + [f"<|reserved_special_token_{i}|>" for i in range(3, 248)]  # fmt: skip
LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

# Gemma's first ids: pad, eos, bos, unk, mask, then unused slots up to the turn markers at 106 and 107.
GEMMA_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[@BOS@]"]
GEMMA_SPECIAL += [f"<unused{i}>" for i in range(106 - len(GEMMA_SPECIAL))] + ["<start_of_turn>", "<end_of_turn>"]

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


@dataclass(frozen=True)
class Family:
    name: str
    student: str  # the released checkpoint it stands for
    recipe_dir: str  # recipes/<this>/ (sft/lora.yaml, sft/qlora.yaml); "" when the project has no recipe for it
    instruct: bool
    end_of_turn: str  # the token that ends an assistant turn in training rows
    bos: str | None  # the BOS the tokenizer adds in front of text (None: it adds none)
    generation_eos: tuple[str, ...]  # the tokens generation_config.json stops at
    architecture: str


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("llama-3.1", "meta-llama/Llama-3.1-8B", "llama-3.1-8b", False, "<|end_of_text|>", "<|begin_of_text|>",
               ("<|end_of_text|>",), "llama"),
        Family("llama-3.1-instruct", "meta-llama/Llama-3.1-8B-Instruct", "llama-3.1-8b-instruct", True, "<|eot_id|>",
               "<|begin_of_text|>", ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"), "llama"),
        Family("mistral-v0.3", "mistralai/Mistral-7B-v0.3", "mistral-7b-v0.3", False, "</s>", "<s>", ("</s>",),
               "mistral"),
        Family("mistral-v0.3-instruct", "mistralai/Mistral-7B-Instruct-v0.3", "mistral-7b-instruct-v0.3", True,
               "</s>", "<s>", ("</s>",), "mistral"),
        Family("gemma-2", "google/gemma-2-9b", "gemma-2-9b", False, "<eos>", "<bos>", ("<eos>",), "gemma2"),
        Family("gemma-2-it", "google/gemma-2-9b-it", "gemma-2-9b-it", True, "<end_of_turn>", "<bos>",
               ("<eos>", "<end_of_turn>"), "gemma2"),
        Family("qwen2.5-instruct", "Qwen/Qwen2.5-7B-Instruct", "", True, "<|im_end|>", None,
               ("<|im_end|>", "<|endoftext|>"), "qwen2"),
    )
}  # fmt: skip


def build_family(name: str, directory: Path, sliding_window: int | None = None) -> Path:
    """Save the tiny model and tokenizer of family `name` in `directory` (created) and return it.

    `sliding_window` overrides the window of a sliding-window family (Gemma-2's real one is 4096)."""
    import torch

    family = FAMILIES[name]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _TOKENIZERS[family.name.removesuffix("-instruct").removesuffix("-it")](family)
    tokenizer.save_pretrained(directory)
    ids = tokenizer.convert_tokens_to_ids
    torch.manual_seed(0)
    config = _config(family, len(tokenizer), ids, sliding_window)
    model = _model_class(family)(config)
    model.generation_config.bos_token_id = ids(family.bos) if family.bos else config.bos_token_id
    stops = [ids(token) for token in family.generation_eos]
    model.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    return directory


def _config(family: Family, vocab_size: int, ids, sliding_window: int | None):
    from transformers import Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

    # The config's own eos_token_id is what the released config.json holds (a list for Llama-3.1-Instruct).
    if family.architecture == "llama":
        eos = [ids(t) for t in family.generation_eos] if family.instruct else ids("<|end_of_text|>")
        return LlamaConfig(
            vocab_size=vocab_size, **HIDDEN, max_position_embeddings=131072, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192},
            tie_word_embeddings=False, bos_token_id=ids("<|begin_of_text|>"), eos_token_id=eos, initializer_range=0.3,
        )  # fmt: skip
    if family.architecture == "mistral":
        return MistralConfig(
            vocab_size=vocab_size, **HIDDEN, head_dim=16, max_position_embeddings=32768, rope_theta=1000000.0,
            sliding_window=sliding_window, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
            initializer_range=0.3,
        )  # fmt: skip
    if family.architecture == "gemma2":
        return Gemma2Config(
            vocab_size=vocab_size, **HIDDEN, head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=8192,
            sliding_window=sliding_window or 4096, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
            hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
            bos_token_id=2, initializer_range=0.3,
        )  # fmt: skip
    return Qwen2Config(
        vocab_size=vocab_size, **HIDDEN, max_position_embeddings=32768, rope_theta=1000000.0, use_sliding_window=False,
        tie_word_embeddings=False, bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
        initializer_range=0.3,
    )  # fmt: skip


def _model_class(family: Family):
    from transformers import Gemma2ForCausalLM, LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM

    return {"llama": LlamaForCausalLM, "mistral": MistralForCausalLM, "gemma2": Gemma2ForCausalLM,
            "qwen2": Qwen2ForCausalLM}[family.architecture]  # fmt: skip


def _trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / f"{name}.jinja").read_text(encoding="utf-8")


def _package_folder(package: str) -> Path:
    """Where a package's files are, without importing it: only its data files are read. The GPU check unpacks
    llama-models and mistral-common outside the import path (SPRI_SFT_FIXTURE_FILES): there, transformers goes into
    its Mistral integration whenever mistral_common is importable, and that needs pydantic, which it lacks."""
    import importlib.machinery
    import os
    import sys

    extra = [folder for folder in os.environ.get("SPRI_SFT_FIXTURE_FILES", "").split(os.pathsep) if folder]
    spec = importlib.machinery.PathFinder.find_spec(package, extra + sys.path)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"No module named {package!r}", name=package)
    return Path(next(iter(spec.submodule_search_locations)))


def _llama_tokenizer(family: Family):
    """Llama 3's real tiktoken vocabulary (shipped by `llama-models`), converted as transformers converts it."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(path: str) -> dict[bytes, int]:
            # tiktoken's file format (a base64 token and its rank per line), read without tiktoken, which the
            # GPU check's machine lacks.
            pairs = (line.split() for line in Path(path).read_bytes().splitlines() if line)
            return {base64.b64decode(token): int(rank) for token, rank in pairs}

    vocabulary = _package_folder("llama_models") / "llama3" / "tokenizer.model"
    backend = Converter(str(vocabulary), pattern=LLAMA3_PATTERN, extra_special_tokens=LLAMA3_SPECIAL).converted()
    bos = "<|begin_of_text|>"
    bos_id = backend.token_to_id(bos)
    # As the released tokenizer.json: BOS in front of every text (and of each text of a pair).
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=family.end_of_turn, model_max_length=131072,
        clean_up_tokenization_spaces=True, model_input_names=["input_ids", "attention_mask"],
    )  # fmt: skip
    tokenizer.chat_template = _trl_template("llama3_1")
    return tokenizer


def _mistral_tokenizer(family: Family):
    """Mistral v3's real SentencePiece model (shipped by `mistral-common`), converted as transformers converts it."""
    import tempfile

    from transformers import AutoTokenizer

    vocabulary = _package_folder("mistral_common") / "data" / "mistral_instruct_tokenizer_240323.model.v3"
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(vocabulary, Path(folder) / "tokenizer.model")
        config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                  "add_bos_token": True, "add_eos_token": False, "legacy": False, "pad_token": None}  # fmt: skip
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps(config))
        tokenizer = AutoTokenizer.from_pretrained(folder)
    if family.instruct:
        tokenizer.chat_template = MISTRAL_V03_TEMPLATE
    return tokenizer


def _gemma_tokenizer(family: Family):
    """Gemma's tokenizer class and special ids over a small BPE vocabulary (no PyPI package ships Gemma's)."""
    from tokenizers import pre_tokenizers
    from transformers import GemmaTokenizer

    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    # Trained on words that start with "▁", as SentencePiece learns them (the tokenizer itself does not split).
    words = pre_tokenizers.Split("▁", behavior="merged_with_next")
    vocab, merges = _train_bpe(GemmaTokenizer(), GEMMA_SPECIAL + byte_tokens, size=1200, pre_tokenizer=words)
    tokenizer = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tokenizer.chat_template = _trl_template("gemma")
    return tokenizer


def _qwen_tokenizer(family: Family):
    """Qwen2's tokenizer class (byte-level BPE, no BOS) over a small vocabulary; its special tokens after it."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_bpe(Qwen2Tokenizer(), [], size=1200, alphabet=pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate(t for t in vocab if t not in QWEN_SPECIAL)}
    for token in QWEN_SPECIAL:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        model_max_length=131072, errors="replace",
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = _trl_template("qwen2_5")
    return tokenizer


def _train_bpe(template_tokenizer, first: list[str], size: int, alphabet: list[str] | None = None, pre_tokenizer=None):
    """(vocab, merges) of a BPE trained with `template_tokenizer`'s normalizer and pre-tokenizer on the package's
    prompts and TruthfulQA's questions; `first` takes ids 0, 1, ..."""
    from tokenizers import Tokenizer, models, trainers

    source = template_tokenizer.backend_tokenizer
    backend = Tokenizer(models.BPE())
    backend.normalizer = source.normalizer
    backend.pre_tokenizer = pre_tokenizer or source.pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=size, special_tokens=first, initial_alphabet=alphabet or [])
    backend.train_from_iterator(_corpus(), trainer)
    learned = json.loads(backend.to_str())["model"]
    vocab = dict(sorted(learned["vocab"].items(), key=lambda item: item[1]))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    return vocab, merges


def _corpus() -> list[str]:
    from spri_sft.generate.prompts import PromptSet
    from spri_sft.truthfulqa_data import packaged_bytes

    prompts = PromptSet()
    texts = [pair["question"] + " " + pair["principles"] for pair in prompts.seed_pairs] + list(prompts.constitution)
    for row in json.loads(packaged_bytes()):  # TruthfulQA's questions and answers: scoring them is tokenized well
        texts.append(" ".join([row["question"], *row["mc2_targets"]]))
    return texts


_TOKENIZERS = {"llama-3.1": _llama_tokenizer, "mistral-v0.3": _mistral_tokenizer, "gemma-2": _gemma_tokenizer,
               "qwen2.5": _qwen_tokenizer}  # fmt: skip
