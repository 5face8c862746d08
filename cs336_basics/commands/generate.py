"""`cs336-basics generate`: continue a prompt with a trained model (defaults: `generation.generate_text`'s)."""

import argparse

from cs336_basics.commands._flags import signature_defaults


def add_parser(subparsers) -> None:
    d = signature_defaults("cs336_basics.generation", "generate_text")
    parser = subparsers.add_parser(
        "generate",
        help="sample text from a trained checkpoint",
        description="Continue --prompt with a model rebuilt from a trainer checkpoint, sampling with temperature, "
        "top-k and top-p, stopping at <|endoftext|>. Example: cs336-basics generate --checkpoint "
        "runs/ts/ckpt_010000.pt --tokenizer tok/ts --prompt 'Once upon a time' --temperature 0.8 --top-p 0.95",
    )
    parser.add_argument("--checkpoint", required=True, help="trainer checkpoint (ckpt_*.pt) or run directory (newest)")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory (from train-bpe)")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument(
        "--max-new-tokens", type=int, default=d["max_new_tokens"], help=f"at most; default {d['max_new_tokens']}"
    )
    parser.add_argument(
        "--temperature", type=float, default=d["temperature"], help=f"0 = greedy; default {d['temperature']}"
    )
    parser.add_argument("--top-p", type=float, default=d["top_p"], help="nucleus sampling mass in (0, 1]; default off")
    parser.add_argument("--top-k", type=int, default=d["top_k"], help="sample among the k most likely; default off")
    parser.add_argument("--seed", type=int, default=d["seed"], help=f"sampling seed; default {d['seed']}")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda[:N] or mps; default auto")
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole prefix per token (no KV cache)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cs336_basics.checkpoints import load_model, resolve_checkpoint
    from cs336_basics.generation import check_sampling_args, generate_text
    from cs336_basics.runtime import resolve_device
    from cs336_basics.tokenizer import Tokenizer

    check_sampling_args(args.temperature, args.top_k, args.top_p)
    if args.max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens={args.max_new_tokens} must be >= 0")
    device = resolve_device(args.device)
    checkpoint = resolve_checkpoint(args.checkpoint, what="--checkpoint")
    if not Path(args.tokenizer).is_dir():
        raise FileNotFoundError(f"--tokenizer {args.tokenizer!r} is not a directory (write one with train-bpe)")
    tokenizer = Tokenizer.from_dir(args.tokenizer)
    model = load_model(checkpoint, device)
    text = generate_text(
        model,
        tokenizer,
        args.prompt,
        args.max_new_tokens,
        args.temperature,
        args.top_k,
        args.top_p,
        args.seed,
        use_cache=not args.no_cache,
    )
    print(args.prompt + text)
    return 0
