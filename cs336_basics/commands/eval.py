"""`cs336-basics eval`: mean loss and perplexity of a checkpoint over a whole token file (`evaluate`)."""

import argparse
import json

from cs336_basics.commands._flags import module_docstring, signature_defaults


def add_parser(subparsers) -> None:
    description = module_docstring("cs336_basics.workflows.eval")
    batch = signature_defaults("cs336_basics.workflows.eval", "evaluate_tokens")["batch_size"]
    parser = subparsers.add_parser(
        "eval",
        help="mean loss and perplexity of a checkpoint over a whole token file",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="trainer checkpoint (ckpt_*.pt) or run directory (newest)")
    parser.add_argument("--data", required=True, help="token file (flat ids with a FILE.json sidecar, or .npy)")
    parser.add_argument("--context-length", type=int, default=None, help="window length; default the model's")
    parser.add_argument("--batch-size", type=int, default=batch, help=f"windows per forward pass; default {batch}")
    parser.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens; default all")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda[:N] or mps; default auto")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype; default float32"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from cs336_basics.checkpoints import load_model, resolve_checkpoint
    from cs336_basics.data import check_token_file, load_tokens
    from cs336_basics.runtime import resolve_device
    from cs336_basics.workflows.eval import evaluate_tokens

    checkpoint = resolve_checkpoint(args.checkpoint, what="--checkpoint")
    device = resolve_device(args.device)
    model = load_model(checkpoint, device)
    context = model.config.context_length if args.context_length is None else args.context_length
    if not 0 < context <= model.config.context_length:
        raise ValueError(
            f"--context-length={context} must be in [1, {model.config.context_length}] (the model's context length)"
        )
    check_token_file(args.data, model.config.vocab_size, 1, what="--data")
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
