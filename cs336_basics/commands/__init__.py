"""The `cs336-basics` subcommands, one small module each.

Each module exposes `add_parser(subparsers)`, which adds its parser and sets `func` to its `run(args)`; `run` parses
nothing itself and calls library functions that take arguments and return values. `cs336_basics.cli` imports only
the module of the subcommand being run, so `cs336-basics tokenize` never imports torch.
"""
