"""Byte-level BPE training, exact and fast: `train_bpe(input_path, vocab_size, special_tokens)`.

The algorithm (the contract of ../shared/INTERFACE.md, which every test here checks against a naive trainer):

1. Special tokens are hard boundaries: the text is split on them (longest first, so `<|a|><|a|>` wins over `<|a|>`)
   and they are removed; nothing is ever merged across or into them.
2. Each piece is pre-tokenized with GPT-2's pattern (`PAT`, the `regex` module); BPE then works on the counts of
   distinct pre-tokens, each a sequence of bytes.
3. Each step merges the most frequent adjacent pair, counted over pre-tokens times their counts; ties go to the
   lexicographically greatest pair `(bytes_a, bytes_b)`. Training stops at `vocab_size` or when no pair is left.
4. The vocabulary: the special tokens get ids 0..k-1 (as in the CS336 reference fixture), the 256 single bytes
   k..k+255 in byte order, then one token per merge in merge order.

How it is fast:

- Pre-tokenization runs in worker processes over byte ranges of the file whose edges are "safe cuts": the start of
  a special token that no other special-token occurrence straddles, so each range tokenizes exactly as it would
  inside the whole file. Each worker reads its range in sub-chunks cut the same way (memory does not grow with the
  file) and returns only the counts of its distinct pre-tokens; the parent never holds the text.
- Merging is incremental. Large problems use numba (`_bpe_merge.py`, `cache=True`, so the compile is paid once per
  checkout; numba is imported only when it merges); small ones (corpus.en at vocab 500) use the same algorithm in
  pure Python (`_bpe_merge_py.py`), because importing numba and loading its cache alone costs ~1.5 s in a fresh
  process (`merge_pretokens` says how "auto" chooses). In the numba kernels an
  open-addressing table maps a pair to a slot with its count and an append-only list of the words that contain it;
  a lazy max-heap keyed by (count, pair bytes) finds the best pair. Counts of existing pairs only go down when a
  merge happens, except pairs holding the new token, which are (re)pushed after each step; a popped entry whose
  stored count is stale is pushed back with its current count. Each step touches only the words holding the pair.
- Symbols are compared by bytes, not by id: should a merge ever produce a byte string that already exists (say `abc`
  from `ab`+`c` and later from `a`+`bc`; a random search over 20,000 small corpora never found one), the existing
  symbol is reused, exactly as a trainer keyed by bytes would count it.
"""

import argparse
import json
import multiprocessing as mp
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import regex

# GPT-2's pre-tokenization pattern (the `regex` module: \p{L} letters, \p{N} numbers).
PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_PAT_RE = regex.compile(PAT)
# The same pattern for pure-ASCII bytes, with the stdlib `re` (about 2x faster than `regex` on str, and it yields
# bytes directly). In ASCII, \p{L} is [A-Za-z], \p{N} is [0-9] and `regex`'s \s is [\t\n\v\f\r ] (not \x1c-\x1f,
# which Python's str.isspace counts); tests check the two patterns agree on every ASCII string.
_WS = r"\t\n\x0b\x0c\r "
PAT_ASCII = rf"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+"""
_PAT_ASCII_RE = re.compile(PAT_ASCII.encode("ascii"))
# A cut between "<ASCII non-space>\n" and an ASCII letter is a pre-token boundary whatever the text around it is
# (no GPT-2 alternative spans "\n" + letter, and the lookahead of `\s+(?!\S)` sees the same thing on both sides),
# so corpora without special tokens can still be read in bounded pieces.
_NEWLINE_CUT_RE = regex.compile(rb"[!-~]\n(?=[A-Za-z])")

SUBCHUNK_BYTES = 4 << 20  # what a worker reads at once; with its decoded text and matches, ~10x this in memory
SMALL_FILE_BYTES = 2 << 20  # below this, worker processes cost more than they save


@dataclass
class TrainStats:
    """What a training run measured: seconds per phase and the number of distinct pre-tokens."""

    pretokenize_s: float = 0.0
    merge_s: float = 0.0
    num_pretokens: int = 0
    num_workers: int = 1


def train_bpe(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: list[str],
    num_workers: int | None = None,
    progress: bool = False,
    merge_backend: str = "auto",
    **kwargs,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer on the UTF-8 text file `input_path`.

    Returns `(vocab, merges)`: `vocab` maps ids 0..N-1 to bytes (special tokens first, then the 256 bytes, then one
    token per merge), `merges` lists the merged pairs in order. `num_workers` processes pre-tokenize (default: the
    CPU count; 1 keeps everything in this process). `progress` shows tqdm bars on a terminal. `merge_backend` is
    "auto" (pure Python for small problems, numba for large ones), "python" or "numba" (see `merge_pretokens`); all
    give the same result. Pass `stats=TrainStats()` to get the timings back.

    Example: a file holding "low low lower" with vocab_size=258 and no special tokens has the pre-tokens "low",
    " low", " lower"; (l, o) and (o, w) tie at 3 and (b"o", b"w") is the greater pair, so
    merges == [(b"o", b"w"), (b"l", b"ow")] and vocab[256] == b"ow".
    """
    stats: TrainStats | None = kwargs.pop("stats", None)
    if kwargs:
        raise TypeError(f"train_bpe() got unexpected keyword arguments {sorted(kwargs)}")
    special_tokens = _check_special_tokens(special_tokens)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {vocab_size!r}")
    if vocab_size < 256 + len(special_tokens):
        raise ValueError(
            f"vocab_size={vocab_size} must be at least 256 + len(special_tokens) = {256 + len(special_tokens)} "
            "(the 256 single bytes and every special token)"
        )
    path = _check_input_path(input_path)
    if merge_backend not in MERGE_BACKENDS:
        raise ValueError(f"merge_backend={merge_backend!r} must be one of {MERGE_BACKENDS}")
    if num_workers is None:
        num_workers = os.cpu_count() or 1
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers={num_workers!r} must be a positive int")

    t0 = time.perf_counter()
    counts = count_pretokens(path, special_tokens, num_workers=num_workers, progress=progress)
    t1 = time.perf_counter()
    num_merges = vocab_size - 256 - len(special_tokens)
    merges = merge_pretokens(counts, num_merges, progress=progress, backend=merge_backend)
    t2 = time.perf_counter()

    vocab = {i: tok.encode("utf-8") for i, tok in enumerate(special_tokens)}
    offset = len(special_tokens)
    vocab.update({offset + b: bytes([b]) for b in range(256)})
    offset += 256
    vocab.update({offset + i: a + b for i, (a, b) in enumerate(merges)})
    if stats is not None:
        stats.pretokenize_s, stats.merge_s, stats.num_pretokens = t1 - t0, t2 - t1, len(counts)
        stats.num_workers = _effective_workers(path, num_workers)
    return vocab, merges


# --------------------------------------------------------------------------------------------------------------------
# Input checks


def _check_special_tokens(special_tokens) -> list[str]:
    if special_tokens is None:
        return []
    if isinstance(special_tokens, str | bytes):
        raise TypeError(f"special_tokens must be a list of str, got the single value {special_tokens!r}")
    special_tokens = list(special_tokens)
    seen = set()
    for tok in special_tokens:
        if not isinstance(tok, str):
            raise TypeError(f"special_tokens must hold str, got {tok!r} ({type(tok).__name__})")
        if tok == "":
            raise ValueError(f"special_tokens={special_tokens!r} holds an empty string; a special token needs text")
        if tok in seen:
            raise ValueError(f"special_tokens={special_tokens!r} lists {tok!r} twice; each special token once")
        seen.add(tok)
    return special_tokens


def _check_input_path(input_path) -> Path:
    path = Path(input_path)
    if not path.exists():
        raise FileNotFoundError(f"input_path={str(input_path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"input_path={str(input_path)!r} is not a regular file")
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as e:  # PermissionError and friends: say which file
        raise PermissionError(f"input_path={str(input_path)!r} cannot be read: {e.strerror}") from e
    return path


# --------------------------------------------------------------------------------------------------------------------
# Pre-tokenization


def _special_split_re(special_tokens: list[str]):
    """Bytes regex that finds special tokens, longest first so that a token never loses to its own prefix.

    Splitting the UTF-8 bytes equals splitting the text: UTF-8 is self-synchronizing, so a match of a token's
    bytes in valid UTF-8 always starts and ends on character boundaries.
    """
    if not special_tokens:
        return None
    ordered = sorted(special_tokens, key=len, reverse=True)
    return re.compile(b"|".join(re.escape(t.encode("utf-8")) for t in ordered))


def _straddled(buf: bytes, pos: int, specials_b: list[bytes]) -> bool:
    """True when some occurrence of a special token starts before `pos` and ends after it."""
    for tok in specials_b:
        for k in range(1, len(tok)):
            if pos - k >= 0 and buf.startswith(tok, pos - k):
                return True
    return False


def find_cut(buf: bytes, start: int, specials_b: list[bytes]) -> int | None:
    """The first safe cut at or after `start` in `buf`, or None: a position where the text may be split without
    changing its special-token split or its pre-tokens.

    A safe cut is the start of a special-token occurrence that no other occurrence straddles (searched from a
    position that nothing straddles, the longest-first scan from there agrees with a scan from the file start), or,
    failing that, a newline cut (see `_NEWLINE_CUT_RE`) that no special token straddles. The cut must also leave the
    last possible straddler whole: we need `buf` to extend `max_len` bytes past it, which the callers ensure by
    treating a cut within `max_len` of the end of an unfinished buffer as not found.
    """
    if specials_b:
        pos = start
        while pos < len(buf) and _straddled(buf, pos, specials_b):
            pos += 1
        alternatives = sorted(specials_b, key=len, reverse=True)
        hit = None
        for tok in alternatives:  # the leftmost occurrence of any special token
            i = buf.find(tok, pos)
            if i >= 0 and (hit is None or i < hit):
                hit = i
        if hit is not None:
            return hit
    m = _NEWLINE_CUT_RE.search(buf, start)
    while m is not None:
        cut = m.end()
        if not (specials_b and _straddled(buf, cut, specials_b)):
            return cut
        m = _NEWLINE_CUT_RE.search(buf, m.start() + 1)
    return None


def find_chunk_boundaries(path: str | os.PathLike, num_chunks: int, special_tokens: list[str]) -> list[int]:
    """Byte offsets [0, ..., file_size] that split the file into at most `num_chunks` ranges at safe cuts.

    Each range pre-tokenizes exactly as it would inside the whole file. Ranges may merge when a document is
    longer than a range (a cut is needed between the targets). Reads only small windows of the file.
    """
    size = os.path.getsize(path)
    specials_b = [t.encode("utf-8") for t in special_tokens]
    margin = max((len(t) for t in specials_b), default=1)
    bounds = [0]
    with open(path, "rb") as f:
        for i in range(1, num_chunks):
            target = max(size * i // num_chunks, bounds[-1] + 1)
            if target >= size:
                break
            cut = _find_cut_in_file(f, target, size, specials_b, margin)
            if cut is None:
                break
            if cut > bounds[-1]:
                bounds.append(cut)
    bounds.append(size)
    return sorted(set(bounds))


def _find_cut_in_file(f, target: int, size: int, specials_b: list[bytes], margin: int) -> int | None:
    window = 1 << 16
    while True:
        lo = max(0, target - margin)
        f.seek(lo)
        buf = f.read(target - lo + window + margin)
        cut = find_cut(buf, target - lo, specials_b)
        at_eof = lo + len(buf) >= size
        if cut is not None and (at_eof or cut <= len(buf) - margin):
            return lo + cut
        if at_eof:
            return None
        window *= 4


def pretokenize_range(
    path: str | os.PathLike,
    start: int,
    end: int,
    special_tokens: list[str],
    progress_counter=None,
) -> Counter:
    """Counts of the distinct pre-tokens (as bytes) in bytes [start, end) of the file, whose edges are safe cuts.

    Reads the range in sub-chunks of about SUBCHUNK_BYTES cut at safe cuts, so memory is bounded by the longest
    document, not the range. Raises ValueError with the file offset on invalid UTF-8.
    """
    specials_b = [t.encode("utf-8") for t in special_tokens]
    split_re = _special_split_re(special_tokens)
    margin = max((len(t) for t in specials_b), default=1)
    counts: Counter = Counter()
    with open(path, "rb") as f:
        f.seek(start)
        pos = start  # file offset of buf[0]
        buf = b""
        want = SUBCHUNK_BYTES  # how much buf should hold before we look for a cut
        while pos < end:
            need = min(want, end - pos) - len(buf)
            if need > 0:
                buf += f.read(need)
            if pos + len(buf) >= end:
                cut = len(buf)
            else:
                # the last cut in the second half of buf, so pieces stay near SUBCHUNK_BYTES; a cut must leave
                # `margin` bytes after it in buf, so no special token starting before it can be cut short
                cut = find_cut(buf, max(1, len(buf) - SUBCHUNK_BYTES // 2), specials_b)
                if cut is None or cut > len(buf) - margin:
                    cut = find_cut(buf, 1, specials_b)
                if cut is None or cut > len(buf) - margin:
                    want = len(buf) + SUBCHUNK_BYTES  # a document longer than buf: read on
                    continue
            _count_piece(buf[:cut], pos, split_re, counts, path)
            if progress_counter is not None:
                with progress_counter.get_lock():
                    progress_counter.value += cut
            pos += cut
            buf = buf[cut:]
            want = SUBCHUNK_BYTES
    return counts


def _count_piece(piece: bytes, offset: int, split_re, counts: Counter, path) -> None:
    """Add the pre-tokens of `piece` (which starts at file offset `offset`) to `counts`, keyed by bytes.

    Pure-ASCII documents (most of English text) take the fast bytes pattern; the others are decoded (which checks
    UTF-8 and says where it fails) and take the `regex` pattern.
    """
    pos = 0
    if split_re is not None:
        for m in split_re.finditer(piece):
            _count_doc(piece[pos : m.start()], offset + pos, counts, path)
            pos = m.end()
    _count_doc(piece[pos:] if pos else piece, offset + pos, counts, path)


def _count_doc(doc: bytes, offset: int, counts: Counter, path) -> None:
    if not doc:
        return
    if doc.isascii():
        counts.update(_PAT_ASCII_RE.findall(doc))
        return
    # a document with some non-ASCII text: cut it at newline cuts (exact, see _NEWLINE_CUT_RE) so that its ASCII
    # lines still take the fast path
    pos = 0
    for m in _NEWLINE_CUT_RE.finditer(doc):
        if m.end() - pos >= 256:  # not too small, or the per-call overhead wins
            _count_segment(doc[pos : m.end()], offset + pos, counts, path)
            pos = m.end()
    _count_segment(doc[pos:] if pos else doc, offset + pos, counts, path)


def _count_segment(segment: bytes, offset: int, counts: Counter, path) -> None:
    if segment.isascii():
        counts.update(_PAT_ASCII_RE.findall(segment))
        return
    try:
        text = segment.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"input_path={str(path)!r} is not valid UTF-8: byte 0x{segment[e.start]:02x} at offset {offset + e.start} "
            f"({e.reason})"
        ) from None
    counts.update(tok.encode("utf-8") for tok in _PAT_RE.findall(text))


_WORKER_COUNTER = None


def _init_worker(counter) -> None:
    global _WORKER_COUNTER
    _WORKER_COUNTER = counter


def _worker(job) -> Counter:
    path, start, end, special_tokens = job
    return pretokenize_range(path, start, end, special_tokens, _WORKER_COUNTER)


def _effective_workers(path: Path, num_workers: int) -> int:
    return 1 if num_workers <= 1 or os.path.getsize(path) < SMALL_FILE_BYTES else num_workers


def count_pretokens(
    path: str | os.PathLike, special_tokens: list[str], num_workers: int = 1, progress: bool = False
) -> Counter:
    """Counts of distinct pre-tokens (bytes) in the whole file, using `num_workers` processes for large files."""
    path = Path(path)
    size = os.path.getsize(path)
    workers = _effective_workers(path, num_workers)
    bar = _progress_bar(progress, total=size, desc="pre-tokenize", unit="B", unit_scale=True)
    try:
        if workers == 1:
            counts = pretokenize_range(path, 0, size, special_tokens)
            bar.update(size)
            return counts
        bounds = find_chunk_boundaries(path, workers, special_tokens)
        jobs = [(str(path), lo, hi, special_tokens) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        counter = ctx.Value("q", 0)
        with ctx.Pool(len(jobs), initializer=_init_worker, initargs=(counter,)) as pool:
            pending = pool.map_async(_worker, jobs)
            while not pending.ready():
                pending.wait(0.1)
                bar.n = counter.value
                bar.refresh()
            results = pending.get()
        bar.n = size
        bar.refresh()
        results.sort(key=len, reverse=True)  # add the smaller counters into the largest
        counts = results[0]
        for other in results[1:]:
            get = counts.get
            for k, v in other.items():
                counts[k] = get(k, 0) + v
        return counts
    finally:
        bar.close()


def _progress_bar(enabled: bool, **kwargs):
    from tqdm import tqdm

    return tqdm(disable=not (enabled and sys.stderr.isatty()), leave=False, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Merging


MERGE_BACKENDS = ("auto", "python", "numba")
# "auto" merges in pure Python while that is expected to take under ~1 s: a fresh process pays ~1.5-2 s to import
# numba and load its compiled cache (10-30 s more to compile on a fresh checkout), which only large problems win back.
# Measured here, the Python merger takes ~4 us per byte of distinct pre-tokens times (1 + num_merges / 3000):
# corpus.en at vocab 500 (35 kB, 243 merges) 0.11 s; 205 kB x 243 merges 0.78 s; 205 kB x 9743 merges 2.4 s
# (numba 0.33 s + import). The rule below is bytes x (1 + num_merges / 3000) <= 250_000 (notes/bpe-worklog.md).
# Those times predate the str.find/str.replace merger (2.3x faster on corpus.en: 80 -> 35 ms), so the rule is now
# conservative (~0.5 s of Python); it has not been re-tuned.
PYTHON_MERGE_MAX_WORK = 250_000
PYTHON_MERGE_MERGES_SCALE = 3000


def merge_pretokens(
    counts: dict[bytes, int] | Iterable[tuple[bytes, int]],
    num_merges: int,
    progress: bool = False,
    backend: str = "auto",
) -> list[tuple[bytes, bytes]]:
    """Up to `num_merges` merges (fewer when no pair is left) on pre-token counts, in order.

    `backend` is "python" (pure Python, no compile or import cost), "numba" (compiled, for large problems) or "auto"
    (Python when bytes of the distinct pre-tokens x (1 + num_merges / PYTHON_MERGE_MERGES_SCALE) <=
    PYTHON_MERGE_MAX_WORK, i.e. about 1 s of Python); all give the same merges.

    Example: merge_pretokens({b"low": 5, b"lower": 2, b"widest": 3, b"newest": 6}, 6) ==
    [(b"s", b"t"), (b"e", b"st"), (b"o", b"w"), (b"l", b"ow"), (b"w", b"est"), (b"n", b"e")]  (the handout's example).
    """
    if backend not in MERGE_BACKENDS:
        raise ValueError(f"merge_backend={backend!r} must be one of {MERGE_BACKENDS}")
    items = counts.items() if isinstance(counts, dict) else counts
    words = [w for w, c in items if len(w) > 1 and c > 0]
    if num_merges <= 0 or not words:
        return []
    freq = counts if isinstance(counts, dict) else dict(counts)
    if backend == "auto":
        work = sum(map(len, words)) * (1 + num_merges / PYTHON_MERGE_MERGES_SCALE)
        backend = "python" if work <= PYTHON_MERGE_MAX_WORK else "numba"
    if backend == "python":
        from ._bpe_merge_py import merge_python

        bar = _progress_bar(progress, total=num_merges, desc="merge", unit="merge") if progress else None
        try:
            return merge_python(words, [freq[w] for w in words], num_merges, None if bar is None else bar.update)
        finally:
            if bar is not None:
                bar.close()
    lengths = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
    wstart = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(lengths, out=wstart[1:])
    syms = np.frombuffer(b"".join(words), dtype=np.uint8).astype(np.int32)
    wcnt = np.fromiter((freq[w] for w in words), dtype=np.int64, count=len(words))
    del words

    # numba (~1.5 s to import, plus its compiled cache) is loaded only when merging is needed
    from ._bpe_merge import init_state, merge_steps

    state = init_state(syms, wstart, lengths.astype(np.int32), wcnt, num_merges)
    bar = _progress_bar(progress, total=num_merges, desc="merge", unit="merge")
    done = 0
    batch = max(1, num_merges // 100) if progress else num_merges
    try:
        while done < num_merges:
            step_end = min(num_merges, done + batch)
            state, reached = merge_steps(state, done, step_end)
            bar.update(reached - done)
            if reached < step_end:  # no pair left
                done = reached
                break
            done = reached
    finally:
        bar.close()
    merges_out, tok_off, tok_len, tok_data = state[0], state[1], state[2], state[3]
    data = tok_data.tobytes()

    def token(i: int) -> bytes:
        return data[tok_off[i] : tok_off[i] + tok_len[i]]

    return [(token(a), token(b)) for a, b in merges_out[:done].tolist()]


# --------------------------------------------------------------------------------------------------------------------
# Command line: cs336-basics train-bpe

CLI_EXAMPLE = """example (a few seconds on a laptop):
  cs336-basics train-bpe ../shared/fixtures/corpus.en --vocab-size 500 --special-token '<|endoftext|>' --out tok500
"""


def add_parser(subparsers) -> None:
    """The `train-bpe` subcommand: train on a text file and write a GPT-2-format tokenizer directory."""
    p = subparsers.add_parser(
        "train-bpe",
        help="train a byte-level BPE tokenizer on a UTF-8 text file",
        description="Train a byte-level BPE tokenizer (GPT-2 pre-tokenization, exact canonical merges) and write "
        "OUT/vocab.json, OUT/merges.txt and OUT/special_tokens.json (GPT-2 format, readable by Hugging Face "
        "tokenizers and tiktoken). OUT is written whole or not at all.",
        epilog=CLI_EXAMPLE,
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
    from .tokenizer_files import SPECIAL_TOKENS_FILE, save_tokenizer

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
    # build the whole directory beside OUT, then rename it into place: OUT is complete or absent
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; OUT should look like any directory the user makes
        save_tokenizer(vocab, merges, tmp, args.special_token)
        (tmp / SPECIAL_TOKENS_FILE).write_text(json.dumps(args.special_token, ensure_ascii=False) + "\n", "utf-8")
        if out.exists():
            out.rmdir()  # empty, checked above
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    wall = time.perf_counter() - start
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    longest = sorted((a + b for a, b in merges), key=len, reverse=True)[:5]
    print(f"wrote {out}/vocab.json, merges.txt, special_tokens.json: {len(vocab)} tokens, {len(merges)} merges")
    print(
        f"wall time {wall:.2f} s (pre-tokenize {stats.pretokenize_s:.2f} s with {stats.num_workers} process(es), "
        f"merge {stats.merge_s:.2f} s)"
    )
    workers = f", largest worker {child_mb:.0f} MB" if stats.num_workers > 1 else ""
    print(f"peak memory (max RSS): this process {self_mb:.0f} MB{workers}")
    print(f"distinct pre-tokens: {stats.num_pretokens}")
    print("longest tokens: " + ", ".join(f"{t!r} ({len(t)} bytes)" for t in longest))
    return 0
