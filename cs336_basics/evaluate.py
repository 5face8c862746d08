"""Evaluation over a whole token file: mean next-token loss (nats/token) and perplexity.

The file is cut into consecutive, non-overlapping windows of `context_length + 1` ids that share their boundary
id (window i covers ids [i·T, (i+1)·T]); each window predicts its T targets from the ids before them, and the last
window may be shorter. Every id but the first is predicted exactly once, so the mean is over len(file) - 1 targets.

    cs336-basics eval --checkpoint runs/tiny/ckpt_000200.pt --data data/val.bin --device cpu
"""

import contextlib
import json
import math
import os

import numpy as np
import torch

from .layers import TransformerLM
from .nn_utils import cross_entropy


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


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="mean loss and perplexity of a checkpoint over a whole token file",
        description=__doc__,
    )
    parser.add_argument("--checkpoint", required=True, help="trainer checkpoint (ckpt_*.pt)")
    parser.add_argument("--data", required=True, help="token file (flat ids with a FILE.json sidecar, or .npy)")
    parser.add_argument("--context-length", type=int, default=None, help="window length; default the model's")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per forward pass; default 32")
    parser.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens; default all")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda[:N] or mps; default auto")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype; default float32"
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from .generation import load_model
    from .train import check_token_file, resolve_device

    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"--checkpoint {args.checkpoint!r} does not exist")
    device = resolve_device(args.device)
    model = load_model(args.checkpoint, device)
    context = model.config.context_length if args.context_length is None else args.context_length
    if not 0 < context <= model.config.context_length:
        raise ValueError(
            f"--context-length={context} must be in [1, {model.config.context_length}] (the model's context length)"
        )
    check_token_file(args.data, model.config.vocab_size, 1, what="--data")
    from .data import load_tokens

    result = evaluate_tokens(
        model,
        load_tokens(args.data),
        context,
        args.batch_size,
        torch.bfloat16 if args.dtype == "bfloat16" else torch.float32,
        args.max_tokens,
    )
    print(json.dumps(result | {"checkpoint": args.checkpoint, "data": args.data}, indent=2))
    return 0
