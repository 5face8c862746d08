"""Encode a text file into a flat token file for training, in parallel, streaming, in bounded memory.

    cs336-basics tokenize data/train.txt --tokenizer runs/tok --out data/train.bin --workers 2

Output: `FILE`, a flat array of ids (uint16 when the vocabulary has at most 65536 ids, else uint32, native byte
order) that `np.memmap(FILE, dtype=...)` or `cs336_basics.data.load_tokens(FILE)` reads, and `FILE.json` with
{"dtype", "num_tokens", "source_bytes", "source", "tokenizer_fingerprint", "vocab_size", "special_tokens"}.

How: the input is cut into ranges of about `range_bytes` at positions where encoding can be split exactly (the
start of a special token, else an ASCII non-space byte followed by a space or newline, never inside any
occurrence of a special token), so concatenating the ranges' encodings equals encoding the whole file. With N
workers, this process and N - 1 forked children encode: the ranges are cut 8 times finer (grains), split into one
contiguous segment per worker, and each worker claims runs of up to 8 grains from the front of its own segment,
then helps the others from their backs; claims shrink towards the end so all finish together (see `_Claims`).
Each appends its ids to a part file of its own, and the parts are stitched in input order at the end (so the disk
briefly holds the output twice). Each process holds one claim at a time, so memory does not grow with the file
size. Output goes to temporary files that are renamed at the end: an error leaves no partial output.
"""

import bisect
import ctypes
import errno
import json
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from cs336_basics._tokenization.encode_kernel import kernel_merges
from cs336_basics.pretokenize import SpecialTokens, first_safe_cut_in_file
from cs336_basics.tokenizer import Tokenizer
from cs336_basics.workflows.tokenizer_dir import load_tokenizer

DEFAULT_RANGE_BYTES = 4 << 20  # 4 MiB of text per task: ~0.3 s of work, large next to the IPC and bookkeeping
_GRAINS_PER_RANGE = 8  # with several workers, ranges are cut 8x finer and claimed 1 to 8 at a time


def find_cuts(path: str | os.PathLike, special_tokens: list[str], range_bytes: int = DEFAULT_RANGE_BYTES) -> list[int]:
    """Byte offsets [0, c1, ..., size] splitting the file into ranges of about `range_bytes` that encode
    independently (exactly): each cut is the first one `pretokenize.first_safe_cut` finds at or after its target
    offset (the start of a special token, or a printable ASCII byte followed by " " / "\\n", never inside any
    occurrence of a special token). Only a small window after each target offset is read.
    """
    size = os.path.getsize(path)
    specials = SpecialTokens(special_tokens).encoded
    cuts = [0]
    with open(path, "rb") as f:
        target = range_bytes
        while target < size:
            cut = first_safe_cut_in_file(f, target, size, specials)
            if cut is None or cut >= size:
                break
            cuts.append(cut)
            target = cut + range_bytes
    cuts.append(size)
    return cuts


class _MemoryCap:
    """Keeps the process from growing range after range: when its resident size exceeds what it was after the
    first range by more than `slack` bytes, glibc's malloc_trim gives freed memory back. Without it the process
    grew by ~0.57 MB per MB of input (measured: +24 MB per 42 MB pass; glibc raises its mmap threshold once a
    large block is freed, later blocks of a few MB come from the heap, which fragments). Trimming only past the
    slack, not after every range, spares the page faults of re-growing the heap each time. A no-op where
    /proc/self/statm or glibc's malloc_trim is missing."""

    def __init__(self, slack: int = 64 << 20):
        self.slack, self.baseline = slack, None
        try:
            self.trim = ctypes.CDLL(None).malloc_trim
            self.page = os.sysconf("SC_PAGE_SIZE")
            self.resident()
        except (OSError, AttributeError, ValueError, TypeError):  # (no /proc, no glibc, no CDLL(None) on Windows)
            self.trim = None

    def resident(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def check(self) -> None:
        if self.trim is None:
            return
        rss = self.resident()
        if self.baseline is None:
            self.baseline = rss
        elif rss > self.baseline + self.slack:
            self.trim(0)


_memory_cap: _MemoryCap | None = None


# The tokenizer a forked worker inherits (a spawned one loads its own from the directory).
_worker_tokenizer: Tokenizer | None = None


def _encode_range(path: str, start: int, end: int, dtype: str, tokenizer: Tokenizer) -> np.ndarray:
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"input {path!r} is not valid UTF-8 at byte {start + e.start}: {e.reason}") from None
    del data  # (not held while the range is encoded: a huge run without spaces is all of it)
    ids = tokenizer.encode_to_array(text, dtype)
    del text
    global _memory_cap
    _memory_cap = _memory_cap or _MemoryCap()
    _memory_cap.check()
    return ids


def tokenize_file(
    input_path: str | os.PathLike,
    out_path: str | os.PathLike,
    tokenizer_dir: str | os.PathLike,
    num_workers: int = 1,
    progress: bool = False,
    range_bytes: int = DEFAULT_RANGE_BYTES,
) -> dict:
    """Encode `input_path` with the tokenizer in `tokenizer_dir` into `out_path` (+ `out_path`.json); return its dict.

    The result equals `Tokenizer.from_dir(tokenizer_dir).encode(<whole file>)`, for any `num_workers`.
    num_workers=1 encodes in this process; more start that many worker processes. `progress` shows a tqdm bar on
    stderr in MB/s of input. Example: tokenize_file("a.txt", "a.bin", "tok/")["num_tokens"] -> 1234.
    """
    input_path, out_path, tokenizer_dir = Path(input_path), Path(out_path), Path(tokenizer_dir)
    if not input_path.is_file():
        raise FileNotFoundError(f"input file {str(input_path)!r} does not exist")
    if num_workers < 1:
        raise ValueError(f"num_workers={num_workers} must be at least 1")
    if range_bytes < 1:
        raise ValueError(f"range_bytes={range_bytes} must be at least 1")
    if out_path.is_dir():
        raise ValueError(f"out_path {str(out_path)!r} is a directory; give a file name such as train.bin")
    if not out_path.parent.is_dir():
        raise FileNotFoundError(f"output directory {str(out_path.parent)!r} does not exist")
    tokenizer, fingerprint = load_tokenizer(tokenizer_dir)
    dtype = "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32"
    source_bytes = input_path.stat().st_size
    parallel = num_workers > 1 and source_bytes > range_bytes
    grain = max(1, range_bytes // _GRAINS_PER_RANGE) if parallel else range_bytes
    cuts = find_cuts(input_path, tokenizer.special_tokens, grain)

    tmp_bin = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    tmp_json = out_path.with_name(f".{out_path.name}.json.tmp-{os.getpid()}")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=source_bytes, unit="B", unit_scale=True, unit_divisor=1000, desc="tokenize", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        if not parallel or len(cuts) < 3:
            num_tokens = 0
            with open(tmp_bin, "wb") as out:
                for start, end in zip(cuts[:-1], cuts[1:], strict=True):
                    with _KernelProgress(bar, end - start) as moved:
                        ids = _encode_range(str(input_path), start, end, dtype, tokenizer)
                    ids.tofile(out)
                    num_tokens += len(ids)
                    if bar is not None:
                        bar.update(end - start - moved.shown)
        else:
            num_tokens = _encode_in_parallel(
                str(input_path), cuts, dtype, tokenizer, tokenizer_dir, num_workers, tmp_bin, bar
            )
        seconds = time.perf_counter() - t0
        meta = {
            "dtype": dtype,
            "num_tokens": num_tokens,
            "source_bytes": source_bytes,
            "bytes_per_token": source_bytes / num_tokens if num_tokens else None,
            "source": str(input_path),
            "tokenizer_dir": str(tokenizer_dir),
            "tokenizer_fingerprint": fingerprint,
            "vocab_size": tokenizer.vocab_size,
            "special_tokens": tokenizer.special_tokens,
            "num_workers": num_workers,
            "seconds": round(seconds, 3),
        }
        tmp_json.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp_bin, out_path)
        os.replace(tmp_json, out_path.with_name(out_path.name + ".json"))
    except BaseException:
        for tmp in (tmp_bin, tmp_json):
            tmp.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return meta


class _KernelProgress:
    """Moves `bar` while one range is encoded in this process, by the merges the long-pre-token kernel makes (at most
    one per byte), so that a range that is one unsplittable run of megabytes still shows progress; `shown` is how
    far it moved (the caller adds the rest). Ordinary text makes no kernel merges: its bar moves per range."""

    def __init__(self, bar, range_bytes: int, interval: float = 0.2):
        self.bar, self.limit, self.interval = bar, max(range_bytes - 1, 0), interval
        self.shown = 0
        self._stop = threading.Event()

    def __enter__(self) -> "_KernelProgress":
        if self.bar is not None:
            self._start = kernel_merges()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.step()

    def step(self) -> None:
        target = min(kernel_merges() - self._start, self.limit)
        if target > self.shown:
            self.bar.update(target - self.shown)
            self.shown = target

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self._stop.set()
            self._thread.join()


class _Claims:
    """Hands out the grains (the ranges between consecutive cuts) to the workers, shared by their processes.

    The grains are split into one contiguous segment per worker (by bytes). A worker claims from the front of its
    own segment, and once that is done, from the back of the segment with the most grains left; so each worker
    mostly sees one stretch of the file, and all stay busy until the end. (Each worker learns the pieces it meets
    for the first time in its own tables; on english_mix_bench.txt 2 workers learn 1.14x the pieces 1 worker
    learns this way, 1.21x when 4 MiB ranges are dealt in turn: `benchmarks/bench_tokenizer.py --duplication`.)
    A claim takes up to `most` consecutive grains, fewer as the work runs out (half a worker's share of what is
    left: guided self-scheduling), so the last claims are single grains and the workers finish together. Also
    counts the bytes encoded so far (for the progress bar)."""

    def __init__(self, context, cuts: list[int], num_workers: int, most: int):
        self.cuts, self.most = cuts, most
        grains, size = len(cuts) - 1, cuts[-1]
        starts = [bisect.bisect_left(cuts, size * k // num_workers, 0, grains) for k in range(num_workers)]
        self._lock = context.Lock()
        self._front = context.Array("q", starts, lock=False)  # segment k: grains front[k] .. back[k] - 1 left
        self._back = context.Array("q", starts[1:] + [grains], lock=False)
        self._done = context.Value("q", 0)

    def claim(self, worker: int) -> tuple[int, int] | None:
        """Grains [first, stop) for `worker` to encode, or None when none are left."""
        with self._lock:
            left = [b - f for f, b in zip(self._front, self._back, strict=True)]
            total = sum(left)
            if not total:
                return None
            count = max(1, min(self.most, total // (2 * len(left))))
            if left[worker]:  # own segment: from the front
                first = self._front[worker]
                stop = self._front[worker] = min(first + count, self._back[worker])
            else:  # help the segment with the most left, from its back
                k = left.index(max(left))
                stop = self._back[k]
                first = self._back[k] = max(stop - count, self._front[k])
        return first, stop

    def finished(self, first: int, stop: int) -> None:
        with self._done.get_lock():
            self._done.value += self.cuts[stop] - self.cuts[first]

    def stop(self) -> None:
        """No grain is handed out any more (after an error)."""
        with self._lock:
            self._front[:] = self._back[:]

    @property
    def done_bytes(self) -> int:
        return self._done.value


def _work(path, dtype, tokenizer, claims: _Claims, worker: int, part, written: list, after_each=None) -> None:
    """Encode what `worker` claims, appending the ids to the open file `part` and (first grain, stop grain, count)
    to `written`, and calling after_each() after each claim."""
    while claimed := claims.claim(worker):
        first, stop = claimed
        try:
            ids = _encode_range(path, claims.cuts[first], claims.cuts[stop], dtype, tokenizer)
        except BaseException:
            claims.stop()
            raise
        ids.tofile(part)
        written.append((first, stop, len(ids)))
        claims.finished(first, stop)
        if after_each is not None:
            after_each()


def _child(path, dtype, tokenizer_dir, claims: _Claims, worker: int, part_path: str, conn) -> None:
    """A worker process: encode claims into `part_path`, then send ("ok", written) or ("error", exception)."""
    try:
        tokenizer = _worker_tokenizer or load_tokenizer(tokenizer_dir)[0]  # forked: inherited; spawned: loaded
        written: list[tuple[int, int, int]] = []
        with open(part_path, "wb") as part:
            _work(path, dtype, tokenizer, claims, worker, part, written)
        message = ("ok", written)
    except BaseException as e:  # sent to the parent, which raises it
        claims.stop()
        message = ("error", e)
    try:
        conn.send(message)
    except Exception:  # an exception that cannot be pickled: its text
        conn.send(("error", RuntimeError(f"{type(message[1]).__name__}: {message[1]}")))
    conn.close()


def _encode_in_parallel(path, cuts, dtype, tokenizer, tokenizer_dir, num_workers, out_path, bar) -> int:
    """Encode the file's grains (between consecutive `cuts`) with this process and num_workers - 1 children into
    `out_path`; return the token count.

    Each worker claims grains (see _Claims) and appends their ids to a part file of its own; at the end the parts'
    pieces are copied into `out_path` in input order. No ids pass through pipes and no thread runs beside the
    encoder. The children are forked before anything is encoded (encoding a first range before the fork, so that
    they inherited its pieces, made 2-worker runs 5% slower: a stretch with one core idle, and more system time,
    likely copy-on-write faults on the grown tables)."""
    global _worker_tokenizer
    fork = sys.platform == "linux"  # children inherit the loaded tokenizer (elsewhere "spawn": each loads its own)
    context = multiprocessing.get_context("fork" if fork else "spawn")
    claims = _Claims(context, cuts, num_workers, most=_GRAINS_PER_RANGE)
    parts = [out_path.with_name(f"{out_path.name}.part{k}") for k in range(num_workers)]
    written: list[list[tuple[int, int, int]]] = [[] for _ in range(num_workers)]
    children = []
    try:
        _worker_tokenizer = tokenizer if fork else None
        for k in range(1, num_workers):
            receive, send = context.Pipe(duplex=False)
            child = context.Process(
                target=_child, args=(path, dtype, str(tokenizer_dir), claims, k, str(parts[k]), send)
            )
            child.start()
            send.close()
            children.append((child, receive))
        _worker_tokenizer = None
        show_progress = None if bar is None else lambda: bar.update(claims.done_bytes - bar.n)
        with open(parts[0], "wb") as part:
            _work(path, dtype, tokenizer, claims, 0, part, written[0], after_each=show_progress)
        for k, (child, receive) in enumerate(children, 1):
            try:
                status, result = receive.recv()
            except EOFError:
                child.join()
                raise RuntimeError(f"worker process {child.pid} died (exit code {child.exitcode})") from None
            if status == "error":
                raise result
            written[k] = result
        if bar is not None:
            bar.update(claims.done_bytes - bar.n)
        return _stitch(parts, written, len(cuts) - 1, np.dtype(dtype).itemsize, out_path)
    except BaseException:
        claims.stop()
        for child, _ in children:
            child.terminate()
        raise
    finally:
        _worker_tokenizer = None
        for child, receive in children:
            child.join()
            receive.close()
        for part_path in parts:
            part_path.unlink(missing_ok=True)


def _stitch(
    parts: list[Path], written: list[list[tuple[int, int, int]]], num_grains: int, itemsize: int, out_path: Path
) -> int:
    """Copy the ids of grains 0 .. num_grains - 1 from the part files into `out_path` in input order; return the
    token count. written[k]: (first grain, stop grain, token count) of the claims in the order worker k appended
    their ids to parts[k]."""
    claims = []  # (first grain, stop grain, part, first token, token count)
    for k, claimed in enumerate(written):
        offset = 0
        for first, stop, count in claimed:
            claims.append((first, stop, k, offset, count))
            offset += count
    claims.sort()
    expected = 0  # the claims must tile grains 0 .. num_grains - 1: each starts where the one before stopped
    for first, stop, *_ in claims + [(num_grains, None)]:
        if first != expected:
            problem = f"grain {expected} is missing" if first > expected else f"grain {first} is claimed twice"
            raise RuntimeError(f"internal error: the workers' claims do not tile the input ({problem})")
        expected = stop
    handles = [open(p, "rb") for p in parts]
    try:
        with open(out_path, "wb", buffering=0) as out:  # unbuffered: kernel copies and writes share its position
            for _, _, k, offset, count in claims:
                _copy(handles[k], out, offset * itemsize, count * itemsize)
    finally:
        for handle in handles:
            handle.close()
    return sum(c[4] for c in claims)


def _copy(src, dst, offset: int, nbytes: int) -> None:
    """Append src's bytes [offset, offset + nbytes) to dst, an unbuffered file (in the kernel where
    os.copy_file_range works)."""
    if hasattr(os, "copy_file_range"):
        try:
            while nbytes:
                copied = os.copy_file_range(src.fileno(), dst.fileno(), nbytes, offset)
                if not copied:
                    raise OSError(f"unexpected end of part file {src.name!r}")
                offset, nbytes = offset + copied, nbytes - copied
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
    src.seek(offset)
    while nbytes:
        chunk = src.read(min(nbytes, 16 << 20))
        if not chunk:
            raise OSError(f"unexpected end of part file {src.name!r}")
        view = memoryview(chunk)
        while view:
            view = view[dst.write(view) :]  # (a raw write may take only part)
        nbytes -= len(chunk)
