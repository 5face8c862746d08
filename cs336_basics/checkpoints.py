"""A run directory's checkpoints: `ckpt_{step:06d}.pt`, written atomically; list, find, prune, restore.

A training checkpoint is a `serialization.save_checkpoint` file (model, optimizer, iteration, the model config)
whose extra entries make a resume exact: the full `train_config`, the token count, the wall-clock seconds so far,
and the RNG states (`rng`: the batch sampler's numpy state, torch's, python's and on CUDA the device's).
"""

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cs336_basics.config import ModelConfig
from cs336_basics.model import TransformerLM
from cs336_basics.serialization import clean_state_dict, read_checkpoint

CHECKPOINT_RE = re.compile(r"^ckpt_(\d{6,})\.pt$")
STALE_TEMP_GLOB = ".ckpt_*.tmp"  # what files.atomic_write_bytes leaves when killed while writing a checkpoint


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / f"ckpt_{step:06d}.pt"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every ckpt_{step:06d}.pt in run_dir, oldest first; [] when run_dir does not exist."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for path in run_dir.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> Path:
    """A checkpoint file as given, or the newest ckpt_*.pt of a run directory; FileNotFoundError otherwise."""
    path = Path(path)
    if path.is_dir():
        found = list_checkpoints(path)
        if not found:
            raise FileNotFoundError(f"{what}={str(path)!r} is a directory with no ckpt_*.pt checkpoint in it")
        return found[-1][1]
    if not path.is_file():
        raise FileNotFoundError(f"{what}={str(path)!r} does not exist (give a checkpoint file or a run directory)")
    return path


def model_config_of(path: str | os.PathLike, what: str = "checkpoint") -> ModelConfig:
    """The ModelConfig saved in a checkpoint (a file, or a run directory's newest); ValueError when it has none."""
    return read_model_checkpoint(path, what)[0]


def read_model_checkpoint(
    path: str | os.PathLike, what: str = "checkpoint"
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The ModelConfig and model weights (torch.compile/DDP prefixes removed) of a checkpoint file, or of a run
    directory's newest checkpoint: the one way from a checkpoint to a model (`load_model`, export, `--init-from`).

    FileNotFoundError when there is no checkpoint; ValueError naming `what` when it has no model config."""
    checkpoint = resolve_checkpoint(path, what)
    payload = read_checkpoint(checkpoint)
    return saved_model_config(payload, checkpoint, what), clean_state_dict(payload["model"])


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", what: str = "checkpoint") -> TransformerLM:
    """Rebuild the TransformerLM of a checkpoint (a file, or a run directory's newest) with its weights, in eval mode.

    model = load_model("runs/ts", device="cuda")
    """
    config, weights = read_model_checkpoint(path, what)
    model = TransformerLM(config, device=device)
    model.load_state_dict(weights)
    return model.eval()


def saved_model_config(payload: dict, path, what: str) -> ModelConfig:
    """The ModelConfig in a checkpoint's already-read `payload`; ValueError when it has none."""
    saved = payload.get("config")
    if saved is None:
        raise ValueError(f"{what}: checkpoint {str(path)!r} has no model config; it was not written by the trainer")
    return ModelConfig(**saved)


def check_same_model(saved: ModelConfig, ours: ModelConfig, what: str, ignore: tuple[str, ...] = ()) -> None:
    """ValueError naming every field (but `ignore`d ones) where `ours` differs from the checkpoint's `saved`."""
    theirs, mine = saved.to_dict(), ours.to_dict()
    diff = [f"{k}={v!r} (checkpoint: {theirs[k]!r})" for k, v in mine.items() if theirs[k] != v and k not in ignore]
    if diff:
        raise ValueError(f"{what}: the model config differs from the checkpoint's: {', '.join(diff)}")


def prune_checkpoints(run_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints of run_dir (keep=0: delete none)."""
    if keep:
        for _, old in list_checkpoints(run_dir)[:-keep]:
            old.unlink(missing_ok=True)


def remove_stale_temps(run_dir: str | os.PathLike) -> None:
    """Delete the temporary files of checkpoint writes that a killed process left behind."""
    for stale in Path(run_dir).glob(STALE_TEMP_GLOB):
        stale.unlink(missing_ok=True)


def capture_rng_state(data_rng: np.random.Generator, device: torch.device) -> dict[str, Any]:
    """Every RNG a training step draws from: the batch sampler's, torch's, python's (and the CUDA device's)."""
    rng = {"numpy": data_rng.bit_generator.state, "torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def restore_rng_state(rng: dict[str, Any], data_rng: np.random.Generator, device: torch.device) -> None:
    """Put back what capture_rng_state saved (missing entries are left alone)."""
    if "numpy" in rng:
        data_rng.bit_generator.state = rng["numpy"]
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "python" in rng:
        version, internal, gauss = rng["python"]  # torch.load gives back lists where random.getstate() had tuples
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)


__all__ = [
    "checkpoint_path",
    "list_checkpoints",
    "resolve_checkpoint",
    "model_config_of",
    "read_model_checkpoint",
    "load_model",
    "saved_model_config",
    "check_same_model",
    "prune_checkpoints",
    "remove_stale_temps",
    "capture_rng_state",
    "restore_rng_state",
]
