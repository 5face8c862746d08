"""`cs336-basics probe`: train a small model on a synthetic task and report its exact match (`probes`)."""

import argparse
from pathlib import Path
from typing import get_args


def add_parser(subparsers) -> None:
    from ..layers import FeedForwardKind, NormPlacement, PositionKind
    from ..probes import ADD_DEFAULTS, TASKS, ProbeConfig

    d = ProbeConfig()
    p = subparsers.add_parser(
        "probe",
        help="train a small model on a synthetic task (reversal, inversion, copy, sort, shift, add) and report "
        "train / held-out exact match",
        description="Diagnostic probe: a prefix LM on [BOS] X [SEP] Y, loss on Y only, greedy generation of Y, "
        "exact-sequence match on training inputs and on held-out inputs that never occur in training. "
        "Example: cs336-basics probe reversal --sweep",
    )
    p.add_argument("task", help=f"the task: {', '.join(TASKS)}")
    p.add_argument(
        "--length",
        type=int,
        default=None,
        help=f"L, symbols in X, or digits per operand for add (default {d.length}; {ADD_DEFAULTS['length']} for add)",
    )
    p.add_argument(
        "--vocab",
        type=int,
        default=None,
        help=f"V, data symbols 0..V-1, or the base for add (default {d.vocab}; {ADD_DEFAULTS['vocab']} for add)",
    )
    p.add_argument("--shift", type=int, default=d.shift, help=f"k for the shift task, in [1, L-1] (default {d.shift})")
    p.add_argument("--train-size", type=int, default=d.train_size, help=f"training sequences (default {d.train_size})")
    p.add_argument(
        "--val-size",
        type=int,
        default=d.val_size,
        help=f"validation sequences for early stopping, 0 = none (default {d.val_size})",
    )
    p.add_argument(
        "--test-size", type=int, default=d.test_size, help=f"held-out test sequences (default {d.test_size})"
    )
    p.add_argument("--steps", type=int, default=d.steps, help=f"maximum optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"sequences per step (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate of the cosine schedule (default {d.lr})")
    p.add_argument(
        "--min-lr-ratio",
        type=float,
        default=d.min_lr_ratio,
        help=f"final lr as a fraction of --lr (default {d.min_lr_ratio})",
    )
    p.add_argument(
        "--warmup-steps", type=int, default=d.warmup_steps, help=f"linear warmup steps (default {d.warmup_steps})"
    )
    p.add_argument(
        "--weight-decay", type=float, default=d.weight_decay, help=f"AdamW weight decay (default {d.weight_decay})"
    )
    p.add_argument(
        "--grad-clip", type=float, default=d.grad_clip, help=f"max global gradient L2 norm (default {d.grad_clip})"
    )
    p.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help=f"steps between early-stop checks on train+val, 0 = never stop early (default {d.eval_every})",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=d.stop_after,
        help="consecutive early-stop checks with train and val exact (teacher forced) before stopping "
        f"(default {d.stop_after})",
    )
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed for data, init and batches (default {d.seed})")
    p.add_argument("--device", default=d.device, help=f"torch device (default {d.device})")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch, 0 = torch's default (default 1: fastest for these tiny models)",
    )
    p.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="model context in tokens (default: exactly what the task needs, 2L+1 or 3L+2 for add)",
    )
    p.add_argument("--d-model", type=int, default=d.d_model, help=f"model width (default {d.d_model})")
    p.add_argument("--num-layers", type=int, default=d.num_layers, help=f"Transformer blocks (default {d.num_layers})")
    p.add_argument("--num-heads", type=int, default=d.num_heads, help=f"attention heads (default {d.num_heads})")
    p.add_argument(
        "--d-ff",
        type=int,
        default=d.d_ff,
        help=f"feed-forward width; 0 = the LM's rule, 8/3 d_model rounded up to 64 (swiglu) or 4 d_model (silu) "
        f"(default {d.d_ff})",
    )
    p.add_argument(
        "--rope-theta", type=float, default=d.rope_theta, help=f"RoPE base period theta (default {d.rope_theta:g})"
    )
    p.add_argument(
        "--norm", choices=get_args(NormPlacement), default=d.norm, help=f"RMSNorm placement (default {d.norm})"
    )
    p.add_argument(
        "--positions",
        choices=get_args(PositionKind),
        default=d.positions,
        help=f"position information (default {d.positions})",
    )
    p.add_argument("--ffn", choices=get_args(FeedForwardKind), default=d.ffn, help=f"feed-forward (default {d.ffn})")
    p.add_argument(
        "--tie-embeddings", action="store_true", help="share the input embedding and output head (default: untied)"
    )
    p.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="also write the result(s) as JSON to PATH, atomically (default: none)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="run the task for positions rope/none x norm pre/post/none and print a table",
    )
    p.add_argument(
        "--sweep-lengths",
        default=None,
        metavar="L1,L2,...",
        help="with --sweep: also sweep these lengths, e.g. 5,9,13 (default: --length only)",
    )
    p.set_defaults(func=run)


def _parse_lengths(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--sweep-lengths={text!r} must be comma-separated integers, e.g. 5,9,13") from None
    if not lengths or min(lengths) < 1:
        raise ValueError(f"--sweep-lengths={text!r} must list at least one length, each >= 1")
    return lengths


def run(args: argparse.Namespace) -> int:
    import torch

    from ..probes import (
        ADD_DEFAULTS,
        ProbeConfig,
        _check_config,
        build_model,
        format_result,
        format_table,
        make_task,
        run_probe,
        sweep_configs,
        write_json_atomic,
    )

    if args.threads < 0:
        raise ValueError(f"--threads={args.threads} must be >= 0 (0 = torch's default)")
    if args.sweep_lengths is not None and not args.sweep:
        raise ValueError("--sweep-lengths needs --sweep")
    lengths = _parse_lengths(args.sweep_lengths)
    if args.json is not None and not Path(args.json).parent.is_dir():
        raise FileNotFoundError(f"--json {args.json!r}: directory {str(Path(args.json).parent)!r} does not exist")
    task_defaults = ADD_DEFAULTS if args.task == "add" else {"length": ProbeConfig.length, "vocab": ProbeConfig.vocab}
    config = ProbeConfig(
        task=args.task,
        length=args.length if args.length is not None else task_defaults["length"],
        vocab=args.vocab if args.vocab is not None else task_defaults["vocab"],
        shift=args.shift,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr_ratio=args.min_lr_ratio,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        eval_every=args.eval_every,
        stop_after=args.stop_after,
        seed=args.seed,
        device=args.device,
        context_length=args.context_length,
        d_model=args.d_model,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        d_ff=args.d_ff or None,
        rope_theta=args.rope_theta,
        norm=args.norm,
        positions=args.positions,
        ffn=args.ffn,
        tie_embeddings=args.tie_embeddings,
    )
    configs = sweep_configs(config, lengths) if args.sweep else [config]
    for c in configs:  # fail on a bad setting before spending minutes on the runs before it
        _check_config(c)
        build_model(c, make_task(c.task, c.length, c.vocab, c.train_size, c.test_size, c.val_size, c.shift, c.seed))
    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        results = []
        for c in configs:
            result = run_probe(c)
            results.append(result)
            print(format_result(result), flush=True)
    finally:
        torch.set_num_threads(previous_threads)
    if args.sweep:
        print()
        print(format_table(results))
    if args.json is not None:
        payload = [r.to_dict() for r in results] if args.sweep else results[0].to_dict()
        write_json_atomic(args.json, payload)
        print(f"wrote {args.json}")
    return 0
