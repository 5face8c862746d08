"""`cs336-basics quickstart`: the flags of `quickstart.run_quickstart` (defaults from its signature), then it."""

import argparse
import inspect

# parameter of run_quickstart -> (flag type, help text); the default shown is the function's own
FLAGS: dict[str, tuple[type, str]] = {
    "out": (str, "output directory (new or empty)"),
    "text_path": (str, "UTF-8 corpus, documents split by <|endoftext|>; default: the built-in stories"),
    "vocab_size": (int, "BPE vocabulary size"),
    "steps": (int, "training steps"),
    "batch_size": (int, "sequences per step"),
    "context_length": (int, "tokens per sequence"),
    "d_model": (int, "model width"),
    "num_layers": (int, "Transformer blocks"),
    "num_heads": (int, "attention heads"),
    "d_ff": (int, "feed-forward width"),
    "lr": (float, "peak learning rate"),
    "val_fraction": (float, "share of the documents held out for validation"),
    "eval_interval": (int, "validate and checkpoint every N steps"),
    "prompt": (str, "prompt of the final sample"),
    "max_new_tokens": (int, "sample length in tokens"),
    "temperature": (float, "sampling temperature"),
    "top_p": (float, "nucleus sampling mass"),
    "seed": (int, "seed for corpus, init, batches and sampling"),
    "device": (str, "auto (cuda, mps, cpu), cpu, cuda[:N] or mps"),
    "num_workers": (int, "processes for BPE training and tokenization"),
    "num_stories": (int, "stories in the built-in corpus"),
}
ALIASES = {"text_path": ["--text"]}  # the flag's name since the first release


def add_parser(subparsers) -> None:
    from cs336_basics.workflows.quickstart import __doc__ as description
    from cs336_basics.workflows.quickstart import run_quickstart

    defaults = {name: p.default for name, p in inspect.signature(run_quickstart).parameters.items()}
    defaults["out"] = "quickstart-run"
    parser = subparsers.add_parser(
        "quickstart",
        help="the whole pipeline (BPE, tokenize, train, resume, eval, sample) on a built-in text, minutes on a CPU",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, (kind, text) in FLAGS.items():
        flags = ALIASES.get(name, ["--" + name.replace("_", "-")])
        default = defaults[name]
        shown = text if default is None or "default" in text else f"{text}; default {default}"
        parser.add_argument(*flags, dest=name, type=kind, default=default, help=shown)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch; default torch's choice")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from cs336_basics.workflows.quickstart import run_quickstart

    if args.threads is not None:
        if args.threads <= 0:
            raise ValueError(f"--threads={args.threads} must be positive")
        torch.set_num_threads(args.threads)
    run_quickstart(**{name: getattr(args, name) for name in FLAGS}, progress=not args.no_progress, log=print)
    return 0
