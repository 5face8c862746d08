"""`cs336-basics prepare`: text (file, URL or preset) -> trained BPE tokenizer -> train/valid token files, restartable.

    cs336-basics prepare tinystories --out data/tinystories --workers 8        # the handout's TinyStories V2
    cs336-basics prepare owt --out data/owt --workers 16                       # the handout's OpenWebText sample
    cs336-basics prepare $CORPUS --out data/mine --vocab-size 2000 --valid-fraction 0.05
    cs336-basics train --train data/tinystories/train.bin --val data/tinystories/valid.bin --vocab-size 10000 ...

Rerun the same command after an interruption: finished stages are skipped (DATA_DIR/manifest.json), an interrupted
download resumes. See `cs336_basics.workflows.prepare` for the stages and docs/data.md for the presets.
"""

import argparse


def add_parser(subparsers) -> None:
    from cs336_basics.workflows.prepare import PRESETS  # (no torch import)

    parser = subparsers.add_parser(
        "prepare",
        help="download/decompress a corpus, train BPE on it and tokenize train and valid splits; restartable",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    presets = ", ".join(f"{name} (vocab {p.vocab_size:,})" for name, p in PRESETS.items())
    parser.add_argument(
        "source", metavar="SOURCE", help=f"a text file, an http(s) URL of text/.gz/.zst, or a preset: {presets}"
    )
    parser.add_argument("--out", required=True, metavar="DATA_DIR", help="output directory (created)")
    parser.add_argument(
        "--vocab-size", type=int, default=None, help="BPE vocabulary size; required unless SOURCE is a preset"
    )
    parser.add_argument(
        "--special-token",
        action="append",
        default=None,
        metavar="TOK",
        help="special token (repeatable); default <|endoftext|>, which also marks document boundaries",
    )
    parser.add_argument(
        "--valid", default=None, metavar="SOURCE", help="validation text (file or URL); default: hold out a part"
    )
    parser.add_argument(
        "--valid-fraction",
        type=float,
        default=0.01,
        help="without --valid: the share of the text held out for validation, cut at a document boundary; 0.01",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes for BPE and tokenization; default 1")
    parser.add_argument("--sha256", default=None, help="expected sha256 of the file at a URL SOURCE (checked)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from cs336_basics.workflows.prepare import DownloadError, prepare

    def announce(stage: str) -> None:
        print(f"[prepare] {stage}", file=sys.stderr, flush=True)

    try:
        report = prepare(
            args.source,
            args.out,
            vocab_size=args.vocab_size,
            special_tokens=args.special_token,
            valid=args.valid,
            valid_fraction=args.valid_fraction,
            workers=args.workers,
            sha256=args.sha256,
            progress=not args.no_progress,
            on_stage=announce,
        )
    except DownloadError as e:
        print(f"cs336-basics prepare: error: {e}", file=sys.stderr)
        return 1
    skipped = [name for name, how in report["stages"].items() if how == "skipped"]
    if skipped:
        print(f"[prepare] already done, skipped: {', '.join(skipped)}")
    print(
        f"[prepare] {report['data_dir']}: tokenizer/ (vocab {report['vocab_size']:,}), train.bin "
        f"{report['train_tokens']:,} tokens, valid.bin {report['valid_tokens']:,} tokens "
        f"({report['seconds']:.1f} s)\n"
        f"next: cs336-basics train --train {report['train']} --val {report['valid']} "
        f"--vocab-size {report['vocab_size']} --out runs/NAME ..."
    )
    return 0
