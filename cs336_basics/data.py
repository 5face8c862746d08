"""Training batches from token files: flat arrays of ids, memory-mapped, never read whole.

A token file is a flat array of uint16/uint32 ids with a JSON sidecar `FILE.json` ({"dtype", "num_tokens", and from
`cs336-basics tokenize` the tokenizer's "vocab_size"}), or a `.npy` file. `load_tokens` maps one, `check_token_file`
checks one against a model before training starts, and `get_batch` (= `sample_starts` + `read_windows`) draws a
batch of windows from it.
"""

import json
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from cs336_basics.runtime import device_of

SIDECAR_DTYPES = ("uint16", "uint32")


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
    device = device_of(device)
    starts = sample_starts(len(dataset), context_length, batch_size, rng)
    return read_windows(dataset, starts, context_length, device)


def sample_starts(
    num_tokens: int, context_length: int, shape: int | tuple[int, ...], rng: np.random.Generator | None = None
) -> np.ndarray:
    """Window starts, uniform over 0 .. num_tokens - context_length - 1, as an int array of `shape`.

    With `rng` the draw is `rng.integers(0, n, size=shape)`, so one Generator drawing a (k, world, B) array gives
    the same starts as drawing k·world·B of them in order (the trainer relies on this for DDP and resume).
    """
    n_starts = num_tokens - context_length
    if n_starts <= 0:
        raise ValueError(
            f"dataset has {num_tokens} tokens; a window of context_length={context_length} needs at least "
            f"{context_length + 1}"
        )
    if rng is not None:
        return rng.integers(0, n_starts, size=shape)
    return np.random.randint(0, n_starts, size=shape)


def read_windows(
    dataset: npt.NDArray, starts: np.ndarray, context_length: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y), int64 (len(starts), T) on `device`: windows dataset[s : s+T+1] split into inputs and targets."""
    windows = dataset[starts[:, None] + np.arange(context_length + 1)].astype(np.int64)  # (B, T+1); reads B rows
    batch = torch.from_numpy(windows)  # (B, T+1)
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    else:
        batch = batch.to(device)
    return batch[:, :-1], batch[:, 1:]


def read_sidecar(path: str | Path) -> dict | None:
    """The JSON sidecar `<path>.json` of a flat token file, or None when there is none.

    Raises ValueError when its "dtype" is not one of SIDECAR_DTYPES.
    """
    path = Path(path)
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():
        return None
    meta = json.loads(sidecar.read_text())
    if meta.get("dtype") not in SIDECAR_DTYPES:
        raise ValueError(f"{sidecar}: dtype={meta.get('dtype')!r} must be one of {SIDECAR_DTYPES}")
    return meta


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
        meta = read_sidecar(path)
        if meta is None:
            raise ValueError(f"token file {str(path)!r} has no sidecar {path.name}.json; pass its dtype explicitly")
        dtype = meta["dtype"]
    if path.stat().st_size == 0:
        return np.zeros(0, np.dtype(dtype))  # np.memmap cannot map an empty file
    return np.memmap(path, dtype=np.dtype(dtype), mode="r")


def check_token_file(path: str | Path, vocab_size: int, context_length: int, what: str = "token file") -> int:
    """Check a token file against a model before training on it; return its length in tokens.

    Raises FileNotFoundError when it or its sidecar is missing, ValueError when its size disagrees with the
    sidecar, it is shorter than one window, or an id is >= vocab_size. The id scan reads the file in chunks; it is
    skipped for uint16 files when vocab_size >= 65536, and when the sidecar records the tokenizer's `vocab_size`
    (<= vocab_size, as `tokenize` writes it) or a `max_token_id`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} token file {str(path)!r} does not exist")
    meta = read_sidecar(path) if path.suffix != ".npy" else {}
    if meta is None:
        raise FileNotFoundError(
            f"{what} token file {str(path)!r} has no sidecar {path.name}.json (written by `cs336-basics tokenize`)"
        )
    if meta:
        itemsize, size = np.dtype(meta["dtype"]).itemsize, path.stat().st_size
        if size % itemsize != 0 or ("num_tokens" in meta and size // itemsize != meta["num_tokens"]):
            raise ValueError(
                f"{what} token file {str(path)!r} has {size} bytes, but its sidecar says "
                f"num_tokens={meta.get('num_tokens')} of {meta['dtype']}; the file is truncated or stale"
            )
    data = load_tokens(path)
    if len(data) < context_length + 1:
        raise ValueError(
            f"{what} token file {str(path)!r} has {len(data)} tokens; one window of context_length="
            f"{context_length} needs {context_length + 1}"
        )
    if data.dtype == np.uint16 and vocab_size >= 2**16:
        return len(data)
    if isinstance(meta.get("vocab_size"), int) and meta["vocab_size"] <= vocab_size:
        return len(data)  # written by `tokenize` with a tokenizer whose ids all fit
    max_id = meta.get("max_token_id")
    if max_id is None:
        chunk = 1 << 24
        max_id = max(int(data[i : i + chunk].max()) for i in range(0, len(data), chunk))
    if max_id >= vocab_size:
        raise ValueError(
            f"{what} token file {str(path)!r} holds token id {max_id}, which is >= vocab_size={vocab_size}; "
            "train with the tokenizer's vocabulary size (--vocab-size)"
        )
    return len(data)
