"""`cs336-basics probe`: train a small model on a synthetic task and report its exact match (`probes`).

Each `ProbeConfig` field with help text is a flag (kebab case; `_flags`), its default the field's own.
"""

import argparse
import dataclasses
from pathlib import Path

from cs336_basics.commands._flags import add_dataclass_flags


def add_parser(subparsers) -> None:
    from cs336_basics.workflows.probe_config import ADD_DEFAULTS, TASKS, ProbeConfig

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
        default_text = f"default {getattr(ProbeConfig, name)}; {ADD_DEFAULTS[name]} for add"
        p.add_argument("--" + name, type=int, default=None, help=f"{what} ({default_text})")
    add_dataclass_flags(p, ProbeConfig)
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
    from cs336_basics.workflows.probe_config import ADD_DEFAULTS, ProbeConfig

    task_defaults = ADD_DEFAULTS if args.task == "add" else {"length": ProbeConfig.length, "vocab": ProbeConfig.vocab}
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(ProbeConfig) if "help" in f.metadata}
    return ProbeConfig(
        task=args.task,
        length=args.length if args.length is not None else task_defaults["length"],
        vocab=args.vocab if args.vocab is not None else task_defaults["vocab"],
        **values,
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from cs336_basics.fileio import atomic_write_json
    from cs336_basics.workflows.probe import (
        build_model,
        format_result,
        format_table,
        make_task,
        run_probe,
        sweep_configs,
    )
    from cs336_basics.workflows.probe_config import check_config

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
        check_config(c)
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
        atomic_write_json(args.json, [r.to_dict() for r in results] if args.sweep else results[0].to_dict())
        print(f"wrote {args.json}")
    return 0
