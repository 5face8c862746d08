"""`cs336-basics probe`: train a small model on a synthetic task and report its exact match (`probes`).

Each `ProbeConfig` field is a flag (kebab case) with the help text below; the default shown is the field's own.
"""

import argparse
from pathlib import Path
from typing import get_args

# ProbeConfig field -> help text (the flag's default is the field's default, appended to the text)
FIELD_HELP: dict[str, str] = {
    "shift": "k for the shift task, in [1, L-1]",
    "train_size": "training sequences",
    "val_size": "validation sequences for early stopping, 0 = none",
    "test_size": "held-out test sequences",
    "steps": "maximum optimizer steps (the cosine schedule spans them)",
    "batch_size": "sequences per step",
    "lr": "peak learning rate of the cosine schedule",
    "min_lr_ratio": "final lr as a fraction of --lr",
    "warmup_steps": "linear warmup steps",
    "weight_decay": "AdamW weight decay",
    "grad_clip": "max global gradient L2 norm",
    "eval_every": "steps between early-stop checks on train+val, 0 = never stop early",
    "stop_after": "consecutive early-stop checks with train and val exact (teacher forced) before stopping",
    "seed": "seed for data, init and batches",
    "device": "torch device",
    "d_model": "model width",
    "num_layers": "Transformer blocks",
    "num_heads": "attention heads",
    "d_ff": "feed-forward width; 0 = the LM's rule, 8/3 d_model rounded up to 64 (swiglu) or 4 d_model (silu)",
    "rope_theta": "RoPE base period theta",
    "norm": "RMSNorm placement",
    "positions": "position information",
    "ffn": "feed-forward kind",
}


def add_parser(subparsers) -> None:
    from cs336_basics.model import FeedForwardKind, NormPlacement, PositionKind
    from cs336_basics.workflows.probe import ADD_DEFAULTS, TASKS, ProbeConfig

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
    task_dependent = {
        "length": "L, symbols in X, or digits per operand for add",
        "vocab": "V, data symbols 0..V-1, or the base for add",
    }
    for name, what in task_dependent.items():
        default_text = f"default {getattr(d, name)}; {ADD_DEFAULTS[name]} for add"
        p.add_argument("--" + name, type=int, default=None, help=f"{what} ({default_text})")
    choices = {"norm": NormPlacement, "positions": PositionKind, "ffn": FeedForwardKind}
    for name, text in FIELD_HELP.items():
        default = getattr(d, name)
        kind = type(default) if default is not None else int
        kwargs = {"choices": get_args(choices[name])} if name in choices else {"type": kind}
        p.add_argument("--" + name.replace("_", "-"), default=default, help=f"{text} (default {default})", **kwargs)
    p.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="model context in tokens (default: exactly what the task needs, 2L+1 or 3L+2 for add)",
    )
    p.add_argument("--tie-embeddings", action="store_true", help="share the input embedding and output head (off)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch, 0 = torch's default (default 1)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result(s) as JSON to PATH, atomically")
    p.add_argument("--sweep", action="store_true", help="run positions rope/none x norm pre/post/none, as a table")
    p.add_argument(
        "--sweep-lengths", default=None, metavar="L1,L2,...", help="with --sweep: also sweep these lengths, e.g. 5,9,13"
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


def _config_from_args(args: argparse.Namespace):
    from cs336_basics.workflows.probe import ADD_DEFAULTS, ProbeConfig

    task_defaults = ADD_DEFAULTS if args.task == "add" else {"length": ProbeConfig.length, "vocab": ProbeConfig.vocab}
    values = {name: getattr(args, name) for name in FIELD_HELP}
    values["d_ff"] = values["d_ff"] or None
    return ProbeConfig(
        task=args.task,
        length=args.length if args.length is not None else task_defaults["length"],
        vocab=args.vocab if args.vocab is not None else task_defaults["vocab"],
        context_length=args.context_length,
        tie_embeddings=args.tie_embeddings,
        **values,
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from cs336_basics.workflows.probe import (
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
    config = _config_from_args(args)
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
            results.append(run_probe(c))
            print(format_result(results[-1]), flush=True)
    finally:
        torch.set_num_threads(previous_threads)
    if args.sweep:
        print()
        print(format_table(results))
    if args.json is not None:
        write_json_atomic(args.json, [r.to_dict() for r in results] if args.sweep else results[0].to_dict())
        print(f"wrote {args.json}")
    return 0
