"""`cs336-basics tokenize`: encode a text file into a flat token file for training (`tokenize_dataset`)."""

import argparse
import time

from cs336_basics.commands._flags import module_docstring, signature_defaults


def add_parser(subparsers) -> None:
    description = module_docstring("cs336_basics.workflows.tokenize")
    defaults = signature_defaults("cs336_basics.workflows.tokenize", "tokenize_file")
    workers, range_mb = defaults["num_workers"], defaults["range_bytes"] / 2**20
    p = subparsers.add_parser(
        "tokenize",
        help="encode a text file into a flat token file (uint16/uint32) plus a JSON sidecar",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="INPUT", help="UTF-8 text file to encode")
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer directory written by train-bpe")
    p.add_argument("--out", required=True, metavar="FILE", help="output token file; FILE.json gets the metadata")
    p.add_argument(
        "--workers",
        type=int,
        default=workers,
        metavar="N",
        help=f"encoding processes, this one included; default {workers}",
    )
    p.add_argument(
        "--range-mb",
        type=float,
        default=range_mb,
        metavar="MB",
        help=f"MiB of text per task; default {range_mb:g} (with several workers, tasks shrink to 1/8 of it as the "
        "work runs out)",
    )
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar (default: shown)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cs336_basics.workflows.tokenize import tokenize_file

    t0 = time.perf_counter()
    meta = tokenize_file(
        args.input,
        args.out,
        args.tokenizer,
        num_workers=args.workers,
        progress=not args.no_progress,
        range_bytes=max(1, int(args.range_mb * 2**20)),
    )
    seconds = time.perf_counter() - t0
    ratio = meta["bytes_per_token"]
    print(
        f"wrote {meta['num_tokens']:,} tokens ({meta['dtype']}) to {args.out} from {meta['source_bytes']:,} bytes "
        f"in {seconds:.1f} s ({meta['source_bytes'] / 1e6 / max(seconds, 1e-9):.2f} MB/s); "
        f"compression ratio {ratio:.3f} bytes/token"
        if ratio
        else f"wrote 0 tokens to {args.out} (empty input)"
    )
    return 0
