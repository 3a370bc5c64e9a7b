"""The SPRI authors' prompt set, read at run time from the user's checkout of their code.

`loop.official_checkout: PATH` points at a clone of https://github.com/honglizhan/SPRI-public
(task 3, "SFT data", at commit e1acf35). That repository has no license, so this package never
contains its texts: it reads them from the checkout and the engine assembles them the way the
released task-3 scripts do. What is read, by name:

| name | from the checkout |
| --- | --- |
| principles_generate, principles_critique, principles_refine | `[task3]-sft/prompts-[sft]/instruct-stage1_*.txt` |
| response_generate, response_critique, response_refine | `[task3]-sft/prompts-[sft]/instruct-stage2_*.txt` |
| principles_examples | `seeds/seed-principles-6.jsonl`, as `### Question: …\\n### Principles: …\\n\\n` per pair |
| self_align_system | `[task3]-sft/watson_self_align_prompt.txt` |
| direct_system, direct_user | `01_gen_baseline_direct_responses.py`: the `general` task's two string literals |
| self_instruct_system | `02_gen_[self-instruct].py`: `input_first_template_for_gen` |
| self_refine_{answer,feedback,refine}_system | `04_gen_[self-refine]_responses.py`: its three `system_prompt=` literals, in order |
| seed_principles_system | `05_gen_[seed_principles]_responses.py`: `seed_principle_prompt` |

Files are read as the scripts read them (text mode, universal newlines: the critique files'
CRLF become LF). Literals are taken from the scripts with `ast`; the scripts never run. Only
the names a mode needs are read, and each problem (a missing file, a template without a
placeholder its script fills, a placeholder no script fills, a literal not found) is one
UserError naming the file, raised before any model is called.
"""

from __future__ import annotations

import ast
import json
import string
from functools import cache
from pathlib import Path

from spri_sft.errors import UserError

TASK3 = "[task3]-sft"
_PROMPTS = f"{TASK3}/prompts-[sft]"

# name -> (file relative to the checkout, placeholders its script fills with str.format, or None when
# the script uses the text as it is).
_TEMPLATE_FILES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "principles_generate": (f"{_PROMPTS}/instruct-stage1_01-principle_gen.txt", None),
    "principles_critique": (
        f"{_PROMPTS}/instruct-stage1_02-principle_critique.txt",
        ("orig_question", "orig_principle"),
    ),
    "principles_refine": (f"{_PROMPTS}/instruct-stage1_02-principle_refinement.txt", None),
    "response_generate": (f"{_PROMPTS}/instruct-stage2_01-gen_init_responses.txt", None),
    "response_critique": (
        f"{_PROMPTS}/instruct-stage2_02-response_critique.txt",
        ("orig_question", "orig_principle", "orig_response"),
    ),
    "response_refine": (f"{_PROMPTS}/instruct-stage2_02-response_refinement.txt", None),
    "self_align_system": (f"{TASK3}/watson_self_align_prompt.txt", None),
}
SEEDS_FILE = "seeds/seed-principles-6.jsonl"
DIRECT_SCRIPT = f"{TASK3}/01_gen_baseline_direct_responses.py"
SELF_INSTRUCT_SCRIPT = f"{TASK3}/02_gen_[self-instruct].py"
SELF_REFINE_SCRIPT = f"{TASK3}/04_gen_[self-refine]_responses.py"
SEED_PRINCIPLES_SCRIPT = f"{TASK3}/05_gen_[seed_principles]_responses.py"
_SELF_REFINE_NAMES = ("self_refine_answer_system", "self_refine_feedback_system", "self_refine_refine_system")

NAMES = (
    *_TEMPLATE_FILES,
    "principles_examples",
    "direct_system",
    "direct_user",
    "self_instruct_system",
    *_SELF_REFINE_NAMES,
    "seed_principles_system",
)


def official_texts(checkout: str, names: tuple[str, ...]) -> dict[str, str]:
    """The texts `names` from the checkout at `checkout`, checked; UserError on the first problem."""
    root = Path(checkout).expanduser()
    if not root.is_dir():
        raise UserError(f"loop.official_checkout: {root} is not a directory (clone github.com/honglizhan/SPRI-public)")
    return {name: _read(str(root.resolve()), name) for name in names}


@cache
def _read(root: str, name: str) -> str:
    # Cached: record ids are computed per prompt, and every one of them fingerprints these texts.
    base = Path(root)
    if name in _TEMPLATE_FILES:
        relative, placeholders = _TEMPLATE_FILES[name]
        text = _text(base, relative)
        if placeholders is not None:
            _check_placeholders(text, placeholders, base / relative)
        return text
    if name == "principles_examples":
        return _seed_examples(base)
    if name in ("direct_system", "direct_user"):
        literals = _branch_literals(base, DIRECT_SCRIPT, "general", ("system_message", "user_message"))
        if name == "direct_user":
            _check_placeholders(literals["user_message"], ("INPUT",), base / DIRECT_SCRIPT, what="its user_message")
            return literals["user_message"]
        return literals["system_message"]
    if name == "self_instruct_system":
        return _module_literal(base, SELF_INSTRUCT_SCRIPT, "input_first_template_for_gen")
    if name in _SELF_REFINE_NAMES:
        return _self_refine_systems(base)[_SELF_REFINE_NAMES.index(name)]
    if name == "seed_principles_system":
        return _module_literal(base, SEED_PRINCIPLES_SCRIPT, "seed_principle_prompt")
    raise KeyError(name)


def _text(base: Path, relative: str) -> str:
    path = base / relative
    if not path.is_file():
        raise UserError(f"loop.official_checkout: {path} not found (is {base} a checkout of SPRI-public?)")
    return path.read_text(encoding="utf-8")


def _check_placeholders(text: str, wanted: tuple[str, ...], path: Path, what: str = "template") -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as err:
        raise UserError(f"{path}: {what} is not a str.format template ({err})") from None
    for field in fields:
        if field not in wanted:
            raise UserError(f"{path}: {what} has the placeholder {{{field}}}, which the script never fills")
    for field in wanted:
        if field not in fields:
            raise UserError(f"{path}: {what} lacks the placeholder {{{field}}}")


def _seed_examples(base: Path) -> str:
    path = base / SEEDS_FILE
    block = ""
    for number, line in enumerate(_text(base, SEEDS_FILE).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: malformed JSON line ({err.msg})") from None
        for key in ("question", "principle"):
            if not isinstance(row.get(key) if isinstance(row, dict) else None, str):
                raise UserError(f"{path}:{number}: missing text field '{key}'")
        # 01_gen_principles.py's few-shot block, pair by pair.
        block += f"### Question: {row['question']}\n### Principles: {row['principle']}\n\n"
    if not block:
        raise UserError(f"{path}: no seed pairs")
    return block


def _parse(base: Path, relative: str) -> ast.Module:
    try:
        return ast.parse(_text(base, relative))
    except SyntaxError as err:
        raise UserError(f"{base / relative}:{err.lineno}: not Python ({err.msg})") from None


def _module_literal(base: Path, relative: str, name: str) -> str:
    for node in _parse(base, relative).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
    raise UserError(f"{base / relative}: no string assignment to '{name}' found")


def _branch_literals(base: Path, relative: str, task: str, names: tuple[str, ...]) -> dict[str, str]:
    """The string assignments inside `if FLAGS.task == "<task>":`."""
    for node in ast.walk(_parse(base, relative)):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            comparators = node.test.comparators
            if len(comparators) == 1 and isinstance(comparators[0], ast.Constant) and comparators[0].value == task:
                found = {
                    target.id: stmt.value.value
                    for stmt in node.body
                    if isinstance(stmt, ast.Assign)
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, str)
                    for target in stmt.targets
                    if isinstance(target, ast.Name)
                }
                missing = [n for n in names if n not in found]
                if missing:
                    raise UserError(f"{base / relative}: the '{task}' task sets no string '{missing[0]}'")
                return {n: found[n] for n in names}
    raise UserError(f"{base / relative}: no branch for the '{task}' task found")


def _self_refine_systems(base: Path) -> tuple[str, ...]:
    """The distinct `system_prompt=` string literals in source order: answer, feedback, refine."""
    calls = [n for n in ast.walk(_parse(base, SELF_REFINE_SCRIPT)) if isinstance(n, ast.Call)]
    calls.sort(key=lambda n: (n.lineno, n.col_offset))
    texts: list[str] = []
    for call in calls:
        for keyword in call.keywords:
            value = keyword.value
            if keyword.arg == "system_prompt" and isinstance(value, ast.Constant) and isinstance(value.value, str):
                if value.value not in texts:
                    texts.append(value.value)
    if len(texts) != len(_SELF_REFINE_NAMES):
        raise UserError(
            f"{base / SELF_REFINE_SCRIPT}: expected 3 distinct system_prompt literals "
            f"(answer, feedback, refine), found {len(texts)}"
        )
    return tuple(texts)
