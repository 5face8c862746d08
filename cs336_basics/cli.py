"""The `cs336-basics` command line: one argparse subcommand per job.

Each subcommand lives in the module that owns its job; that module exposes `add_parser(subparsers)`, which
adds its parser and sets `func` to the function that runs it. This file only wires them together.

    cs336-basics quickstart          # the whole pipeline on a built-in text, a few minutes on a CPU
    cs336-basics <command> --help    # every flag with its units and defaults
"""

import argparse
import importlib
import sys

# subcommand -> module that defines it (in the order `--help` lists them)
SUBCOMMAND_MODULES: dict[str, str] = {
    "quickstart": "cs336_basics.commands.quickstart",
    "prepare": "cs336_basics.commands.prepare",
    "train-bpe": "cs336_basics.commands.train_bpe",
    "tokenize": "cs336_basics.commands.tokenize",
    "train": "cs336_basics.commands.train",
    "generate": "cs336_basics.commands.generate",
    "eval": "cs336_basics.commands.eval",
    "model-info": "cs336_basics.commands.model_info",
    "probe": "cs336_basics.commands.probe",
    "export": "cs336_basics.commands.export",
    "import": "cs336_basics.commands.import_hf",
    "sweep": "cs336_basics.commands.sweep",
    "compare": "cs336_basics.commands.compare",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or with only `command`'s (so `tokenize` does not import torch)."""
    parser = argparse.ArgumentParser(
        prog="cs336-basics",
        description="A from-scratch Transformer LM stack: BPE training, tokenization, training, sampling, probes.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = [SUBCOMMAND_MODULES[command]] if command in SUBCOMMAND_MODULES else SUBCOMMAND_MODULES.values()
    for module_name in dict.fromkeys(modules):
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as e:
        # Bad input: one clear line instead of a traceback.
        print(f"cs336-basics {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
