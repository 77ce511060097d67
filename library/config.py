"""Typed configuration: frozen dataclasses overridden from `--key=value` arguments.

The nanoGPT configurator habit without its `exec`: every key must name a field of the dataclass, every value
is converted to the field's annotated type, and a wrong key or a wrong value is a `ConfigError` raised before
any work starts. Dict-valued fields (model keyword arguments, say) take dotted keys: `--model_kw.depth=4`.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Config:
    """The base of every config dataclass. A config that checks its values does so in `__post_init__`, calling
    `super().__post_init__()` first: a job's config usually combines several (SweepOptions + TrainConfig +
    DataOptions), and the chain runs every base's checks once, in method-resolution order."""

    def __post_init__(self) -> None:
        pass

    def check_final(self) -> None:
        """Checks too costly for every copy of a config (one that imports a library, say): `parse_job_config`
        runs them once, on the config the job runs with, not on its defaults nor on the copies that overriding
        makes. Call `super().check_final()` first."""

    def require(self, **checks: bool) -> None:
        """A ConfigError naming the first key whose check is False: `self.require(lr=self.lr > 0)`."""
        for key, ok in checks.items():
            if not ok:
                raise ConfigError(f"{key}={getattr(self, key)!r} is out of range")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown(key: str, known: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ConfigError(f"unknown config key {key!r} for {where}.{hint} Valid keys: {', '.join(sorted(known))}")


def _literal(text: str) -> Any:
    """Python literal if it parses as one (numbers, lists, dicts, True/None), else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _sequence(text: str) -> Any:
    """A command-line sequence: a Python literal, or bare words as the shell leaves them, `[a,b]` or `a,b`."""
    parsed = _literal(text)
    if isinstance(parsed, str) and ("," in parsed or parsed.startswith("[")):
        return [_literal(part.strip()) for part in parsed.strip("[]()").split(",") if part.strip()]
    return parsed


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert `value` (often a command-line string) to the annotated type `tp`, or raise ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return _literal(value) if isinstance(value, str) else value
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}={value!r}: " + "; ".join(errors))
    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(repr(a) for a in args)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{key}={value!r} is not a boolean (true/false)")
    if tp in (int, float):
        raw = _literal(value) if isinstance(value, str) else value
        kind = "an integer" if tp is int else "a number"
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or (tp is int and raw != int(raw)):
            raise ConfigError(f"{key}={value!r} is not {kind}")
        return tp(raw)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} is not a string")
        return value
    if origin in (tuple, list):
        items = _sequence(value) if isinstance(value, str) else value
        if isinstance(items, (int, float, str)):
            items = (items,)
        if not isinstance(items, (tuple, list)):
            raise ConfigError(f"{key}={value!r} is not a sequence")
        item_tp = args[0] if args else Any
        return origin(coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(items))
    if origin is dict or tp is dict:
        mapping = _literal(value) if isinstance(value, str) else value
        if not isinstance(mapping, dict):
            raise ConfigError(f"{key}={value!r} is not a mapping")
        return dict(mapping)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: cannot convert {value!r} to {tp}")


def _set_path(mapping: Mapping[str, Any], key: str, path: list[str], value: Any) -> dict[str, Any]:
    """A copy of `mapping` with `value` at `path` (nested dicts copied on the way, missing ones made)."""
    out = dict(mapping)
    head, rest = path[0], path[1:]
    if not rest:
        out[head] = value
        return out
    inner = out.get(head, {})
    if not isinstance(inner, Mapping):
        raise ConfigError(f"{key!r}: {head!r} holds {inner!r}, not a mapping to set {'.'.join(rest)!r} in")
    out[head] = _set_path(inner, key, rest, value)
    return out


def override(cfg: C, overrides: Mapping[str, Any]) -> C:
    """A copy of the dataclass `cfg` with `overrides` applied, type-checked; dotted keys reach into dict fields,
    nested ones too (`--space.model.improved_cnn.kernel=[3]`)."""
    hints = _hints(type(cfg))
    names = [f.name for f in dataclasses.fields(cfg)]
    changes: dict[str, Any] = {}
    for key, value in overrides.items():
        field, _, sub = key.partition(".")
        if field not in names:
            raise _unknown(key, names, type(cfg).__name__)
        tp = hints[field]
        if sub:
            if not (typing.get_origin(tp) is dict or tp is dict):
                raise ConfigError(f"config key {field!r} is not a mapping, so {key!r} is not a valid key")
            changes[field] = _set_path(changes.get(field, getattr(cfg, field)), key, sub.split("."),
                                       _literal(value) if isinstance(value, str) else value)
        else:
            changes[field] = coerce(key, value, tp)
    return dataclasses.replace(cfg, **changes)


def parse_argv(argv: Sequence[str]) -> dict[str, str | bool]:
    """`--key=value`, `--key value` and bare `--flag` (True) to a dict; dashes in keys become underscores."""
    out: dict[str, str | bool] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}: options are --key=value")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if eq:
            out[key] = value
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[key] = argv[i + 1]
            i += 1
        else:
            out[key] = True
        i += 1
    return out


WIDTH, INDENT = 116, " " * 27  # of `--help`: its lines, and the column where an option's description starts


def describe(cls: type) -> str:
    """Every field for `--help`: its name, type (a Literal's choices) and default, then the comment it has in its
    class's source, wrapped below it."""
    hints, docs = _hints(cls), field_docs(cls)
    lines = [f"{cls.__name__} options (--key=value; a dict's entries as --key.entry=value):"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        hint = hints[f.name]
        if typing.get_origin(hint) is Literal:
            tp = " | ".join(str(choice) for choice in typing.get_args(hint))
        else:
            tp = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        lines += textwrap.wrap(f"  --{f.name:<22} {tp:<28} default {default!r}", width=WIDTH, subsequent_indent=INDENT)
        lines += textwrap.wrap(docs[f.name], width=WIDTH, initial_indent=INDENT, subsequent_indent=INDENT)
    return "\n".join(lines)


def field_docs(cls: type) -> dict[str, str]:
    """Each field's comment in its class's source: the comment after it, with the comment lines right below that
    continue it ('' for a field with none, or where the source cannot be read)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment on a field it redefines wins
        if dataclasses.is_dataclass(klass):
            docs |= _field_comments(klass)
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(cls)}


def _field_comments(klass: type) -> dict[str, str]:
    """{field: comment} from the class body's source. A comment on its own line continues the field above it only
    when that field's line ended in a comment; otherwise (or after a blank line) it belongs to no field."""
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):
        return {}
    comments: dict[str, list[str]] = {}
    depth, field, line_start = 0, None, True
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for tok, following in zip(tokens, tokens[1:] + tokens[-1:]):
        if tok.type in (tokenize.INDENT, tokenize.DEDENT):
            depth += 1 if tok.type == tokenize.INDENT else -1
        elif tok.type == tokenize.COMMENT:
            own_line = not tok.line[:tok.start[1]].strip()
            if field and (not own_line or comments.get(field)):
                comments.setdefault(field, []).append(tok.string.lstrip("#").strip())
            elif own_line:
                field = None
        elif tok.type == tokenize.NL:
            field = field if tok.line.strip() else None  # a blank line ends a comment
        elif tok.type == tokenize.NEWLINE:
            line_start = True
        elif line_start:  # the first token of a statement: `name: type = default` in the class body is a field
            line_start = False
            field = tok.string if depth == 1 and tok.type == tokenize.NAME and following.string == ":" else None
    return {name: " ".join(text) for name, text in comments.items()}


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """A dataclass (or dict) as one flat {dotted.key: value} dict, for MLflow params."""
    items = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    flat: dict[str, Any] = {}
    for key, value in items.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def project(cfg: Any, cls: type[C]) -> C:
    """The fields of `cfg` that dataclass `cls` has, as a `cls`: a job config seen as one of its bases."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in names})


def digest(cfg: Any, ignore: Sequence[str] = ()) -> str:
    """A short digest of a config's values, less the fields in `ignore`: the same settings give the same key on
    any machine and in any order of the command line."""
    values = {k: v for k, v in flatten(cfg).items() if k.split(".")[0] not in ignore}
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=repr).encode()).hexdigest()[:8]
