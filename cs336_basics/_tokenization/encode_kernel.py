"""BPE of one pre-token, fast at every length: the merge step of the tokenizer's encoding engine.

Contract: `merge(parts, pairs, shift)` returns the ids left after BPE of `parts` (the ids of a pre-token's single
bytes): while some adjacent pair has a merge, merge the pair with the lowest rank, the leftmost one on ties,
exactly as GPT-2 and tiktoken do. `pairs` maps (a << shift | b) to (rank << shift | merged id). It is checked
against the plain reference `tokenizer_reference.bpe_merge` (tests/test_bpe_encode.py: Hypothesis, GPT-2's and a
trained vocabulary, and runs of a million bytes against tiktoken in benchmarks/bench_pathological.py).

Three implementations, by length (n bytes):

* `merge_list` (n < HEAP_MIN): a list of pair values, `min` and `index` in C. O(n^2), fastest for words.
* `merge_heap` (HEAP_MIN up to KERNEL_MIN, and beyond when there is no C compiler): a heap of (rank, position) over
  a linked list of parts; a popped entry whose pair has changed since it was pushed is skipped. O(n log n), in Python.
* the C kernel `_tokenization/encode_kernel.c` (from KERNEL_MIN; `Merges.merge_ids` and `merge_array` call it): a heap
  on int32 ids
  in place, with no link arrays and only the local minima in its heap: about 4-5 bytes per byte of the pre-token,
  20-60x faster than `merge_heap` (`benchmarks/bench_pathological.py --sizes 0 --kernel-vs-heap 100000`). `clib`
  builds it with the system compiler on first use (~0.1 s, once per machine: it is cached) and loads it in about a
  millisecond after.

Many pre-tokens at once (a block's new ones, `Merges.bpe_bytes`) go to one C call, `bpe_encode_words` (the list's
scan per short word, the heap kernel per long one); and many ASCII pieces to `bpe_encode_ascii_pieces`, which also
pre-tokenizes them (`Merges.bpe_ascii_pieces`). Without a compiler, `Merges.bpe_rounds` merges in numpy rounds.
"""

import ctypes
import heapq
import threading
import warnings
from pathlib import Path

import numpy as np

from cs336_basics._tokenization.chunk_table import IntMap, ragged_arange
from cs336_basics._tokenization.clib import EngineUnavailable, load_library

HEAP_MIN = 200  # bytes from which the heap beats the list (the list's C-speed scans are O(n) per merge)
BATCH_TAIL = 64  # words left in a numpy batch below which the rest finish one by one
KERNEL_MIN = 1_000  # bytes from which the C kernel beats merge_heap
KERNEL_MAX = (1 << 31) - 3  # bytes the kernel takes at most (int32 positions and end markers -(x + 2))


def merge(parts, pairs: dict[int, int], shift: int) -> tuple[int, ...]:
    """BPE of a pre-token's byte ids `parts` (a list or an array; either may be modified in place) in Python."""
    if isinstance(parts, np.ndarray):
        parts = parts.tolist()
    if len(parts) < HEAP_MIN:
        return merge_list(parts, pairs, shift)
    return merge_heap(parts, pairs, shift)


def merge_list(parts: list[int], pairs: dict[int, int], shift: int) -> tuple[int, ...]:
    """Merge the leftmost lowest pair value, updating only its two neighbouring pair values; O(n^2)."""
    get = pairs.get
    mask = (1 << shift) - 1
    inf = 1 << 100  # larger than any value
    values = [get(a << shift | b, inf) for a, b in zip(parts[:-1], parts[1:], strict=True)]
    while values:
        value = min(values)
        if value == inf:
            break
        i = values.index(value)
        parts[i] = value & mask
        del parts[i + 1]
        del values[i]
        if i > 0:
            values[i - 1] = get(parts[i - 1] << shift | parts[i], inf)
        if i < len(values):
            values[i] = get(parts[i] << shift | parts[i + 1], inf)
    return tuple(parts)


def merge_heap(parts: list[int], pairs: dict[int, int], shift: int) -> tuple[int, ...]:
    """The same merges with a heap of (pair value, left position) over a linked list; O(n log n).

    A pair value orders pairs by rank, and the left position orders equal pairs leftmost first. Dead parts are
    -1; an entry is stale when its left part died or its pair's value is no longer the one pushed."""
    get = pairs.get
    n = len(parts)
    mask = (1 << shift) - 1
    nxt = list(range(1, n + 1))  # next live part (n: none)
    prv = list(range(-1, n - 1))  # previous live part (-1: none)
    keys = [a << shift | b for a, b in zip(parts[:-1], parts[1:], strict=True)]
    heap = [(v, i) for i, v in enumerate(map(get, keys)) if v is not None]
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        value, i = pop(heap)
        a = parts[i]
        j = nxt[i]
        if a < 0 or j >= n or get(a << shift | parts[j]) != value:
            continue
        parts[i] = c = value & mask
        parts[j] = -1
        k = nxt[i] = nxt[j]
        if k < n:
            prv[k] = i
            w = get(c << shift | parts[k])
            if w is not None:
                push(heap, (w, i))
        p = prv[i]
        if p >= 0:
            w = get(parts[p] << shift | c)
            if w is not None:
                push(heap, (w, p))
    return tuple(x for x in parts if x >= 0)


_KERNEL: list = []  # [the C kernel's function, or None when it cannot be built here], once looked up
_KERNEL_LOCK = threading.Lock()
_I32P, _I64P = ctypes.POINTER(ctypes.c_int32), ctypes.POINTER(ctypes.c_int64)
_U8P = ctypes.POINTER(ctypes.c_uint8)
_MERGED = np.zeros(1, dtype=np.int64)  # merges the kernel has made in this process (see `kernel_merges`)
_MERGED_PTR = _MERGED.ctypes.data_as(_I64P)


def kernel_merges() -> int:
    """How many merges the C kernel has made in this process so far. It grows while the kernel runs (the kernel
    releases the GIL), so another thread can show progress through one huge pre-token (at most one merge a byte)."""
    return int(_MERGED[0])


def _kernel():
    """The C kernel's function (built on first use), or None when it cannot be built here: then `merge_heap` runs,
    after a warning, once per process, that says why."""
    if _KERNEL:
        return _KERNEL[0]
    with _KERNEL_LOCK:
        if not _KERNEL:
            why = None
            try:
                fn = load_library(Path(__file__).with_name("encode_kernel.c")).bpe_encode_merge
                fn.restype = ctypes.c_int64
                fn.argtypes = [
                    _I32P,
                    ctypes.c_int64,
                    _I64P,
                    ctypes.c_int64,
                    ctypes.c_int64,
                    _I32P,
                    ctypes.c_int64,
                    _I64P,
                ]
            except (EngineUnavailable, AttributeError) as e:  # (AttributeError: a build that does not export it)
                fn, why = None, e
            _KERNEL.append(fn)  # (before the warning: a warning turned into an error must not mean a retry per call)
            if why is not None:
                why = f"long pre-tokens are merged in Python (20-60x slower): the C kernel is unavailable: {why}"
                warnings.warn(why, stacklevel=1)  # (it names this line: the reason, not the caller, is what matters)
    return _KERNEL[0]


_BATCH: list = []  # [the C library with its batch functions set up, or None], once looked up (see `batch_kernel`)


def batch_kernel():
    """The C library's batch functions (`bpe_encode_words`: many pre-tokens in one call; `bpe_encode_ascii_pieces`:
    many ASCII pieces, pre-tokenized and merged in one call), built on first use; None when it cannot be built here.
    Then the tokenizer pre-tokenizes with `re` and `Merges.bpe_bytes` merges in numpy rounds (slower on a block's new
    pieces; no warning: `_kernel` warns when a long pre-token needs C)."""
    if _BATCH:
        return _BATCH[0]
    with _KERNEL_LOCK:
        if not _BATCH:
            try:
                library = load_library(Path(__file__).with_name("encode_kernel.c"))
                for fn in (library.bpe_encode_words, library.bpe_encode_ascii_pieces):
                    fn.restype = ctypes.c_int64
                    fn.argtypes = [_U8P, _I64P, ctypes.c_int64, _I32P, _I64P, ctypes.c_int64, ctypes.c_int64, _I32P]
                    fn.argtypes += [_I32P, _I64P]
            except (EngineUnavailable, AttributeError):
                library = None
            _BATCH.append(library)
    return _BATCH[0]


def call_batch_kernel(fn, merges: "Merges", data: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, counts) of the items data[...] (uint8, every byte with an id) of the given byte lengths, by `fn`, one of
    `batch_kernel()`'s functions: ids concatenated in order (int64), counts[i] the ids of item i."""
    data = np.ascontiguousarray(data, dtype=np.uint8)
    lengths = np.ascontiguousarray(lengths, dtype=np.int64)
    out = np.empty(data.size, dtype=np.int32)  # (BPE never makes more ids than bytes)
    counts = np.empty(lengths.size, dtype=np.int64)
    slots = np.ascontiguousarray(merges.pair_map.slots, dtype=np.int64)
    written = fn(
        data.ctypes.data_as(_U8P),
        lengths.ctypes.data_as(_I64P),
        lengths.size,
        merges.byte_ids_i32.ctypes.data_as(_I32P),
        slots.ctypes.data_as(_I64P),
        merges.pair_map.bits,
        merges.shift,
        merges.token_lengths.ctypes.data_as(_I32P),
        out.ctypes.data_as(_I32P),
        counts.ctypes.data_as(_I64P),
    )
    if written < 0:
        raise MemoryError(f"the C BPE kernel ran out of memory on items of up to {int(lengths.max()):,} bytes")
    return out[:written].astype(np.int64), counts


def merge_kernel(ids: np.ndarray, pair_map: IntMap, shift: int, lengths: np.ndarray, room: int = 0) -> np.ndarray:
    """BPE of the byte ids `ids` (a contiguous int32 array, modified) by the C kernel: the ids left, as a new int32
    array. lengths: token id -> byte length (int32). `room` > 0 is a test hook (the heap refills with only that much
    room). Needs n < 2**31 - 2 (a pre-token under 2 GB) and `_kernel()`."""
    if ids.dtype != np.int32 or not ids.flags.c_contiguous or lengths.dtype != np.int32 or ids.size > KERNEL_MAX:
        raise ValueError(
            f"merge_kernel needs contiguous int32 ids (at most {KERNEL_MAX:,}) and int32 lengths, not {ids.size:,} "
            f"{ids.dtype} ids and {lengths.dtype} lengths"
        )
    slots = np.ascontiguousarray(pair_map.slots, dtype=np.int64)
    ptr = ids.ctypes.data_as(_I32P)
    slots_ptr, lengths_ptr, merged_ptr = slots.ctypes.data_as(_I64P), lengths.ctypes.data_as(_I32P), _MERGED_PTR
    n = _kernel()(ptr, ids.size, slots_ptr, pair_map.bits, shift, lengths_ptr, room, merged_ptr)
    if n < 0:
        raise MemoryError(f"the C BPE kernel ran out of memory on a pre-token of {ids.size:,} bytes")
    return ids[:n].copy()


class Merges:
    """A merge list as lookup tables on token ids, and BPE of pre-tokens with them: one at a time (`bpe`, `merge`
    above, by length) or thousands at once (`bpe_bytes`, numpy rounds). Built by the tokenizer.

    token_to_id: token bytes -> id (it must hold every merge's parts and result); merges: (a, b) in rank order.
    """

    def __init__(self, token_to_id: dict[bytes, int], merges: list[tuple[bytes, bytes]]):
        # pair (a, b) -> (rank << shift) | merged_id in one int-keyed dict, so the lowest value is the earliest
        # merge and its low bits are the merged token's id.
        self.shift = max(max(token_to_id.values(), default=0).bit_length(), 1)
        lookup = token_to_id.get
        firsts, seconds = [a for a, _ in merges], [b for _, b in merges]
        a_ids, b_ids = list(map(lookup, firsts)), list(map(lookup, seconds))
        merged_ids = list(map(lookup, map(bytes.__add__, firsts, seconds)))
        if None in a_ids or None in b_ids or None in merged_ids:
            for rank, (a, b) in enumerate(merges):
                for part in (a, b, a + b):
                    if part not in token_to_id:
                        raise ValueError(f"merges[{rank}] = {(a, b)!r} needs {part!r}, which is not in vocab")
        keys = np.array(a_ids, dtype=np.int64) << self.shift | np.array(b_ids, dtype=np.int64)
        values = np.arange(len(merged_ids), dtype=np.int64) << self.shift | np.array(merged_ids, dtype=np.int64)
        # a pair listed twice: the first (lowest rank) is written last, and wins
        self.pair_table: dict[int, int] = dict(zip(keys[::-1].tolist(), values[::-1].tolist(), strict=True))
        self.byte_ids: list[int | None] = [token_to_id.get(bytes((b,))) for b in range(256)]
        # The same table as a numpy hash map, for `bpe_bytes` (many pairs looked up at once) and the C kernel.
        self.pair_map = IntMap(
            np.fromiter(self.pair_table.keys(), dtype=np.int64, count=len(self.pair_table)),
            np.fromiter(self.pair_table.values(), dtype=np.int64, count=len(self.pair_table)),
        )
        self.byte_ids_np = np.array([-1 if i is None else i for i in self.byte_ids], dtype=np.int64)
        self.byte_ids_i32 = self.byte_ids_np.astype(np.int32)  # (the kernel's ids: 4 bytes per byte of a pre-token)
        # byte length of every token, for the kernel (a merged token's length is its parts' lengths added up)
        self.token_lengths = np.zeros(max(token_to_id.values(), default=0) + 1, dtype=np.int32)
        self.token_lengths[list(token_to_id.values())] = list(map(len, token_to_id))
        self.byte_missing = self.byte_ids_np < 0  # per byte value: has no id
        # value of every byte pair (b0 << 8 | b1): the first round of BPE is a plain gather
        byte_ids = np.maximum(self.byte_ids_np, 0)
        self.byte_pair_values = self.pair_values_of(np.repeat(byte_ids, 256), np.tile(byte_ids, 256))

    def bpe(self, pretoken: str) -> tuple[int, ...]:
        """BPE of one pre-token (`merge` of its byte ids); a byte without an id raises ValueError."""
        return self.bpe_from_bytes(pretoken.encode("utf-8"))

    def bpe_from_bytes(self, pretoken_bytes: bytes) -> tuple[int, ...]:
        if len(pretoken_bytes) >= HEAP_MIN:  # an array: no Python int per byte of a long pre-token
            parts = self.byte_ids_i32[np.frombuffer(pretoken_bytes, dtype=np.uint8)]
            if parts.min() >= 0:
                return self.merge_ids(parts)
        parts = list(map(self.byte_ids.__getitem__, pretoken_bytes))
        if None in parts:
            pretoken = pretoken_bytes[:40].decode("utf-8", errors="replace")
            shown = f"{pretoken!r}" + (f" ... ({len(pretoken_bytes):,} bytes)" if len(pretoken_bytes) > 40 else "")
            missing = pretoken_bytes[parts.index(None)]
            raise ValueError(
                f"cannot encode {shown}: byte {bytes((missing,))!r} is not in the vocabulary "
                "(a byte-level vocab needs all 256 single bytes)"
            )
        return self.merge_ids(parts)

    def merge_ids(self, parts) -> tuple[int, ...]:
        """`merge` of a list (modified in place) or array of token ids (by the C kernel from KERNEL_MIN of them)."""
        if len(parts) >= KERNEL_MIN:
            return tuple(self.merge_array(np.asarray(parts, dtype=np.int32)).tolist())
        return merge(parts, self.pair_table, self.shift)

    def bpe_batch(self, pretokens: list[str]) -> list[tuple[int, ...]]:
        """`bpe` of each pre-token, computed together by `bpe_bytes`."""
        encoded = [p.encode("utf-8") for p in pretokens]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        if (self.byte_ids_np[data] < 0).any():
            return [self.bpe(p) for p in pretokens]  # raises the error naming the missing byte
        ids, counts = self.bpe_bytes(data, lengths)
        ends = np.cumsum(counts).tolist()
        flat = ids.tolist()
        return [tuple(flat[e - c : e]) for e, c in zip(ends, counts.tolist(), strict=True)]

    def bpe_bytes(self, data: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, counts): BPE of the words data[...] (uint8) of the given byte lengths (> 0), ids concatenated in
        order, the same as `merge` word by word: in one call of the C batch kernel, else in numpy rounds
        (`bpe_rounds`). Every byte must have an id (checked by the caller)."""
        if batch_kernel() is not None:
            return call_batch_kernel(batch_kernel().bpe_encode_words, self, data, lengths)
        return self.bpe_rounds(data, lengths)

    def bpe_ascii_pieces(self, data: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, counts): each ASCII piece data[...] of the given byte lengths encoded on its own (GPT-2's pre-tokens,
        then BPE of each), ids concatenated in order, by the C batch kernel (`batch_kernel()` must not be None).
        Every byte must have an id (checked by the caller)."""
        return call_batch_kernel(batch_kernel().bpe_encode_ascii_pieces, self, data, lengths)

    def bpe_rounds(self, data: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`bpe_bytes` in numpy, with no C: the fallback where there is no C compiler.

        Same result as `_bpe` word by word (one merge per word per round, the leftmost of the lowest value), but
        each round is vectorized over all unfinished words: for thousands of new words this is several times
        faster than the Python loop. Words leave the arrays as they finish; the last few finish in `_merge`.
        Every byte must have an id (checked by the caller).
        """
        num_words = lengths.size
        long = np.flatnonzero(lengths >= HEAP_MIN)
        if long.size:  # long words merge one by one (O(n log n) each); numpy rounds would take O(n) rounds
            return self._bpe_bytes_with_long(data, lengths, long)
        flat_bytes = data.astype(np.int64)
        ids = self.byte_ids_np[flat_bytes]
        word = np.repeat(np.arange(num_words, dtype=np.int64), lengths)
        mask = (1 << self.shift) - 1
        inf = np.iinfo(np.int64).max
        # values[i]: value of the pair (ids[i], ids[i + 1]); inf across words, for non-merges and at the end.
        values = np.full(ids.size, inf, dtype=np.int64)
        values[:-1] = self.byte_pair_values[(flat_bytes[:-1] << 8) | flat_bytes[1:]]
        values[np.flatnonzero(word[:-1] != word[1:])] = inf
        done_words, done_ids = [], []  # (word label per id, ids) of the words finished in each round
        while ids.size:
            starts = np.flatnonzero(np.concatenate(([True], word[1:] != word[:-1])))
            sizes = np.diff(np.append(starts, ids.size))
            word_min = np.minimum.reduceat(values, starts)
            done = word_min == inf
            if done.any():  # finished words leave the arrays
                finished = np.repeat(done, sizes)
                done_words.append(word[finished])
                done_ids.append(ids[finished])
                keep = ~finished
                ids, word, values = ids[keep], word[keep], values[keep]
                if not ids.size:
                    break
                word_min, starts, sizes = word_min[~done], None, sizes[~done]
                starts = np.cumsum(sizes) - sizes
            if starts.size <= BATCH_TAIL:  # a few long words are left: a numpy round per merge costs more
                for w, part in zip(word[starts].tolist(), np.split(ids, starts[1:]), strict=True):
                    merged = self.merge_ids(part.tolist())
                    done_words.append(np.full(len(merged), w, dtype=np.int64))
                    done_ids.append(np.array(merged, dtype=np.int64))
                break
            candidates = np.flatnonzero(values == np.repeat(word_min, sizes))
            cand_word = word[candidates]
            first = candidates[np.concatenate(([True], cand_word[1:] != cand_word[:-1]))]  # leftmost per word
            ids[first] = values[first] & mask
            keep = np.ones(ids.size, dtype=bool)
            keep[first + 1] = False
            ids, word, values = ids[keep], word[keep], values[keep]
            merged = first - np.arange(first.size)  # positions of the merged tokens after the deletions
            # Only the pairs next to a merged token change: (merged, right neighbour) and (left neighbour, merged).
            right = merged + 1
            has_right = right < ids.size
            has_right[has_right] = word[right[has_right]] == word[merged[has_right]]
            values[merged] = inf
            values[merged[has_right]] = self.pair_values_of(ids[merged[has_right]], ids[right[has_right]])
            left = merged - 1
            has_left = left >= 0
            has_left[has_left] = word[left[has_left]] == word[merged[has_left]]
            values[left[has_left]] = self.pair_values_of(ids[left[has_left]], ids[merged[has_left]])
        labels = np.concatenate(done_words) if done_words else np.zeros(0, dtype=np.int64)
        order = np.argsort(labels, kind="stable")  # each word's ids stay in order
        out = np.concatenate(done_ids)[order] if done_ids else np.zeros(0, dtype=np.int64)
        return out, np.bincount(labels, minlength=num_words)

    def _bpe_bytes_with_long(self, data: np.ndarray, lengths: np.ndarray, long: np.ndarray):
        """`bpe_rounds` where the words `long` are merged one by one and the others together."""
        starts = np.cumsum(lengths) - lengths
        short = np.flatnonzero(lengths < HEAP_MIN)
        counts = np.zeros(lengths.size, dtype=np.int64)
        short_ids, counts[short] = self.bpe_rounds(data[ragged_arange(starts[short], lengths[short])], lengths[short])
        spans = zip(starts[long].tolist(), lengths[long].tolist(), strict=True)
        long_ids = [self.merge_array(self.byte_ids_i32[data[a : a + m]]) for a, m in spans]
        counts[long] = [ids.size for ids in long_ids]
        out_start = np.cumsum(counts) - counts
        out = np.empty(int(counts.sum()), dtype=np.int64)
        out[ragged_arange(out_start[short], counts[short])] = short_ids
        for w, ids in zip(long.tolist(), long_ids, strict=True):
            out[out_start[w] : out_start[w] + len(ids)] = ids
        return out, counts

    def merge_array(self, ids: np.ndarray) -> np.ndarray:
        """`merge_ids` of an int32 array of byte ids (modified), as an array: no Python int per id of a huge
        pre-token. The kernel needs int32 ids and positions below 2**31 - 2 (a pre-token of 2 GB)."""
        if KERNEL_MIN <= ids.size <= KERNEL_MAX and _kernel() is not None:
            ids = np.ascontiguousarray(ids, dtype=np.int32)
            return merge_kernel(ids, self.pair_map, self.shift, self.token_lengths)
        return np.array(merge(ids, self.pair_table, self.shift), dtype=np.int64)

    def pair_values_of(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """Vectorized `_pair_table.get((left << shift) | right, inf)`."""
        return self.pair_map.get((left << self.shift) | right, np.iinfo(np.int64).max)
