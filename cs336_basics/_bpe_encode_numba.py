"""`_bpe_encode.merge_heap` compiled with numba (`cache=True`): BPE of one long pre-token in O(n log n).

Kept in its own module so that the tokenizer imports numba only when a pre-token of NUMBA_MIN bytes appears.
Checked against `merge_heap` and `tokenizer_reference.bpe_merge` (tests/test_bpe_encode.py).

Legend: ids[i] is part i's token id (-1 once merged into its left neighbour); nxt/prv link the live parts; the heap
holds (rank << 32 | left position) of every pair pushed, stale ones included (skipped when popped); `slots` is
`_piece_table.IntMap`'s open-addressing table of pair key -> (rank << shift | merged id).
Memory: about 28 bytes per byte of the pre-token (ids 8, links 8, heap 12).
"""

import numpy as np
from numba import njit

from cs336_basics._piece_table import _K1  # IntMap's Fibonacci hashing constant: the kernel must hash as IntMap does

_LOW32 = (1 << 32) - 1


@njit(cache=True, inline="always")
def _get(slots, bits, key):
    """IntMap.get of one key: its value, or -1."""
    mask = (1 << bits) - 1
    pos = np.int64((np.uint64(key) * _K1) >> np.uint64(64 - bits))
    while True:
        k = slots[pos, 0]
        if k == key:
            return slots[pos, 1]
        if k < 0:
            return -1
        pos = (pos + 1) & mask


@njit(cache=True, inline="always")
def _sift_down(heap, size, i):
    item = heap[i]
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and heap[child + 1] < heap[child]:
            child += 1
        if heap[child] >= item:
            break
        heap[i] = heap[child]
        i = child
    heap[i] = item


@njit(cache=True, inline="always")
def _push(heap, size, item):
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if heap[parent] <= item:
            break
        heap[i] = heap[parent]
        i = parent
    heap[i] = item


@njit(cache=True)
def _fill_heap(ids, nxt, heap, slots, bits, shift):
    """Put every live pair with a merge into `heap` (from empty) and heapify it; return its size."""
    n = ids.size
    size = 0
    i = 0
    while i < n and ids[i] < 0:
        i += 1
    while i < n and nxt[i] < n:
        j = nxt[i]
        v = _get(slots, bits, (ids[i] << shift) | ids[j])
        if v >= 0:
            heap[size] = ((v >> shift) << 32) | i
            size += 1
        i = j
    for k in range(size // 2 - 1, -1, -1):
        _sift_down(heap, size, k)
    return size


@njit(cache=True)
def merge_heap_kernel(ids, slots, bits, shift):
    """BPE of the byte ids `ids` (int64, modified): the ids left after merging, leftmost lowest rank first."""
    n = ids.size
    mask = (1 << shift) - 1
    nxt = np.arange(1, n + 1, 1, np.int32)
    prv = np.arange(-1, n - 1, 1, np.int32)
    # Stale entries pile up (2 pushes per merge); when the heap is full it is rebuilt from the live pairs, which
    # are at most n - 1 and at most 2/3 of the capacity: amortized O(1), and memory stays 12 bytes per byte.
    heap = np.empty(n + n // 2 + 2, dtype=np.int64)
    size = _fill_heap(ids, nxt, heap, slots, bits, shift)
    while size:
        top = heap[0]
        size -= 1
        heap[0] = heap[size]
        _sift_down(heap, size, 0)
        i = top & _LOW32
        a = ids[i]
        j = nxt[i]
        if a < 0 or j >= n:
            continue
        v = _get(slots, bits, (a << shift) | ids[j])
        if v < 0 or (v >> shift) != (top >> 32):
            continue  # stale: the pair changed since this entry was pushed
        c = v & mask
        ids[i] = c
        ids[j] = -1
        k = nxt[j]
        nxt[i] = k
        if k < n:
            prv[k] = i
        if size + 2 > heap.size:
            size = _fill_heap(ids, nxt, heap, slots, bits, shift)  # (holds the new pairs of c already)
            continue
        if k < n:
            w = _get(slots, bits, (c << shift) | ids[k])
            if w >= 0:
                _push(heap, size, ((w >> shift) << 32) | i)
                size += 1
        p = prv[i]
        if p >= 0:
            w = _get(slots, bits, (ids[p] << shift) | c)
            if w >= 0:
                _push(heap, size, ((w >> shift) << 32) | p)
                size += 1
    return ids[ids >= 0]
