"""Training batches from token files: flat arrays of ids, memory-mapped, never read whole."""

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch


def get_batch(
    dataset: npt.NDArray,
    batch_size: int,
    context_length: int,
    device: str | torch.device,
    rng: np.random.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `batch_size` windows of `context_length + 1` ids; x is each window's head, y its tail.

    Start indices are uniform over every valid start 0 .. len(dataset) - context_length - 1. Only the sampled rows
    are read, so `dataset` can be an np.memmap of any size. `rng` (a numpy Generator) makes sampling reproducible;
    without it the global numpy RNG is used. On CUDA the batch goes through pinned memory with a non-blocking copy.
    Returns (x, y), int64 tensors of shape (batch_size, context_length) on `device`.
    """
    if batch_size <= 0 or context_length <= 0:
        raise ValueError(f"batch_size={batch_size} and context_length={context_length} must be positive")
    n_starts = len(dataset) - context_length
    if n_starts <= 0:
        raise ValueError(
            f"dataset has {len(dataset)} tokens; a window of context_length={context_length} needs at least "
            f"{context_length + 1}"
        )
    device = _resolve_device(device)
    if rng is not None:
        starts = rng.integers(0, n_starts, size=batch_size)
    else:
        starts = np.random.randint(0, n_starts, size=batch_size)
    windows = np.stack([np.asarray(dataset[s : s + context_length + 1]) for s in starts]).astype(np.int64)
    batch = torch.from_numpy(windows)  # (B, T+1)
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    else:
        batch = batch.to(device)
    return batch[:, :-1], batch[:, 1:]


def _resolve_device(device: str | torch.device) -> torch.device:
    """torch.device(device), raising RuntimeError (as torch does) for a device this machine does not have."""
    device = torch.device(device)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = device.index if device.index is not None else 0
        if index >= count:
            raise RuntimeError(f"device={str(device)!r} is not available: this machine has {count} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device={str(device)!r} is not available on this machine")
    return device


def load_tokens(path: str | Path, dtype: str | np.dtype | None = None) -> np.memmap:
    """Memory-map a flat token file written by `cs336-basics tokenize` (.bin with a .json sidecar, or .npy).

    The dtype comes from the sidecar `<path>.json` ("dtype" key) or the .npy header; pass `dtype` for a bare file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token file {str(path)!r} does not exist")
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r")
    if dtype is None:
        sidecar = path.with_name(path.name + ".json")
        if not sidecar.is_file():
            raise ValueError(f"token file {str(path)!r} has no sidecar {sidecar.name}; pass its dtype explicitly")
        dtype = json.loads(sidecar.read_text())["dtype"]
    return np.memmap(path, dtype=np.dtype(dtype), mode="r")
