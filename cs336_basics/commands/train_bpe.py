"""`cs336-basics train-bpe`: train a byte-level BPE tokenizer on a text file and write a tokenizer directory."""

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

EXAMPLE = """example (a few seconds on a laptop; TEXT is any UTF-8 file, e.g. the CS336 corpus.en):
  cs336-basics train-bpe TEXT --vocab-size 500 --special-token '<|endoftext|>' --out tok500
"""
SHOWN_TOKEN_BYTES = 40  # a longer token is shown as its first bytes and its length


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train-bpe",
        help="train a byte-level BPE tokenizer on a UTF-8 text file",
        description="Train a byte-level BPE tokenizer (GPT-2 pre-tokenization, exact canonical merges) and write "
        "OUT/vocab.json, OUT/merges.txt and OUT/special_tokens.json (GPT-2 format, readable by Hugging Face "
        "tokenizers and tiktoken). OUT is written whole or not at all.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="INPUT", help="UTF-8 text file to train on")
    p.add_argument(
        "--vocab-size", type=int, required=True, help="tokens in the vocabulary: special tokens + 256 bytes + merges"
    )
    p.add_argument(
        "--special-token",
        action="append",
        default=[],
        metavar="TOK",
        help="a special token (repeatable; none by default); it splits the text and is never merged",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output directory; must not exist or be empty")
    p.add_argument(
        "--workers", type=int, default=None, help="pre-tokenization processes (default: the CPU count; 1 = in-process)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (they are off anyway when not a TTY)")
    p.set_defaults(func=run)


def run(args) -> int:
    from cs336_basics.bpe import TrainStats, train_bpe

    out = Path(args.out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise FileExistsError(f"--out {str(out)!r} already exists and is not an empty directory; choose a new path")
    start = time.perf_counter()
    stats = TrainStats()
    vocab, merges = train_bpe(
        args.input,
        args.vocab_size,
        args.special_token,
        num_workers=args.workers,
        progress=not args.no_progress,
        stats=stats,
    )
    write_tokenizer_dir(vocab, merges, args.special_token, out)
    wall = time.perf_counter() - start
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    longest = sorted((a + b for a, b in merges), key=len, reverse=True)[:5]
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"wrote {out}/ ({files}): {len(vocab)} tokens, {len(merges)} merges")
    print(
        f"wall time {wall:.2f} s (pre-tokenize {stats.pretokenize_s:.2f} s with {stats.num_workers} process(es), "
        f"merge {stats.merge_s:.2f} s, {stats.merge_backend} engine)"
    )
    workers = f", largest worker {child_mb:.0f} MB" if stats.num_workers > 1 else ""
    print(f"peak memory (max RSS): this process {self_mb:.0f} MB{workers}")
    print(f"distinct pre-tokens: {stats.num_pretokens}")
    print("longest tokens: " + ", ".join(show_token(t) for t in longest))
    return 0


def show_token(token: bytes, limit: int = SHOWN_TOKEN_BYTES) -> str:
    """`token` for a terminal: its repr with its length, cut to its first `limit` bytes when longer.

    >>> show_token(b"=" * 8000, 4)
    "b'====' ... (8000 bytes)"
    """
    if len(token) <= limit:
        return f"{token!r} ({len(token)} bytes)"
    return f"{token[:limit]!r} ... ({len(token)} bytes)"


def write_tokenizer_dir(vocab: dict[int, bytes], merges: list, special_tokens: list[str], out: Path) -> None:
    """Write the tokenizer files into a temporary directory beside `out`, then rename it to `out`: complete or
    absent. `out` must not exist or be an empty directory."""
    from cs336_basics.fileio import current_umask
    from cs336_basics.tokenizer_files import save_tokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it 0700; OUT should look like any directory the user makes
        save_tokenizer(vocab, merges, tmp, special_tokens)
        if out.exists():
            out.rmdir()  # empty, checked by the caller
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
