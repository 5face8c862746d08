"""`cs336-basics train`: the flags of `TrainConfig` (help and defaults from the dataclass), then `train()`."""

import argparse
import json
import os
import sys

from cs336_basics.commands._flags import add_dataclass_flags, module_docstring


def add_parser(subparsers) -> None:
    from cs336_basics.train_config import TrainConfig

    description = module_docstring("cs336_basics.train")

    parser = subparsers.add_parser(
        "train",
        help="train a Transformer LM on token files; resumable, logs and checkpoints into a run directory",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", default=None, help="TOML file of settings (keys = flag names); flags override it")
    add_dataclass_flags(parser, TrainConfig, suppress_defaults=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from cs336_basics.train import NonFiniteLossError, train
    from cs336_basics.train_config import FIELD_NAMES, resolve_settings

    given = {k: v for k, v in vars(args).items() if k in FIELD_NAMES}
    config = resolve_settings(given, config_file=args.config)
    try:
        summary = train(config)
    except NonFiniteLossError as e:
        print(f"cs336-basics train: {e}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0
