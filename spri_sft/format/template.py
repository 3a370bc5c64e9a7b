"""Chat templates for assistant-only loss, and a check that the loss really covers what it must.

TRL's `SFTTrainer(assistant_only_loss=True)` builds its loss mask with
`tokenizer.apply_chat_template(..., return_assistant_tokens_mask=True)`, which marks the characters a template
writes between `{% generation %}` and `{% endgeneration %}`. Most templates have no such markers (SmolLM2's has
none), and TRL 1.16 patches only the templates it knows byte for byte.

`training_chat_template(tokenizer, fallback=None)` returns a template that renders exactly the tokenizer's own
text, with each assistant message's content *and* its end-of-turn token inside the markers, so the model learns
to stop. It takes the first of:

1. the tokenizer's template, if it already has `{% generation %}` markers;
2. TRL's training variant (`trl.chat_template_utils.get_training_chat_template`: Qwen2.5/3, Llama 3, Gemma,
   Phi-3, GPT-OSS, ... matched byte for byte);
3. for a ChatML template (`<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, optionally preceded by a
   default system message when the conversation has none, as in SmolLM2): the ChatML training template below
   with the same default system message, used only after it has rendered the same text as the original on
   every probe conversation (with and without system message, one and two turns, with and without generation
   prompt);
4. for a tokenizer without a template: the Alpaca format with `fallback="alpaca"` (the published setup's format
   for base models), EOS inside the markers, and the BOS token first when the tokenizer puts one in front of
   plain text (Llama-3.1, Mistral and Gemma do; evaluation tokenizes that way, so training rows must start the
   same). `template="alpaca"` takes it first, even over a shipped chat template (the paper trains its base
   students on Alpaca, §5.2).

Any other template (Mistral's `[INST]` family, say) raises `UnmarkableTemplateError`. Training then keeps the
model's own template and marks assistant turns by rendering prefixes instead (`encode_with_prefix_masks`): an
assistant turn is the text that rendering the conversation through it adds to rendering the conversation up to
it with the generation prompt, i.e. its content and end-of-turn token. That needs a template under which each
shorter conversation renders as a prefix of the longer one; a row where it does not is refused, never guessed.
`use_training_template(tokenizer)` takes whichever of the two applies.

`check_template(tokenizer, conversations)` renders real rows with the tokenizer's current template, runs them through
the collator training will use, and raises `TemplateError` when a row trains no token, when the EOS token ending an
assistant turn would get no label, or when a row does not start with exactly one BOS token although the tokenizer
puts one in front of plain text.

The end-of-turn token: Gemma-it's tokenizer EOS is `<eos>`, but its turns end with `<end_of_turn>`. TRL's remedy is
`SFTConfig.eos_token`, which `SFTTrainer` applies to the tokenizer when it is built; `use_eos_token` applies it
first, so the template check sees the token training will teach.

Imports: the tokenizer API of transformers, TRL (inside the functions: importing its trainer takes seconds),
`spri_sft.errors`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spri_sft.errors import UserError

logger = logging.getLogger(__name__)

FALLBACKS = ("alpaca",)

# ChatML with the assistant's content and `<|im_end|>` inside the markers; the newline after `<|im_end|>` stays
# outside: the model stops at `<|im_end|>` and never writes it. `__DEFAULT_SYSTEM__` is replaced by the block that
# writes the original template's default system message (or by nothing).
CHATML_TRAINING_TEMPLATE = """\
{%- for message in messages %}
    __DEFAULT_SYSTEM__
    {%- if message['role'] == 'assistant' %}
        {{- '<|im_start|>assistant\\n' }}
        {%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}
        {{- '\\n' }}
    {%- else %}
        {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}"""

_DEFAULT_SYSTEM_BLOCK = "{%- if loop.first and messages[0]['role'] != 'system' %}{{- __TEXT__ }}{%- endif %}"

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)

# Stanford Alpaca's prompt (no `### Input:` section: a prompt's context is already part of the user message).
# A system message replaces the preamble. EOS ends every response, inside the markers. No BOS is written here:
# `alpaca_template(tokenizer)` puts it in front for a tokenizer that adds one to plain text, because
# `apply_chat_template(tokenize=True)` adds no special tokens and rows start exactly as the text does.
ALPACA_TEMPLATE = """\
{%- if messages[0]['role'] == 'system' %}
    {{- messages[0]['content'] + '\\n\\n' }}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {{- '__PREAMBLE__\\n\\n' }}
    {%- set loop_messages = messages %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {{- '### Instruction:\\n' + message['content'] + '\\n\\n' }}
    {%- elif message['role'] == 'assistant' %}
        {{- '### Response:\\n' }}
        {%- generation %}{{- message['content'] + eos_token }}{%- endgeneration %}
        {%- if not loop.last %}{{- '\\n\\n' }}{%- endif %}
    {%- else %}
        {{- raise_exception('The Alpaca template renders system, user and assistant messages, not ' + message['role']) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '### Response:\\n' }}
{%- endif %}""".replace("__PREAMBLE__", ALPACA_PREAMBLE)


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts its BOS token in front of plain text (`tokenizer(text)`, as evaluation encodes)."""
    bos_id = tokenizer.bos_token_id
    return bos_id is not None and tokenizer("a")["input_ids"][:1] == [bos_id]


def alpaca_template(tokenizer: Any) -> str:
    """The Alpaca training template for this tokenizer: BOS first exactly when the tokenizer adds one to text."""
    return ("{{- bos_token }}\n" if adds_bos(tokenizer) else "") + ALPACA_TEMPLATE


def use_eos_token(tokenizer: Any, eos_token: str | None) -> None:
    """Make `eos_token` (SFTConfig's, e.g. Gemma-it's `<end_of_turn>`) the tokenizer's EOS, as SFTTrainer will."""
    if eos_token is None or eos_token == tokenizer.eos_token:
        return
    if eos_token not in tokenizer.get_vocab():
        raise TemplateError(
            f"eos_token {eos_token!r} is not a token of this tokenizer (its EOS is {tokenizer.eos_token!r}); give the "
            "token the chat template ends an assistant turn with"
        )
    tokenizer.eos_token = eos_token


# Conversations the ChatML training template must render exactly like the original before it is used.
_PROBE_TEXTS = ("What is 2 + 2?", "It is 4.\nAnything else?", " Leading space, trailing space ", "Ünïcode: ✓")
PROBE_CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": _PROBE_TEXTS[0]}],
    [{"role": "user", "content": _PROBE_TEXTS[0]}, {"role": "assistant", "content": _PROBE_TEXTS[1]}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": _PROBE_TEXTS[2]},
        {"role": "assistant", "content": _PROBE_TEXTS[3]},
    ],
    [
        {"role": "user", "content": _PROBE_TEXTS[0]},
        {"role": "assistant", "content": _PROBE_TEXTS[1]},
        {"role": "user", "content": _PROBE_TEXTS[2]},
        {"role": "assistant", "content": _PROBE_TEXTS[3]},
    ],
    [
        {"role": "system", "content": "Line one.\nLine two."},
        {"role": "user", "content": _PROBE_TEXTS[3]},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": _PROBE_TEXTS[1]},
    ],
]

_FIX_NO_TEMPLATE = (
    "Use `training_chat_template(tokenizer, fallback='alpaca')` (the Alpaca format, as the published setup used "
    "for base models), or set `tokenizer.chat_template` to a template that wraps each assistant message and its "
    "end-of-turn token in `{% generation %}...{% endgeneration %}`."
)


class TemplateError(UserError):
    """The chat template cannot give a correct assistant-only loss; the message says what to change."""


class UnmarkableTemplateError(TemplateError):
    """The template has no generation markers and none can be derived; `encode_with_prefix_masks` may still work."""


@dataclass(frozen=True)
class TemplateReport:
    """What `check_template` saw, for the training log."""

    rows: int
    tokens: int  # tokens in all rows
    trained_tokens: int  # tokens whose label survives the collator (label != -100)
    assistant_turns: int
    eos_trained: int  # assistant turns whose EOS token is trained; equals assistant_turns after a passing check
    # Rendered text tokenized with the tokenizer's defaults gets two BOS tokens (harmless to training).
    retokenized_double_bos: bool = False


TEMPLATES = ("model", "alpaca")


@dataclass
class TrainingTemplate:
    text: str
    source: str  # which rule of the module docstring gave it, as `spri-sft check-template` prints it


def choose_training_template(tokenizer: Any, fallback: str | None = None, template: str = "model") -> TrainingTemplate:
    """The training template and where it came from (see `training_chat_template`).

    `template="alpaca"` trains on the Alpaca format even when the tokenizer ships a chat template: the
    published setup's format for base (non-instruct) students, whose tokenizers often carry their instruct
    sibling's chat template although the base model was never trained on it.
    """
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if template not in TEMPLATES:
        raise TemplateError(f"Unknown training template {template!r}: use one of {list(TEMPLATES)}.")
    if fallback is not None and fallback not in FALLBACKS:
        raise TemplateError(f"Unknown chat template fallback {fallback!r}: use one of {list(FALLBACKS)} or none.")
    own = tokenizer.chat_template
    if isinstance(own, dict):  # a template shipped as named variants; `default` is the chat one
        own = own.get("default")
    if template == "alpaca" or not own:
        if template != "alpaca" and fallback != "alpaca":
            raise TemplateError(f"The tokenizer has no chat template. {_FIX_NO_TEMPLATE}")
        if tokenizer.eos_token is None:
            raise TemplateError(
                "The tokenizer has no EOS token, so the Alpaca template cannot end a response. Set "
                "`tokenizer.eos_token` first."
            )
        source = (
            "Alpaca (training_template: alpaca)"
            if template == "alpaca"
            else "Alpaca (the tokenizer has no chat template)"
        )
        return TrainingTemplate(alpaca_template(tokenizer), source)
    if has_generation_markers(own):
        return TrainingTemplate(own, "the model's own chat template (it has generation markers)")
    try:
        trl_template = get_training_chat_template(tokenizer)
    except ValueError:  # TRL does not know this template
        trl_template = None
    if trl_template is not None:
        return TrainingTemplate(trl_template, "TRL's training variant of the model's chat template")
    chatml = _chatml_training_template(tokenizer, own)
    if chatml is None:
        raise UnmarkableTemplateError(
            "The tokenizer's chat template has no `{% generation %}` markers, is not one TRL knows how to patch, "
            "and does not render ChatML (`<|im_start|>role\\ncontent<|im_end|>\\n`), so the assistant tokens "
            "cannot be marked for assistant-only loss. Give a chat template whose assistant turns (content and "
            "end-of-turn token) sit inside `{% generation %}...{% endgeneration %}`, or train on the whole "
            "sequence (`assistant_only_loss=False`)."
        )
    return TrainingTemplate(chatml, "ChatML training template, verified against the model's own")


def training_chat_template(tokenizer: Any, fallback: str | None = None, template: str = "model") -> str:
    """A chat template for `assistant_only_loss=True`: the tokenizer's text, assistant turns in generation markers.

    `fallback="alpaca"` gives the Alpaca format to a tokenizer that has no chat template; it is never used in
    place of an existing template unless `template="alpaca"` asks for it. Raises `TemplateError` when no
    template can be given (see the module docstring). Set the result as `tokenizer.chat_template` before
    building the `SFTTrainer`; TRL then uses it as is.
    """
    return choose_training_template(tokenizer, fallback, template).text


def use_training_template(
    tokenizer: Any, fallback: str | None = None, template: str = "model"
) -> Callable[[list[dict[str, Any]]], dict[str, list[int]]] | None:
    """Give the tokenizer its training chat template and return None; or, for a template that cannot be marked,
    keep the tokenizer's own and return the encoder that masks its assistant turns by prefix rendering."""
    try:
        tokenizer.chat_template = training_chat_template(tokenizer, fallback=fallback, template=template)
    except UnmarkableTemplateError:
        return functools.partial(encode_with_prefix_masks, tokenizer)
    return None


def encode_with_template(
    tokenizer: Any, assistant_only_loss: bool, conversation: list[dict[str, Any]]
) -> dict[str, list[int]]:
    """`input_ids` and `assistant_masks` of the conversation as SFTTrainer tokenizes it: the chat template's
    `{% generation %}` markers give the mask (every token is marked when not `assistant_only_loss`)."""
    encoded = tokenizer.apply_chat_template(
        conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=assistant_only_loss
    )
    ids = list(encoded["input_ids"])
    return {
        "input_ids": ids,
        "assistant_masks": list(encoded["assistant_masks"]) if assistant_only_loss else [1] * len(ids),
    }


def encode_with_prefix_masks(tokenizer: Any, conversation: list[dict[str, Any]]) -> dict[str, list[int]]:
    """`input_ids` of the conversation in the tokenizer's own template, and `assistant_masks` found by prefixes.

    The text of an assistant turn is `render(conversation[:i + 1])` minus `render(conversation[:i],
    add_generation_prompt=True)`; a token is in the mask when its characters overlap that text. The ids are those
    of `apply_chat_template(conversation)` (the rendered text tokenized without adding special tokens). Raises
    `TemplateError` when the renderings are not prefixes of each other or the tokenizer gives no offsets.
    """

    def render(messages: list[dict[str, Any]], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    if not getattr(tokenizer, "is_fast", False):
        raise TemplateError("Masking assistant turns by prefix rendering needs a fast tokenizer (character offsets).")
    text = render(conversation, False)
    spans = []
    for index, message in enumerate(conversation):
        if message.get("role") != "assistant":
            continue
        before, through = render(conversation[:index], True), render(conversation[: index + 1], False)
        if not (through.startswith(before) and text.startswith(through)):
            raise TemplateError(
                f"The chat template does not render this conversation's turns as prefixes of each other (assistant "
                f"message {index}: {before[-60:]!r} does not lead into {through[len(before) - 60 :][:120]!r}), so "
                "its assistant tokens cannot be told apart. Templates that move the system message to the last user "
                "turn (Mistral v0.3) do this: drop the system message (format's system_prompt), or give a chat "
                "template with `{% generation %}` markers."
            )
        spans.append((len(before), len(through)))
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [
        int(any(start < span_end and end > span_start for span_start, span_end in spans))
        for start, end in encoded["offset_mapping"]
    ]
    return {"input_ids": list(encoded["input_ids"]), "assistant_masks": mask}


def check_template(
    tokenizer: Any,
    conversations: list[list[dict[str, Any]]],
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]] | None = None,
    encode: Callable[[list[dict[str, Any]]], dict[str, list[int]]] | None = None,
) -> TemplateReport:
    """Check that training on `conversations` with the tokenizer's current chat template trains what it must.

    Each row is tokenized as `SFTTrainer` does (`apply_chat_template(return_assistant_tokens_mask=True)`, or
    `encode` when given, e.g. `encode_with_prefix_masks`; labels -100 outside the assistant mask) and passed, as
    a batch of one, through `collator` (default: TRL's `DataCollatorForLanguageModeling` with the pad token
    `SFTTrainer` would pick). Raises `TemplateError` when the
    tokenizer has no chat template, a row has no assistant token in the mask, an assistant turn's EOS token is
    outside the mask or loses its label in the collator, or the rendered text tokenized with the tokenizer's
    defaults starts with two BOS tokens as training tokenizes it, or a row lacks the BOS the tokenizer puts in front
    of plain text. Returns a `TemplateReport` otherwise.
    """
    if not tokenizer.chat_template:
        raise TemplateError(f"The tokenizer has no chat template to train with. {_FIX_NO_TEMPLATE}")
    if not conversations:
        raise TemplateError("No conversations to check the chat template on: the dataset is empty.")
    eos_id, bos_id = tokenizer.eos_token_id, tokenizer.bos_token_id
    if eos_id is None:
        raise TemplateError("The tokenizer has no EOS token, so the model cannot learn to stop. Set `eos_token`.")
    if collator is None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        # SFTTrainer's rule: the tokenizer's pad token, else EOS.
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
        collator = DataCollatorForLanguageModeling(pad_token_id=pad_id)

    bos_expected = adds_bos(tokenizer)
    tokens = trained_tokens = turns = eos_trained = 0
    retokenized_double_bos = False
    for row, conversation in enumerate(conversations):
        if not any(message.get("role") == "assistant" for message in conversation):
            raise TemplateError(f"Row {row} has no assistant message, so assistant-only loss trains nothing on it.")
        encoded = encode(conversation) if encode is not None else encode_with_template(tokenizer, True, conversation)
        if bos_id is not None and list(encoded["input_ids"][:2]) == [bos_id, bos_id]:
            raise TemplateError(
                f"Row {row} starts with two BOS tokens {tokenizer.bos_token!r} as training tokenizes it: the chat "
                "template writes the BOS twice. Remove the duplicate from the template."
            )
        if bos_expected and list(encoded["input_ids"][:1]) != [bos_id]:
            raise TemplateError(
                f"Row {row} does not start with the BOS token {tokenizer.bos_token!r} as training tokenizes it, while "
                "the tokenizer puts one in front of plain text (so evaluation reads every prompt after a BOS): the "
                "chat template must write `{{ bos_token }}` first."
            )
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
        if bos_id is not None and tokenizer(text)["input_ids"][:2] == [bos_id, bos_id] and not retokenized_double_bos:
            # Training never retokenizes rendered text (TRL tokenizes conversations without adding special
            # tokens), so this is only a trap for code that does, such as a `text` dataset or an eval harness.
            retokenized_double_bos = True
            logger.info(
                "The chat template writes the BOS token %r and the tokenizer adds another by default: rendered text "
                "tokenized with `tokenizer(text)` starts with two BOS tokens. Training is not affected; tokenize "
                "rendered text with add_special_tokens=False.",
                tokenizer.bos_token,
            )
        ids, mask = list(encoded["input_ids"]), list(encoded["assistant_masks"])
        spans = _runs(mask)
        if not spans:
            raise TemplateError(
                f"The chat template marks no assistant token in row {row}: it has no `{{% generation %}}` markers "
                "around assistant messages, so `assistant_only_loss=True` would train nothing. Set "
                "`tokenizer.chat_template = training_chat_template(tokenizer)`."
            )
        labels = [token if keep else -100 for token, keep in zip(ids, mask)]  # as SFTTrainer builds them
        collated = collator([{"input_ids": ids, "labels": labels}])["labels"][0].tolist()
        tokens += len(ids)
        trained_tokens += sum(label != -100 for label in collated)
        for start, end in spans:
            turns += 1
            eos_positions = [i for i in range(start, end) if ids[i] == eos_id]
            if not eos_positions:
                raise TemplateError(
                    f"The EOS token {tokenizer.eos_token!r} is not inside the assistant mask of row {row} (masked "
                    f"text: {tokenizer.decode(ids[start:end])!r}), so the model would never learn to stop. Put the "
                    "end-of-turn token inside `{% generation %}...{% endgeneration %}` (see "
                    "`training_chat_template`), or make the template's end-of-turn token the EOS token."
                )
            if any(collated[i] != eos_id for i in eos_positions):
                raise TemplateError(
                    f"The collator drops the label of the EOS token {tokenizer.eos_token!r} (row {row}), so the "
                    "model would never learn to stop. transformers' `DataCollatorForLanguageModeling` sets the "
                    "label of every token equal to `pad_token_id` to -100"
                    + (" and here pad_token == eos_token" if tokenizer.pad_token_id == eos_id else "")
                    + ". Use TRL's collator (the `SFTTrainer` default, which pads labels with -100 by position), "
                    "or a pad token that differs from EOS."
                )
            eos_trained += 1
    return TemplateReport(len(conversations), tokens, trained_tokens, turns, eos_trained, retokenized_double_bos)


def _chatml_training_template(tokenizer: Any, template: str) -> str | None:
    """The ChatML training template with the original's default system message, if it renders like `template`."""
    from jinja2 import TemplateError as JinjaError

    def render(chat_template: str, conversation: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            conversation, chat_template=chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    user_only = PROBE_CONVERSATIONS[0]
    plain = f"<|im_start|>user\n{user_only[0]['content']}<|im_end|>\n"
    try:
        rendered = render(template, user_only, False)
    except JinjaError:
        return None
    if not rendered.endswith(plain):
        return None
    head = rendered[: -len(plain)]
    default_system = re.fullmatch(r"<\|im_start\|>system\n(.*)<\|im_end\|>\n", head, re.DOTALL)
    if head and default_system is None:
        return None
    block = ""
    if default_system is not None:
        # A JSON string is a valid Jinja string literal (escapes included); the render check below proves it.
        literal = json.dumps(head, ensure_ascii=False)
        block = _DEFAULT_SYSTEM_BLOCK.replace("__TEXT__", literal)
    candidate = CHATML_TRAINING_TEMPLATE.replace("    __DEFAULT_SYSTEM__\n", f"    {block}\n" if block else "")
    for conversation in PROBE_CONVERSATIONS:
        for add_generation_prompt in (False, True):
            try:
                if render(template, conversation, add_generation_prompt) != render(
                    candidate, conversation, add_generation_prompt
                ):
                    return None
            except JinjaError:
                return None
    return candidate


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of 1s in `mask`."""
    runs, start = [], None
    for i, bit in enumerate([*mask, 0]):
        if bit and start is None:
            start = i
        elif not bit and start is not None:
            runs.append((start, i))
            start = None
    return runs
