"""BPE of one pre-token, fast at every length: the merge step of the tokenizer's encoding engine.

Contract: `merge(parts, pairs, shift)` returns the ids left after BPE of `parts` (the ids of a pre-token's single
bytes): while some adjacent pair has a merge, merge the pair with the lowest rank, the leftmost one on ties,
exactly as GPT-2 and tiktoken do. `pairs` maps (a << shift | b) to (rank << shift | merged id). It is checked
against the plain reference `tokenizer_reference.bpe_merge` (tests/test_bpe_encode.py: Hypothesis, GPT-2's and a
trained vocabulary, and runs of a million bytes against tiktoken in benchmarks/bench_pathological.py).

Three implementations, by length (n bytes):

* `merge_list` (n < HEAP_MIN): a list of pair values, `min` and `index` in C. O(n^2), fastest for words.
* `merge_heap` (up to NUMBA_MIN): a heap of (rank, position) over a linked list of parts; a popped entry whose
  pair has changed since it was pushed is skipped. O(n log n), in Python.
* `_numba_merge` (from NUMBA_MIN): the same heap compiled with numba (`cache=True`; numba is imported only when
  such a pre-token appears; without numba, `merge_heap` runs). ~50x faster than `merge_heap`.
"""

import heapq

import numpy as np

HEAP_MIN = 200  # bytes from which the heap beats the list (the list's C-speed scans are O(n) per merge)
NUMBA_MIN = 100_000  # bytes from which importing numba and loading its compiled kernel (0.5-1 s) pays off


def merge(parts, pairs: dict[int, int], shift: int, table=None) -> tuple[int, ...]:
    """BPE of a pre-token's byte ids `parts` (a list, modified in place, or an int64 array). `table`: `pairs` as
    an `_piece_table.IntMap`, which the compiled kernel reads."""
    if len(parts) >= NUMBA_MIN and table is not None:
        kernel = _numba_kernel()
        if kernel is not None:
            return tuple(kernel(np.array(parts, dtype=np.int64), table.slots, table.bits, shift).tolist())
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


_KERNEL = []


def _numba_kernel():
    """The compiled heap merge, or None when numba is not installed (imported and compiled on first use)."""
    if not _KERNEL:
        try:
            from cs336_basics._bpe_encode_numba import merge_heap_kernel
        except ImportError:
            merge_heap_kernel = None
        _KERNEL.append(merge_heap_kernel)
    return _KERNEL[0]
