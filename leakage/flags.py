"""Command-line flags derived from the frozen config dataclasses, so no command re-types a config's fields.

    add_flags(parser, EvictionConfig)            # --keep-last-n-blocks, --mask-delimiters/--no-..., ...
    config = from_flags(EvictionConfig, args)    # the same dataclass back, validated by its __post_init__

Field types map to argparse: `bool` -> `--name/--no-name`, `int`/`float`/`str` -> typed options,
`X | None` -> type X, where the word `none` gives None, `tuple[int, ...]` -> comma-separated ints. Help text is the field's entry in the class
docstring (`name: text` lines), and every default is the dataclass's own.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing


def _field_help(cls) -> dict[str, str]:
    """`name: text` entries of a dataclass docstring (continuation lines joined)."""
    entries: dict[str, str] = {}
    current = None
    for line in (cls.__doc__ or "").splitlines():
        match = re.match(r"\s{4}(\w+): (.*)", line)
        if match and match.group(1) in {f.name for f in dataclasses.fields(cls)}:
            current = match.group(1)
            entries[current] = match.group(2).strip()
        elif current and line.startswith(" " * 8) and line.strip():
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def _optional(kind):
    """(inner type, True) for `X | None`, else (kind, False)."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(inner) == 1:
            return inner[0], True
    return kind, False


def _parser_for(kind, optional: bool):
    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        return kind(text)
    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def add_flags(parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = (),
              rename: dict[str, str] | None = None, defaults: dict | None = None) -> None:
    """Add one option per field of the dataclass `cls` (except `skip`); `rename` maps field -> flag name,
    `defaults` replaces a field's default for this command."""
    hints = typing.get_type_hints(cls)
    helps = _field_help(cls)
    rename = rename or {}
    group = parser.add_argument_group(cls.__name__)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + rename.get(field.name, field.name).replace("_", "-")
        kind, optional = _optional(hints[field.name])
        default = (defaults or {}).get(field.name, field.default)
        text = helps.get(field.name, "")
        if kind is bool:
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=default,
                               help=text)
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            parse = lambda text, item=item: tuple(item(x) for x in text.split(",") if x.strip())
            parse.__name__ = f"comma-separated {item.__name__}s"
            group.add_argument(flag, dest=field.name, type=parse, default=default,
                               help=f"{text} (default: {','.join(map(str, default)) or 'none'})".strip())
        elif kind in (int, float, str):
            group.add_argument(flag, dest=field.name, type=_parser_for(kind, optional), default=default,
                               help=f"{text} (default: {default})".strip())
        else:
            raise TypeError(f"{cls.__name__}.{field.name}: no flag for type {kind!r}")


def from_flags(cls, args: argparse.Namespace, **overrides):
    """The dataclass `cls` built from parsed flags (fields missing from `args` keep their defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**{**values, **overrides})
