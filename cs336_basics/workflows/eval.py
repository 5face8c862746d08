"""Evaluation over a whole token file: mean next-token loss (nats/token) and perplexity.

The file is cut into consecutive, non-overlapping windows of `context_length + 1` ids that share their boundary
id (window i covers ids [i·T, (i+1)·T]); each window predicts its T targets from the ids before them, and the last
window may be shorter. Every id but the first is predicted exactly once, so the mean is over len(file) - 1 targets.

    cs336-basics eval --checkpoint runs/tiny/ckpt_000200.pt --data data/val.bin --device cpu
"""

import contextlib
import math

import numpy as np
import torch

from cs336_basics.model import TransformerLM
from cs336_basics.nn_utils import cross_entropy


@torch.no_grad()
def evaluate_tokens(
    model: TransformerLM,
    data: np.ndarray,
    context_length: int | None = None,
    batch_size: int = 32,
    dtype: torch.dtype = torch.float32,
    max_tokens: int | None = None,
) -> dict:
    """{"loss": mean nats/token, "perplexity": exp(loss), "tokens": targets scored} over `data` (a 1-D id array).

    `context_length` (default: the model's) must not exceed the model's; `max_tokens` scores only a prefix.
    """
    model_context = model.config.context_length
    t = model_context if context_length is None else context_length
    if not isinstance(t, int) or not 0 < t <= model_context:
        raise ValueError(f"context_length={t} must be in [1, {model_context}] (the model's context length)")
    if batch_size <= 0:
        raise ValueError(f"batch_size={batch_size} must be positive")
    n = len(data) if max_tokens is None else min(len(data), max_tokens)
    if n < 2:
        raise ValueError(f"the token file has {n} tokens; evaluation needs at least 2")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    starts = np.arange(0, n - 1, t)
    full = starts[starts + t + 1 <= n]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    for i in range(0, len(full), batch_size):
        s = full[i : i + batch_size]
        windows = torch.from_numpy(data[s[:, None] + np.arange(t + 1)].astype(np.int64)).to(device)
        with autocast:
            logits = model(windows[:, :-1])
        total += float(cross_entropy(logits, windows[:, 1:])) * windows[:, 1:].numel()
        count += windows[:, 1:].numel()
    if len(full) < len(starts):  # the shorter last window
        tail = torch.from_numpy(np.asarray(data[starts[-1] : n]).astype(np.int64))[None].to(device)
        with autocast:
            logits = model(tail[:, :-1])
        total += float(cross_entropy(logits, tail[:, 1:])) * tail[:, 1:].numel()
        count += tail[:, 1:].numel()
    model.train(was_training)
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf"), "tokens": count}
