"""argparse flags made from dataclass fields: `--kebab-name`, the field's type, its `metadata["help"]`, and a
default shown in the help text that is the field's own default (never retyped).

Field metadata understood: help (required), group (argparse group title key), choices, unset (what a None
default means), flag (the flag's spelling, e.g. `--no-progress` for a True-by-default bool), aliases (older
spellings), metavar.
"""

import argparse
import ast
import dataclasses
import importlib.util
import operator
import types
import typing
from pathlib import Path
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


def module_docstring(module: str) -> str | None:
    """The docstring of `module` (e.g. "cs336_basics.train"), read from its source without importing it, so that
    `COMMAND --help` does not import torch."""
    return ast.get_docstring(_parse(module), clean=False)


def signature_defaults(module: str, function: str) -> dict[str, Any]:
    """The literal defaults of `function`'s parameters in `module`, read from its source without importing it
    (a default that is not a literal, e.g. `torch.float32`, is left out)."""
    tree = _parse(module)
    constants: dict[str, Any] = {}  # the module's NAME = literal assignments, which a default may name
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and (value := _literal(node.value, constants)) is not _NOT_LITERAL:
                    constants[target.id] = value
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            args = node.args
            positional = args.posonlyargs + args.args
            pairs = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True))
            pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
            return {a.arg: value for a, d in pairs if (value := _literal(d, constants)) is not _NOT_LITERAL}
    raise ValueError(f"{module} has no function {function!r}")


_NOT_LITERAL = object()


_ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Pow: operator.pow,
    ast.LShift: operator.lshift,
}


def _literal(node: ast.expr, constants: dict[str, Any]) -> Any:
    """A literal, a name in `constants`, or arithmetic on numbers (`4 * 2**20`); else _NOT_LITERAL."""
    if isinstance(node, ast.Name):
        return constants.get(node.id, _NOT_LITERAL)
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        left, right = _literal(node.left, constants), _literal(node.right, constants)
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (left, right))
        return _ARITHMETIC[type(node.op)](left, right) if numbers else _NOT_LITERAL
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _NOT_LITERAL


def _parse(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"module {module!r} not found")
    return ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
