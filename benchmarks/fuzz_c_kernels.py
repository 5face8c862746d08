"""Fuzz the C kernels against their references, optionally built with AddressSanitizer and UBSan.

    uv run python benchmarks/fuzz_c_kernels.py --cases 3000 --sanitize

The BPE trainer's engine (`_tokenization/merge_kernel.c`) on random small problems (alphabets of 1-4 letters, words up
to 200
bytes, up to 60 merges) against `bpe_reference.merge_reference`; the encoder's kernel
(`_tokenization/encode_kernel.c`) on words up to
3,000 bytes over random merge lists that make some tokens twice, against `tokenizer_reference.bpe_merge`, and its
batch function for ASCII pieces (`bpe_encode_ascii_pieces`: GPT-2's pattern, then BPE of each pre-token, short words
by the scan, long ones by the heap) on batches of random ASCII pieces, against GPT2_RE and `bpe_merge`. With
--sanitize both are built with `-O1 -g -fsanitize=address,undefined` (gcc) and this script runs again with the
sanitizer runtimes preloaded: any out-of-bounds access or undefined behaviour aborts it with a report. Prints the
cases run and the mismatches (none expected); exits 1 on a mismatch.
"""

import argparse
import ctypes
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cs336_basics._tokenization import encode_kernel, merge_kernel  # noqa: E402
from cs336_basics._tokenization.bpe_reference import merge_reference  # noqa: E402
from cs336_basics._tokenization.tokenizer_reference import bpe_merge  # noqa: E402
from cs336_basics.bpe import _merges_from_ids  # noqa: E402
from cs336_basics.pretokenize import GPT2_RE  # noqa: E402
from cs336_basics.tokenizer import Tokenizer  # noqa: E402
from tests.test_bpe_encode import _ranks, random_merges  # noqa: E402

SANITIZE = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-std=c99", "-shared", "-fPIC"]


def fuzz_merge(fn, cases: int, rng: random.Random) -> int:
    bad = 0
    for _ in range(cases):
        alphabet = rng.choice(["ab", "abc", "aab", "abcd", "\x00\xff"])
        words = {}
        for _ in range(rng.randint(1, 8)):
            word = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, rng.choice([5, 30, 200]))))
            words[word.encode("latin-1")] = rng.randint(1, 4)
        n = rng.randint(1, 60)
        data = b"".join(words)
        wstart = np.zeros(len(words) + 1, np.int64)
        np.cumsum([len(w) for w in words], out=wstart[1:])
        counts = np.array(list(words.values()), np.int64)
        merges, done = np.zeros(2 * n, np.int64), np.zeros(1, np.int64)
        ptr = [a.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)) for a in (wstart, counts, merges, done)]
        k = fn(data, ptr[0], ptr[1], len(words), n, ptr[2], ptr[3])
        if _merges_from_ids(merges[: 2 * k].reshape(-1, 2).tolist()) != merge_reference(words, n):
            bad += 1
            print(f"merge engine MISMATCH: {words!r}, {n} merges")
    return bad


def fuzz_encode(fn, cases: int, rng: random.Random) -> int:
    bad = 0
    vocabularies = [random_merges(seed, 400) for seed in range(max(1, cases // 100))]
    tables = [(Tokenizer(vocab, merges)._engine.merges, vocab, merges) for vocab, merges in vocabularies]
    merged = np.zeros(1, np.int64)
    for i in range(cases):
        m, vocab, merges = tables[i % len(tables)]
        token_id = {t: x for x, t in sorted(vocab.items(), reverse=True)}
        alphabet = rng.choice([b"abc ", b"ab", b"a", b"aab", b"abcc  ", b"aaab"])
        word = bytes(rng.choice(alphabet) for _ in range(rng.choice([3, 60, 300, 3000])))
        ids = np.array([m.byte_ids[b] for b in word], dtype=np.int32)
        slots = np.ascontiguousarray(m.pair_map.slots, dtype=np.int64)
        room = rng.choice([0, 0, 2, 3, 5])
        n = fn(
            ids.ctypes.data_as(encode_kernel._I32P), ids.size, slots.ctypes.data_as(encode_kernel._I64P),
            m.pair_map.bits, m.shift, m.token_lengths.ctypes.data_as(encode_kernel._I32P), room,
            merged.ctypes.data_as(encode_kernel._I64P),
        )  # fmt: skip
        if ids[:n].tolist() != [token_id[t] for t in bpe_merge(word, _ranks(merges))]:
            bad += 1
            print(f"encode kernel MISMATCH: {word[:60]!r} ({len(word)} bytes), room {room}")
    return bad


def fuzz_pieces(fn, cases: int, rng: random.Random) -> int:
    bad = 0
    vocabularies = [random_merges(seed, 400) for seed in range(max(1, cases // 100))]
    tables = [(Tokenizer(vocab, merges)._engine.merges, vocab, merges) for vocab, merges in vocabularies]
    for i in range(cases):
        m, vocab, merges = tables[i % len(tables)]
        token_id, ranks = {t: x for x, t in sorted(vocab.items(), reverse=True)}, _ranks(merges)
        alphabet = rng.choice(["abc ", "ab'\n", "a1 .", "aab\t\x0b", "abcc  'sll"])
        pieces = ["".join(rng.choice(alphabet) for _ in range(rng.choice([1, 5, 60, 300, 1000]))) for _ in range(5)]
        raw = [p.encode() for p in pieces]
        lengths = np.array(list(map(len, raw)), dtype=np.int64)
        data = np.frombuffer(b"".join(raw), dtype=np.uint8)
        ids, counts = encode_kernel.call_batch_kernel(fn, m, data, lengths)
        expected = [token_id[t] for p in pieces for pre in GPT2_RE.findall(p) for t in bpe_merge(pre.encode(), ranks)]
        if ids.tolist() != expected or int(counts.sum()) != ids.size:
            bad += 1
            print(f"ASCII pieces kernel MISMATCH: {pieces!r}")
    return bad


def build_sanitized(directory: Path) -> tuple[Path, Path]:
    out = []
    for source in (merge_kernel.SOURCE, Path(encode_kernel.__file__).with_name("encode_kernel.c")):
        library = directory / f"{source.stem}.so"
        subprocess.run(["gcc", *SANITIZE, "-o", str(library), str(source)], check=True)
        out.append(library)
    return out[0], out[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=int, default=3000, help="problems per kernel (default %(default)s)")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--sanitize", action="store_true", help="build with ASan + UBSan (gcc) and run under them")
    p.add_argument("--libraries", nargs=2, metavar=("MERGE_SO", "ENCODE_SO"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sanitize and not args.libraries:
        with tempfile.TemporaryDirectory() as tmp:
            libs = build_sanitized(Path(tmp))
            runtimes = [subprocess.check_output(["gcc", f"-print-file-name={r}"], text=True).strip()
                        for r in ("libasan.so", "libubsan.so")]  # fmt: skip
            env = dict(os.environ, LD_PRELOAD=":".join(runtimes), ASAN_OPTIONS="detect_leaks=0")
            argv = [sys.executable, __file__, "--cases", str(args.cases), "--seed", str(args.seed)]
            return subprocess.run([*argv, "--libraries", *map(str, libs)], env=env).returncode
    if args.libraries:
        merge_fn = ctypes.CDLL(args.libraries[0]).bpe_merge_words
        encode_fn = ctypes.CDLL(args.libraries[1]).bpe_encode_merge
        pieces_fn = ctypes.CDLL(args.libraries[1]).bpe_encode_ascii_pieces
        pieces_fn.restype, pieces_fn.argtypes = (
            encode_kernel.batch_kernel().bpe_encode_ascii_pieces.restype,
            [*encode_kernel.batch_kernel().bpe_encode_ascii_pieces.argtypes],
        )
    else:
        merge_fn, encode_fn = merge_kernel.load(), encode_kernel._kernel()
        pieces_fn = encode_kernel.batch_kernel().bpe_encode_ascii_pieces
    i64p = ctypes.POINTER(ctypes.c_int64)
    merge_fn.restype = encode_fn.restype = ctypes.c_int64
    merge_fn.argtypes = [ctypes.c_char_p, i64p, i64p, ctypes.c_int64, ctypes.c_int64, i64p, i64p]
    i32p, i64 = ctypes.POINTER(ctypes.c_int32), ctypes.c_int64
    encode_fn.argtypes = [i32p, i64, i64p, i64, i64, i32p, i64, i64p]
    rng = random.Random(args.seed)
    bad = fuzz_merge(merge_fn, args.cases, rng) + fuzz_encode(encode_fn, args.cases, rng)
    bad += fuzz_pieces(pieces_fn, args.cases, rng)
    built = "ASan + UBSan build" if args.libraries else "the package's build"
    print(f"{args.cases} problems per kernel ({built}): {bad} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
