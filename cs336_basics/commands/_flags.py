"""argparse flags made from dataclass fields: `--kebab-name`, the field's type, its `metadata["help"]`, and a
default shown in the help text that is the field's own default (never retyped).

Field metadata understood: help (required), group (argparse group title key), choices, unset (what a None
default means), flag (the flag's spelling, e.g. `--no-progress` for a True-by-default bool), aliases (older
spellings), metavar.
"""

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal

GROUP_TITLES = {
    "data": "data and run directory",
    "model": "model",
    "optimizer": "optimizer and schedule",
    "length": "batches and length",
    "run": "run",
}


def add_dataclass_flags(
    parser: argparse.ArgumentParser, cls, groups: tuple[str, ...] | None = None, suppress_defaults: bool = False
) -> None:
    """One flag per field of dataclass `cls` (only those whose metadata group is in `groups`, when given).

    With suppress_defaults the parsed namespace holds only the flags typed on the command line (so that a config
    file or a saved run can supply the rest); the help text still shows the dataclass default.
    """
    made: dict[str, argparse._ArgumentGroup] = {}
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta or (groups is not None and meta.get("group") not in groups):
            continue
        title = GROUP_TITLES.get(meta.get("group"), meta.get("group") or "options")
        group = made.get(title) or made.setdefault(title, parser.add_argument_group(title))
        flags = [meta.get("flag", "--" + f.name.replace("_", "-")), *meta.get("aliases", ())]
        default = f.default if f.default is not dataclasses.MISSING else None
        kwargs: dict[str, Any] = {"dest": f.name, "help": _help(meta, default)}
        kwargs["default"] = argparse.SUPPRESS if suppress_defaults else default
        if _base_type(f.type) is bool:
            kwargs["action"] = "store_false" if default else "store_true"
        else:
            kind = _base_type(f.type)
            if typing.get_origin(kind) is Literal:
                kwargs["choices"] = typing.get_args(kind)
            else:
                kwargs["type"] = kind
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
            if "metavar" in meta:
                kwargs["metavar"] = meta["metavar"]
        group.add_argument(*flags, **kwargs)


def _base_type(annotation):
    """`int | None` -> int; a Literal stays a Literal."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (kind,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return kind
    return annotation


def _help(meta, default) -> str:
    text = meta["help"]
    if isinstance(default, bool):
        shown = None if meta.get("flag", "").startswith("--no-") else ("on" if default else "off")
    else:
        shown = meta.get("unset") if default is None else default
    return (text if shown is None else f"{text}; default {shown}").replace("%", "%%")
