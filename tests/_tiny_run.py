"""A tiny training setup shared by the trainer, sweep and compare tests: a learnable toy language (vocab 40) and a
model that trains on it in a fraction of a second on one CPU thread."""

import json
from pathlib import Path

import numpy as np

TINY_RUN = dict(
    vocab_size=40,
    context_length=16,
    d_model=32,
    d_ff=64,
    num_layers=2,
    num_heads=4,
    batch_size=4,
    steps=12,
    lr=3e-3,
    warmup_steps=3,
    eval_interval=6,
    eval_batches=2,
    log_interval=1,
    checkpoint_interval=4,
    plot=False,
)


def toy_ids(n: int, rng: np.random.Generator) -> np.ndarray:
    """Mostly periodic ids with a little noise: a model learns them within a few steps."""
    return (np.arange(n) * 7 % 37 + rng.integers(0, 3, n)).astype(np.uint16)


def write_tokens(path: Path, ids, dtype: str = "uint16") -> Path:
    """A token file and its JSON sidecar, as `tokenize` writes them."""
    arr = np.asarray(ids, dtype=dtype)
    arr.tofile(path)
    path.with_name(path.name + ".json").write_text(json.dumps({"dtype": dtype, "num_tokens": int(arr.size)}))
    return path
