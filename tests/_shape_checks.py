"""The runtime checker that tests/conftest.py installs on cs336_basics.layers and nn_utils (tests only).

It is beartype restricted to the jaxtyping array annotations (Float[Tensor, " ... d_model"] and the like, alone or
in a union with None): shapes and dtypes of tensors are checked on every call, while scalar arguments are left to
the package's own validation, so an invalid `norm="middle"` still meets the ValueError whose message the error-path
tests check, not a beartype TypeCheckError.
"""

import typing

from beartype import beartype
from jaxtyping import AbstractArray


def _is_array_hint(hint) -> bool:
    if isinstance(hint, type) and issubclass(hint, AbstractArray):
        return True
    args = typing.get_args(hint)
    return bool(args) and all(_is_array_hint(a) or a is type(None) for a in args)


def array_typechecker(fn):
    """beartype over `fn`'s array annotations only."""
    annotations = getattr(fn, "__annotations__", None)
    if isinstance(annotations, dict):
        fn.__annotations__ = {k: v for k, v in annotations.items() if _is_array_hint(v)}
    return beartype(fn)
