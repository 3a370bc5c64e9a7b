"""Dataclass configs read from YAML and overridden from the command line.

`spri-sft generate run.yaml --critic.base_url http://host:8000/v1 --loop.max_rounds 3` (or
`--config run.yaml`: the recipe is the first word or that flag, never both) loads the YAML into the
job's config dataclass, then applies each `--dotted.name value` override, type-checked against the
field it names. Unknown keys fail with the file or flag that carries them. `format_help` lists every
field with its type, default and help text, which is the documentation `--help` prints;
`--help=SECTION` (`help_request`, `format_section_help`) prints one section's.

A numeric field states its range in its metadata with `ge`, `gt`, `le`, `lt` (>=, >, <=, <):
`field(default=4, metadata={"help": "…", "ge": 1, "le": 5})`. A value outside it is refused when
the file or the flag sets it, naming both (`--loop.threshold: must be >= 1 and <= 5, got 9`),
so a bad setting stops the job before any model is loaded or called; `check_ranges` checks a
config built in code. `null` (for an optional field) is always in range.

A recipe may start from others: `include: shared.yaml` (or a list of files), each path relative to the
including file. `read_recipe` merges the included mappings under the including file's own keys: the
includer wins, a mapping merges key by key, a list or a scalar replaces. Included files may include
others; a cycle is refused. What a job writes beside its outputs (`dump_yaml`) is the resolved
config, with no `include:` left in it.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from spri_sft.errors import UserError

T = TypeVar("T")


def load_config(cls: type[T], argv: list[str]) -> T:
    """Build `cls` from a recipe (optional: `RECIPE.yaml` first or `--config RECIPE.yaml`) and `--a.b value`
    overrides in `argv`."""
    config_path, overrides = _split_argv(argv)
    data: dict[str, Any] = {}
    if config_path is not None:
        # Each file's own fields checked on their own first, so a bad one is named in the file that sets it.
        data = _resolve_includes(config_path, chain=(), check=lambda own, file: from_dict(cls, own, str(file))) or {}
    config = from_dict(cls, data, where=str(config_path or "defaults"))
    for dotted, raw in overrides:
        _apply_override(config, dotted, raw)
    return config


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config", prefix: str = "") -> T:
    """Build dataclass `cls` from nested dicts, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown field '{prefix}{unknown[0]}' (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value or {}, where, f"{prefix}{name}.")
        else:
            context = f"{where}: field '{prefix}{name}'"
            kwargs[name] = _check_range(_coerce(value, hint, context), fields[name], context)
    return cls(**kwargs)


def check_ranges(config: Any, where: str = "config", prefix: str = "") -> None:
    """Refuse any field of `config` (nested sections included) outside the range its metadata states."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, where, f"{prefix}{field.name}.")
        else:
            _check_range(value, field, f"{where}: field '{prefix}{field.name}'")


RANGE_KEYS = {
    "ge": (">=", float.__ge__),
    "gt": (">", float.__gt__),
    "le": ("<=", float.__le__),
    "lt": ("<", float.__lt__),
}


def _check_range(value: Any, field: dataclasses.Field, where: str) -> Any:
    bounds = [(key, field.metadata[key]) for key in RANGE_KEYS if key in field.metadata]
    if not bounds or value is None:
        return value
    if not all(RANGE_KEYS[key][1](float(value), float(bound)) for key, bound in bounds):
        rule = " and ".join(f"{RANGE_KEYS[key][0]} {bound}" for key, bound in bounds)
        raise UserError(f"{where}: must be {rule}, got {value!r}")
    return value


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_yaml(config: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def format_help(cls: type, prefix: str = "", instance: Any = None, omit: frozenset[str] = frozenset()) -> str:
    """One line per field: `--dotted.name TYPE (default: …)  help`, sections per nested dataclass; the dotted
    names in `omit` (fields a caller sets itself) are left out."""
    lines = []
    hints = typing.get_type_hints(cls)
    instance = cls() if instance is None else instance
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        if f"{prefix}{field.name}" in omit:
            continue
        if dataclasses.is_dataclass(hint):
            lines.append(f"\n  {prefix}{field.name}.*  — {_first_line(hint)}")
            lines.append(format_help(hint, f"{prefix}{field.name}.", getattr(instance, field.name), omit))
            continue
        default = getattr(instance, field.name)
        bounds = ", ".join(f"{RANGE_KEYS[k][0]} {field.metadata[k]}" for k in RANGE_KEYS if k in field.metadata)
        lines.append(
            f"  --{prefix}{field.name} {_type_name(hint)} (default: {default!r}{'; ' + bounds if bounds else ''})"
        )
        if field.metadata.get("help"):
            lines.append(f"        {field.metadata['help']}")
    return "\n".join(lines)


def _first_line(cls: type) -> str:
    """The class's docstring's first paragraph as one line (a summary may wrap in the source)."""
    return " ".join(inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].split())


def help_request(argv: list[str]) -> str | None:
    """What `--help` asks for: None (no help), "" (the command's help) or a section's dotted name
    (`--help=SECTION` or `--help SECTION`)."""
    for index, arg in enumerate(argv):
        option, eq, section = arg.partition("=")
        if option not in ("-h", "--help"):
            continue
        if eq:
            return section
        following = argv[index + 1] if index + 1 < len(argv) else ""
        return "" if following.startswith("-") else following
    return None


def sections(cls: type) -> dict[str, type]:
    """The nested dataclasses of `cls` by field name, in the order the class declares them."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])}


def format_section_help(cls: type, section: str, omit: frozenset[str] = frozenset()) -> str:
    """`--help=SECTION`: the fields of one section of `cls` (`generate`, or a nested one: `generate.loop`);
    a name that is no section is one line listing the sections there are."""
    target, instance, prefix = cls, cls(), ""
    for part in section.split("."):
        known = {name: hint for name, hint in sections(target).items() if f"{prefix}{name}" not in omit}
        if part not in known and not known:
            raise UserError(f"--help={section}: no section '{prefix}{part}' (there are none: --help lists every field)")
        if part not in known:
            listed = ", ".join(f"{prefix}{name}" for name in known)
            raise UserError(f"--help={section}: no section '{prefix}{part}' (sections: {listed})")
        target, instance, prefix = known[part], getattr(instance, part), f"{prefix}{part}."
    body = format_help(target, prefix, instance, omit)
    return f"  {section}.*  — {_first_line(target)}\n{body}"


def format_sections_overview(cls: type, command: str, omit: frozenset[str] = frozenset()) -> str:
    """A short help for a config made of sections: its own fields in full, each section in one line, and how to
    ask for one section's fields."""
    own = format_help(cls, omit=omit | {name for name in sections(cls)})
    width = max(map(len, sections(cls)))
    listed = [f"  {name:<{width}}  {_first_line(hint)}" for name, hint in sections(cls).items() if name not in omit]
    nested = [f"{name}.{inner}" for name, hint in sections(cls).items() for inner in sections(hint)]
    example = f"--help={next(iter(sections(cls)))}" + (f", or a part of one: --help={nested[0]}" if nested else "")
    return (
        own
        + f"\n\nSections (`spri-sft {command} --help=SECTION` lists one's fields, e.g. {example}):\n"
        + "\n".join(listed)
    )


def option_groups(argv: list[str]) -> list[list[str]]:
    """argv as groups of an option and the words before the next option: more than one word are the
    items of a list field, as a shell glob writes them (`--records shard-*/records.jsonl`)."""
    groups: list[list[str]] = []
    for arg in argv:
        if arg.startswith("--") or not groups:
            groups.append([arg])
        else:
            groups[-1].append(arg)
    return groups


def recipe_and_options(argv: list[str]) -> tuple[str | None, list[str]]:
    """The recipe `argv` names — its first word (`spri-sft run RECIPE.yaml ...`) or `--config RECIPE.yaml`, one
    or neither, never both — and the other options, in order."""
    positional = argv[0] if argv and not argv[0].startswith("-") else None
    flagged, options = None, []
    for option, *words in option_groups(argv[1:] if positional is not None else argv):
        if not option.startswith("--"):
            raise UserError(f"unexpected argument '{option}': options look like --name value")
        name, eq, value = option.partition("=")
        if name != "--config":
            options += [option, *words]
            continue
        values = ([value] if eq else []) + words
        if not values:
            raise UserError("option --config needs a value")
        if len(values) > 1:
            raise UserError(f"unexpected argument '{values[1]}': --config takes one file")
        flagged = values[0]
    if positional is not None and flagged is not None:
        raise UserError(f"two recipes: '{positional}' and --config {flagged}; give one (RECIPE.yaml or --config)")
    return positional if positional is not None else flagged, options


def _split_argv(argv: list[str]) -> tuple[Path | None, list[tuple[str, str | list[str]]]]:
    recipe, options = recipe_and_options(argv)
    overrides = []
    for option, *words in option_groups(options):
        name, eq, value = option[2:].partition("=")
        values = ([value] if eq else []) + words
        if not values:
            raise UserError(f"option --{name} needs a value")
        overrides.append((name.replace("-", "_"), values if len(values) > 1 else values[0]))
    return (Path(recipe) if recipe is not None else None), overrides


INCLUDE_KEY = "include"


def read_recipe(path: Path) -> Any:
    """The parsed YAML file with its `include:` files merged under its own keys (see the module's docstring);
    a missing file, a malformed one or a cycle of includes is one line naming the file."""
    return _resolve_includes(Path(path), chain=())


def _resolve_includes(path: Path, chain: tuple[Path, ...], check: Callable[[dict, Path], Any] | None = None) -> Any:
    data = read_yaml(path)
    if not isinstance(data, dict):
        return data
    own = {key: value for key, value in data.items() if key != INCLUDE_KEY}
    if check is not None:
        check(own, path)
    if INCLUDE_KEY not in data:
        return data
    included = data[INCLUDE_KEY]
    names = [included] if isinstance(included, str) else included
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise UserError(f"{path}: '{INCLUDE_KEY}' must be a file or a list of files, got {included!r}")
    chain = (*chain, path)
    merged: dict[str, Any] = {}
    for name in names:
        # Relative to the including file, so a recipe and the files it shares travel together.
        target = Path(os.path.normpath(path.parent / name))
        if any(target.resolve() == seen.resolve() for seen in chain):
            raise UserError(f"{path}: '{INCLUDE_KEY}: {name}' makes a cycle: {' -> '.join(map(str, (*chain, target)))}")
        if not target.is_file():
            raise UserError(f"{path}: '{INCLUDE_KEY}: {name}': file not found ({target})")
        shared = _resolve_includes(target, chain, check)
        if shared is None:  # an empty file adds nothing
            continue
        if not isinstance(shared, dict):
            raise UserError(
                f"{target}: an included file must be a mapping of fields, got a YAML {type(shared).__name__}"
            )
        merged = deep_merge(merged, shared)
    return deep_merge(merged, own)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over`'s keys on top: two mappings under one key merge key by key; anything else in `over`
    (a list, a scalar, null) replaces `base`'s value."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: Path) -> Any:
    """The parsed YAML file (None when empty); a missing or malformed file is one line with the line number."""
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: invalid YAML ({getattr(err, 'problem', err)})") from None


def _apply_override(config: Any, dotted: str, raw: str) -> None:
    target = config
    *parents, leaf = dotted.split(".")
    for depth, part in enumerate(parents):
        if isinstance(target, dict):
            # A free-form mapping (e.g. a pipeline's training arguments): the rest of the name is its keys.
            _set_in_mapping(target, parents[depth:] + [leaf], raw)
            return
        if not hasattr(target, part):
            raise UserError(f"--{dotted}: no such section '{part}'")
        target = getattr(target, part)
        if not (dataclasses.is_dataclass(target) or isinstance(target, dict)):
            raise UserError(f"--{dotted}: no such section '{part}'")
    if isinstance(target, dict):
        _set_in_mapping(target, [leaf], raw)
        return
    hints = typing.get_type_hints(type(target))
    if leaf not in hints:
        raise UserError(f"--{dotted}: unknown field '{leaf}'")
    if dataclasses.is_dataclass(hints[leaf]):
        raise UserError(f"--{dotted}: is a section; set one of its fields, e.g. --{dotted}.<field>")
    field = next(f for f in dataclasses.fields(target) if f.name == leaf)
    if isinstance(raw, list) and not _takes_a_list(hints[leaf]):
        raise UserError(f"--{dotted}: takes one value, got {len(raw)}: {' '.join(raw)}")
    setattr(target, leaf, _check_range(_coerce(_parse_value(raw), hints[leaf], f"--{dotted}"), field, f"--{dotted}"))


def _takes_a_list(hint: Any) -> bool:
    if get_origin(hint) in (typing.Union, types.UnionType):
        return any(_takes_a_list(arm) for arm in get_args(hint))
    return get_origin(hint) is list


def _parse_value(raw: str | list[str]) -> Any:
    """YAML parsing turns "3" into 3, "null" into None and "[a, b]" into a list, as in a config file;
    several words (`--records a.jsonl b.jsonl`) are a list of their values."""
    if isinstance(raw, list):
        return [_parse_value(item) for item in raw]
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if value is None and raw not in ("null", "None", "~"):
        return raw
    return value


def _set_in_mapping(mapping: dict, keys: list[str], raw: str) -> None:
    for key in keys[:-1]:
        mapping = mapping.setdefault(key, {})
        if not isinstance(mapping, dict):
            raise UserError(f"--{'.'.join(keys)}: '{key}' is not a mapping")
    mapping[keys[-1]] = _parse_value(raw)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arm, where)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0])
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], where) for v in value] if args else value
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping, got {value!r}")
        return value
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):  # an item of a list of sections, e.g. one of prompts.sources
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a mapping of {hint.__name__} fields, got {value!r}")
        return from_dict(hint, value, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise UserError(f"{where}: expected {_type_name(hint)}, got {value!r}")


def _type_name(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "{" + ",".join(map(str, args)) + "}"
    if origin is list:
        return f"list[{_type_name(args[0])}]" if args else "list"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))
