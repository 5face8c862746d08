"""Checkpoints: {"format_version", "model", "optimizer", "iteration", "config", ...extra}, written atomically."""

import os
from pathlib import Path
from typing import IO, Any, BinaryIO

import torch

from cs336_basics.fileio import atomic_write_bytes

FORMAT_VERSION = 1
_REQUIRED_KEYS = ("model", "optimizer", "iteration")
# Prefixes that wrappers add to state-dict keys: torch.compile's OptimizedModule and DistributedDataParallel.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")

PathOrFile = str | os.PathLike | BinaryIO | IO[bytes]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under torch.compile (`_orig_mod`) and DDP (`module`) wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def clean_state_dict(state_dict: dict[str, Any]) -> dict[str, Any]:
    """Strip `_orig_mod.` / `module.` prefixes, so checkpoints of wrapped models load into plain ones."""
    cleaned = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        cleaned[key] = value
    return cleaned


def save_checkpoint(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    iteration: int,
    out: PathOrFile,
    config: dict | None = None,
    extra: dict | None = None,
) -> None:
    """Save model, optimizer and iteration (plus an optional model `config` dict and `extra` entries).

    A path is written atomically: to a temporary file in the same directory, fsynced, then renamed over `out`, so
    a crash mid-write leaves any previous checkpoint at `out` intact.
    """
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": clean_state_dict(unwrap_model(model).state_dict()),
        "optimizer": optimizer.state_dict(),
        "iteration": int(iteration),
    }
    if config is not None:
        payload["config"] = config
    for key, value in (extra or {}).items():
        if key in payload:
            raise ValueError(f"extra key {key!r} would overwrite a checkpoint field")
        payload[key] = value
    if isinstance(out, str | os.PathLike):
        atomic_write_bytes(out, lambda f: torch.save(payload, f))
    else:
        torch.save(payload, out)


def load_checkpoint(src: PathOrFile, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Restore `model` (and `optimizer`, when given) from `src`; return the saved iteration."""
    payload = read_checkpoint(src)
    unwrap_model(model).load_state_dict(clean_state_dict(payload["model"]))
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    return int(payload["iteration"])


def read_checkpoint(src: PathOrFile) -> dict[str, Any]:
    """The checkpoint dict, loaded on the CPU with weights_only=True, after checking its required keys.

    A path is opened here and torch.load given the file: torch.load reads a path ending in `.safetensors` as a
    safetensors file, while `save_checkpoint` writes torch's format whatever the name.
    """
    if isinstance(src, str | os.PathLike):
        if not Path(src).is_file():
            raise FileNotFoundError(f"checkpoint {str(src)!r} does not exist")
        with open(src, "rb") as f:
            payload = torch.load(f, map_location="cpu", weights_only=True)
    else:
        payload = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict):
        raise ValueError(f"checkpoint {_name(src)} holds a {type(payload).__name__}, not a checkpoint dict")
    missing = [k for k in _REQUIRED_KEYS if k not in payload]
    if missing:
        raise ValueError(f"checkpoint {_name(src)} is missing keys {missing}; it needs {list(_REQUIRED_KEYS)}")
    return payload


def _name(src: PathOrFile) -> str:
    return repr(str(src)) if isinstance(src, str | os.PathLike) else f"<{type(src).__name__}>"


__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "unwrap_model"]
