"""Command-line flags derived from the frozen config dataclasses, so no command re-types a config's fields.

    add_flags(parser, EvictionConfig)            # --keep-last-n-blocks, --mask-delimiters/--no-..., ...
    config = from_flags(EvictionConfig, args)    # the same dataclass back, validated by its __post_init__

Field types map to argparse: `bool` -> `--name/--no-name`, `int`/`float`/`str` -> typed options,
`X | None` -> type X, where the word `none` gives None, `tuple[T, ...]` -> comma-separated Ts. A field
without a default is a positional argument (a tuple one takes one or more values), or a required option
when `options` names it. A field whose type is
itself a dataclass (a spec's `task: TaskConfig`) contributes that class's flags, addressed by dotted
paths in `skip`, `rename` and `defaults` (`"task.n_blocks"`); its flags are named by the field alone
(`--n-blocks`), and two fields that would share a flag are an error when the parser is built. Help text
is the field's entry in its class docstring (`name: text` lines), and every default is the dataclass's
own unless `defaults` replaces it for one command.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing


def _field_help(cls) -> dict[str, str]:
    """`name: text` entries of a dataclass docstring, one indent in (continuation lines, one more, joined)."""
    entries: dict[str, str] = {}
    current = None
    for line in inspect.cleandoc(cls.__doc__ or "").splitlines():
        match = re.match(r"(\w+): (.*)", line)
        if match and match.group(1) in {f.name for f in dataclasses.fields(cls)}:
            current = match.group(1)
            entries[current] = match.group(2).strip()
        elif current and line.startswith(" " * 4) and line.strip():
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


def _tuple_parser(item):
    def parse(text: str) -> tuple:
        return tuple(item(x.strip()) for x in text.split(",") if x.strip())
    parse.__name__ = f"comma-separated {item.__name__}s"
    return parse


def _is_config(kind) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def add_flags(parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = (),
              rename: dict[str, str] | None = None, defaults: dict | None = None, options: tuple[str, ...] = (),
              _prefix: str = "", _base=None) -> None:
    """Add one argument per field of the dataclass `cls` (module docstring); `skip` leaves fields out (they
    keep their defaults), `rename` maps a field's path to its flag name, `defaults` replaces a field's
    default for this command, `options` makes required fields `--flag`s instead of positionals. A nested
    config's defaults are those of the enclosing field's default."""
    hints = typing.get_type_hints(cls)
    helps = _field_help(cls)
    rename, defaults = rename or {}, defaults or {}
    group = parser.add_argument_group(cls.__name__)
    for field in dataclasses.fields(cls):
        path = _prefix + field.name
        if path in skip:
            continue
        kind, optional = _optional(hints[field.name])
        default = getattr(_base, field.name) if _base is not None else _default(field)
        if _is_config(kind):
            add_flags(parser, kind, skip=skip, rename=rename, defaults=defaults, options=options, _prefix=path + ".",
                      _base=None if default is dataclasses.MISSING else default)
            continue
        default = defaults.get(path, default)
        name = rename.get(path, field.name).replace("_", "-")
        text = helps.get(field.name, "").replace("%", "%%")  # argparse formats help with %
        if default is dataclasses.MISSING and path in options:  # required option
            group.add_argument("--" + name, dest=path, metavar=name.upper().replace("-", "_"), required=True,
                               type=_parser_for(kind, optional), help=text)
            continue
        if default is dataclasses.MISSING:  # required: positional
            if typing.get_origin(kind) is tuple:
                group.add_argument(path, metavar=name.upper(), nargs="+", type=typing.get_args(kind)[0], help=text)
            else:
                group.add_argument(path, metavar=name.upper(), type=_parser_for(kind, optional), help=text)
            continue
        flag, metavar = "--" + name, name.upper().replace("-", "_")
        if kind is bool:
            group.add_argument(flag, dest=path, action=argparse.BooleanOptionalAction, default=default, help=text)
        elif typing.get_origin(kind) is tuple:
            shown = ",".join(map(str, default)) if default is not None else "none"
            group.add_argument(flag, dest=path, metavar=metavar, type=_tuple_parser(typing.get_args(kind)[0]),
                               default=default, help=f"{text} (default: {shown or 'none'})".strip())
        elif kind in (int, float, str):
            group.add_argument(flag, dest=path, metavar=metavar, type=_parser_for(kind, optional), default=default,
                               help=f"{text} (default: {default})".strip())
        else:
            raise TypeError(f"{cls.__name__}.{field.name}: no flag for type {kind!r}; skip it for this command")


def from_flags(cls, args: argparse.Namespace, _prefix: str = "", _base=None, **overrides):
    """The dataclass `cls` built from parsed flags (fields without a flag keep their defaults; nested config
    fields are built the same way); `overrides` replace top-level fields."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        path = _prefix + field.name
        kind, _ = _optional(hints[field.name])
        default = getattr(_base, field.name) if _base is not None else _default(field)
        if _is_config(kind) and field.name not in overrides:
            values[field.name] = from_flags(kind, args, path + ".",
                                            None if default is dataclasses.MISSING else default)
        elif hasattr(args, path):
            value = getattr(args, path)
            values[field.name] = tuple(value) if isinstance(value, list) else value
        elif default is not dataclasses.MISSING:
            values[field.name] = default
    return cls(**{**values, **overrides})


def parse(cls, argv: list[str] | None = None, description: str | None = None, **flag_options):
    """A script's options: the dataclass `cls` from the command line (`add_flags` options apply). Scripts
    declare their options as one frozen dataclass, nesting a runner's spec when they wrap one."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_flags(parser, cls, **flag_options)
    return from_flags(cls, parser.parse_args(argv))
