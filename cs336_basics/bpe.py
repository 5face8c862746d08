"""Byte-level BPE training, exact and fast: `train_bpe(input_path, vocab_size, special_tokens)`.

The result is the textbook algorithm's (`cs336_basics._tokenization.bpe_reference`, the oracle of the parity tests):
special
tokens split the text (longest first) and are removed; GPT-2's pattern pre-tokenizes each piece; each step merges
the most frequent adjacent pair, ties to the lexicographically greatest `(bytes_a, bytes_b)`. Ids: the special
tokens 0..k-1, the 256 bytes k..k+255, then one token per merge. The design and its measurements: docs/bpe.md.

How it is fast:

- Pre-tokenization runs in worker processes over byte ranges of the file cut at exact cuts
  (`pretokenize.first_safe_cut`), each read in bounded sub-chunks; workers return only the counts of their
  distinct pre-tokens, so the parent never holds the text.
- Merging is incremental, in one of two engines that both give the reference's merges: a pure-Python one
  (`_tokenization/merge_python.py`) for small problems, and a C one (`_tokenization/merge_kernel.c`) for large ones,
  which the system C compiler
  builds on first use (~0.3 s, while the workers pre-tokenize) into a cache; with no C compiler, Python merges all.
"""

import multiprocessing as mp
import os
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cs336_basics._tokenization import merge_kernel
from cs336_basics.pretokenize import GPT2_ASCII_BYTES_RE, GPT2_RE, SpecialTokens, first_safe_cut, first_safe_cut_in_file

SUBCHUNK_BYTES = 4 << 20  # what a worker reads at once; with its decoded text and matches, ~10x this in memory
SMALL_FILE_BYTES = 2 << 20  # below this, worker processes cost more than they save


@dataclass
class TrainStats:
    """What a training run measured: seconds per phase, distinct pre-tokens, processes and merge engine used."""

    pretokenize_s: float = 0.0
    merge_s: float = 0.0
    num_pretokens: int = 0
    num_workers: int = 1
    merge_backend: str = ""


def train_bpe(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: list[str],
    num_workers: int | None = None,
    progress: bool = False,
    merge_backend: str = "auto",
    stats: TrainStats | None = None,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer on the UTF-8 text file `input_path`.

    Returns `(vocab, merges)`: `vocab` maps ids 0..N-1 to bytes (special tokens first, then the 256 bytes, then one
    token per merge), `merges` lists the merged pairs in order. `num_workers` processes pre-tokenize (default: the
    CPU count; 1 keeps everything in this process). `progress` shows tqdm bars on a terminal. `merge_backend` is
    "auto" (pure Python for small problems, C for large ones when a C compiler is there), "python" or "c" (see
    `merge_pretokens`); all give the same result. `stats`, when given, is filled with the timings.

    Example: a file holding "low low lower" with vocab_size=258 and no special tokens has the pre-tokens "low",
    " low", " lower"; (l, o) and (o, w) tie at 3 and (b"o", b"w") is the greater pair, so
    merges == [(b"o", b"w"), (b"l", b"ow")] and vocab[256] == b"ow".
    """
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
    num_merges = vocab_size - 256 - len(special_tokens)

    t0 = time.perf_counter()
    # the parent is idle while workers pre-tokenize: it builds or loads the C engine if that will likely merge
    warm_up = _c_unavailable if _c_likely(path, num_merges, merge_backend) else None
    counts = count_pretokens(path, special_tokens, num_workers=num_workers, progress=progress, while_waiting=warm_up)
    t1 = time.perf_counter()
    merges, engine = _merge(counts, num_merges, progress, merge_backend)
    t2 = time.perf_counter()

    tokens = [t.encode("utf-8") for t in special_tokens] + [bytes([b]) for b in range(256)] + [a + b for a, b in merges]
    if stats is not None:
        stats.pretokenize_s, stats.merge_s, stats.num_pretokens = t1 - t0, t2 - t1, len(counts)
        stats.num_workers = _effective_workers(path, num_workers)
        stats.merge_backend = engine
    return dict(enumerate(tokens)), merges


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


def find_chunk_boundaries(path: str | os.PathLike, num_chunks: int, special_tokens: list[str]) -> list[int]:
    """Byte offsets [0, ..., file_size] that split the file into at most `num_chunks` ranges at exact cuts.

    Each range pre-tokenizes exactly as it would inside the whole file. Ranges may merge when a document is
    longer than a range (a cut is needed between the targets). Reads only windows of the file around the targets.
    """
    size = os.path.getsize(path)
    specials_b = SpecialTokens(special_tokens).encoded
    bounds = [0]
    with open(path, "rb") as f:
        for i in range(1, num_chunks):
            target = max(size * i // num_chunks, bounds[-1] + 1)
            if target >= size:
                break
            cut = first_safe_cut_in_file(f, target, size, specials_b)
            if cut is None:
                break
            if cut > bounds[-1]:
                bounds.append(cut)
    bounds.append(size)
    return sorted(set(bounds))


def pretokenize_range(
    path: str | os.PathLike,
    start: int,
    end: int,
    special_tokens: list[str],
    progress_counter=None,
) -> Counter:
    """Counts of the distinct pre-tokens (as bytes) in bytes [start, end) of the file, whose edges are exact cuts.

    Reads the range in sub-chunks of about SUBCHUNK_BYTES cut at exact cuts, so memory is bounded by the longest
    stretch without a cut (a document without spaces, one long pre-token), not the range. Raises ValueError with
    the file offset on invalid UTF-8.
    """
    specials = SpecialTokens(special_tokens)
    counts: Counter = Counter()
    with open(path, "rb") as f:
        f.seek(start)
        pos = start  # file offset of buf[0], an exact cut
        buf = b""
        want = SUBCHUNK_BYTES  # how much buf should hold before we look for a cut
        while pos < end:
            if min(want, end - pos) > len(buf):
                buf += f.read(min(want, end - pos) - len(buf))
            if pos + len(buf) >= end:
                cut = len(buf)
            else:  # the first cut in the second half of buf, so pieces stay near SUBCHUNK_BYTES, else any
                cut = first_safe_cut(buf, max(1, len(buf) - SUBCHUNK_BYTES // 2), specials.encoded)
                if cut is None:
                    cut = first_safe_cut(buf, 1, specials.encoded)
                if cut is None:
                    want = 2 * len(buf)  # no cut yet: read on (doubling, so a long stretch costs linear time)
                    continue
            _count_piece(buf[:cut], pos, specials, counts, path)
            if progress_counter is not None:
                with progress_counter.get_lock():
                    progress_counter.value += cut
            pos += cut
            buf = buf[cut:]
            want = SUBCHUNK_BYTES
    return counts


def _count_piece(piece: bytes, offset: int, specials: SpecialTokens, counts: Counter, path) -> None:
    """Add the pre-tokens of `piece` (which starts at file offset `offset`) to `counts`, keyed by bytes."""
    pos = 0
    if specials:
        for m in specials.bytes_regex.finditer(piece):
            _count_doc(piece[pos : m.start()], offset + pos, counts, path)
            pos = m.end()
    _count_doc(piece[pos:] if pos else piece, offset + pos, counts, path)


def _count_doc(doc: bytes, offset: int, counts: Counter, path) -> None:
    """Pure-ASCII text takes the stdlib-`re` twin of GPT-2's pattern on bytes; a document with some non-ASCII text
    is cut at exact cuts so that its ASCII stretches still do, and the rest is decoded (which checks UTF-8)."""
    if doc.isascii():
        counts.update(GPT2_ASCII_BYTES_RE.findall(doc))
        return
    pos = 0
    while pos < len(doc):
        cut = first_safe_cut(doc, pos + 256, [], at_eof=True) if pos + 256 < len(doc) else None
        segment = doc[pos:cut]  # not too small, or the per-call overhead wins
        if segment.isascii():
            counts.update(GPT2_ASCII_BYTES_RE.findall(segment))
        else:
            try:
                text = segment.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"input_path={str(path)!r} is not valid UTF-8: byte 0x{segment[e.start]:02x} at offset "
                    f"{offset + pos + e.start} ({e.reason})"
                ) from None
            counts.update(tok.encode("utf-8") for tok in GPT2_RE.findall(text))
        pos = len(doc) if cut is None else cut


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
    path: str | os.PathLike,
    special_tokens: list[str],
    num_workers: int = 1,
    progress: bool = False,
    while_waiting: Callable[[], None] | None = None,
) -> Counter:
    """Counts of distinct pre-tokens (bytes) in the whole file, using `num_workers` processes for large files.

    `while_waiting`, when several processes run, is called in a thread of this process while they work (after they
    have started, so no fork happens while it runs); it must return by itself.
    """
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
            helper = threading.Thread(target=while_waiting, daemon=True) if while_waiting else None
            if helper is not None:
                helper.start()
            while not pending.ready():
                pending.wait(0.1)
                bar.n = counter.value
                bar.refresh()
            results = pending.get()
        if helper is not None:
            helper.join()
        bar.n = size
        bar.refresh()
        return _sum_counters(results)
    finally:
        bar.close()


def _sum_counters(results: list[Counter]) -> Counter:
    results.sort(key=len, reverse=True)  # add the smaller counters into the largest
    counts = results[0]
    for other in results[1:]:
        get = counts.get
        for k, v in other.items():
            counts[k] = get(k, 0) + v
    return counts


class _NoBar:
    """What `_progress_bar` gives when no bar is shown: tqdm's few methods used here, doing nothing (importing tqdm
    costs 20-50 ms, a third of training on a small corpus)."""

    n = 0

    def update(self, n: int = 1) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, **kwargs):
    if not (enabled and sys.stderr.isatty()):
        return _NoBar()
    from tqdm import tqdm

    return tqdm(leave=False, **kwargs)


# --------------------------------------------------------------------------------------------------------------------
# Merging


MERGE_BACKENDS = ("auto", "python", "c")
# "auto" merges in C when the engine's build is cached (loading it takes about a millisecond; then C is ~10x faster
# even on corpus.en at vocab 500). Without a cached build it merges in pure Python while that is expected to take
# under ~1 s: a build on first use costs ~0.3 s, which only larger problems win back. The Python engine takes a few
# microseconds per byte of distinct pre-tokens per 3000 merges; the rule is bytes x (1 + num_merges / 3000) <= 250_000
# (docs/bpe.md has the measurements).
PYTHON_MERGE_MAX_WORK = 250_000
PYTHON_MERGE_MERGES_SCALE = 3000
# Before counting, "auto" guesses the distinct pre-token bytes as this share of the file (English: ~3%), to decide
# whether the parent builds or loads the C engine while the workers count.
_DISTINCT_SHARE_GUESS = 0.01


def _resolve_backend(distinct_bytes: int, num_merges: int, backend: str) -> str:
    if backend != "auto":
        return backend
    work = distinct_bytes * (1 + num_merges / PYTHON_MERGE_MERGES_SCALE)
    if work > PYTHON_MERGE_MAX_WORK:
        return "c"
    return "c" if merge_kernel.built() and distinct_bytes <= merge_kernel.MAX_BYTES else "python"


def _c_likely(path: Path, num_merges: int, backend: str) -> bool:
    guess = int(os.path.getsize(path) * _DISTINCT_SHARE_GUESS)
    return num_merges > 0 and _resolve_backend(guess, num_merges, backend) == "c"


def merge_pretokens(
    counts: dict[bytes, int] | Iterable[tuple[bytes, int]],
    num_merges: int,
    progress: bool = False,
    backend: str = "auto",
) -> list[tuple[bytes, bytes]]:
    """Up to `num_merges` merges (fewer when no pair is left) on pre-token counts, in order.

    `backend` is "python" (pure Python: no build, no load), "c" (built by the system C compiler on first use, ~0.3 s,
    then cached) or "auto": Python when bytes of the distinct pre-tokens x (1 + num_merges /
    PYTHON_MERGE_MERGES_SCALE) <= PYTHON_MERGE_MAX_WORK, i.e. about 1 s of Python, else C, else (no C compiler: a
    warning says why) Python. Both give the same merges.

    Example: merge_pretokens({b"low": 5, b"lower": 2, b"widest": 3, b"newest": 6}, 6) ==
    [(b"s", b"t"), (b"e", b"st"), (b"o", b"w"), (b"l", b"ow"), (b"w", b"est"), (b"n", b"e")]  (the handout's example).
    """
    if backend not in MERGE_BACKENDS:
        raise ValueError(f"merge_backend={backend!r} must be one of {MERGE_BACKENDS}")
    return _merge(counts, num_merges, progress, backend)[0]


def _merge(counts, num_merges: int, progress: bool, backend: str) -> tuple[list[tuple[bytes, bytes]], str]:
    """(the merges, the engine that made them: "python", "c", or "none" when there was nothing to merge)."""
    items = counts.items() if isinstance(counts, dict) else counts
    pairs = [(w, c) for w, c in items if len(w) > 1 and c > 0]
    if num_merges <= 0 or not pairs:
        return [], "none"
    words = [w for w, _ in pairs]
    wcnt = [c for _, c in pairs]
    distinct_bytes = sum(map(len, words))
    engine = _resolve_backend(distinct_bytes, num_merges, backend)
    if engine == "c" and backend == "auto":
        why = _c_unavailable(distinct_bytes)
        if why:
            warnings.warn(f"BPE merges run in pure Python (~5x slower): {why}", stacklevel=3)
            engine = "python"
    bar = _progress_bar(progress, total=num_merges, desc="merge", unit="merge")
    bar = None if isinstance(bar, _NoBar) else bar
    try:
        if engine == "python":
            from cs336_basics._tokenization.merge_python import merge_python

            return merge_python(words, wcnt, num_merges, None if bar is None else bar.update), "python"
        return _merge_c(words, wcnt, num_merges, bar), "c"
    finally:
        if bar is not None:
            bar.close()


def _c_unavailable(distinct_bytes: int = 0) -> str | None:
    """Why the C engine cannot merge this problem here, or None; builds (first use) or loads it. (Also the parent's
    work while the workers pre-tokenize: then the answer is dropped, and `_merge` asks again, at no cost.)"""
    if distinct_bytes > merge_kernel.MAX_BYTES:
        return f"the distinct pre-tokens hold {distinct_bytes:,} bytes, over the C engine's {merge_kernel.MAX_BYTES:,}"
    try:
        merge_kernel.load()
    except merge_kernel.EngineUnavailable as e:
        return f"the C engine is unavailable: {e}"
    return None


def _merge_c(words: list[bytes], wcnt: list[int], num_merges: int, bar) -> list[tuple[bytes, bytes]]:
    """The C engine on the words; with a progress bar, a thread runs it while this one updates the bar."""
    data = b"".join(words)
    wstart = np.zeros(len(words) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, words), dtype=np.int64, count=len(words)), out=wstart[1:])
    counts = np.array(wcnt, dtype=np.int64)
    done = np.zeros(1, dtype=np.int64)
    if bar is None:
        return _merges_from_ids(merge_kernel.merge_words(data, wstart, counts, num_merges, done).tolist())
    out: list = []

    def run():  # (the C call releases the GIL: this thread updates the bar meanwhile)
        try:
            out.append(merge_kernel.merge_words(data, wstart, counts, num_merges, done))
        except BaseException as e:  # raised again below, in the caller's thread
            out.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.1)
        bar.update(int(done[0]) - bar.n)
    if isinstance(out[0], BaseException):
        raise out[0]
    return _merges_from_ids(out[0].tolist())


def _merges_from_ids(ids: list[list[int]]) -> list[tuple[bytes, bytes]]:
    """The merges as byte pairs, from an engine's token-id pairs: ids 0..255 are the bytes, then each merge makes
    the next id, unless its bytes already belong to a token (which it then is)."""
    tokens = [bytes([x]) for x in range(256)]
    known = {t: x for x, t in enumerate(tokens)}
    merges = []
    for a, b in ids:
        merges.append((tokens[a], tokens[b]))
        merged = tokens[a] + tokens[b]
        if merged not in known:
            known[merged] = len(tokens)
            tokens.append(merged)
    return merges
