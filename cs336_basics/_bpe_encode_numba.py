"""`_bpe_encode.merge_heap`'s merges compiled with numba (`cache=True`): BPE of one long pre-token in O(n log n) time
and about 4-5 bytes of memory per byte of the pre-token.

Kept in its own module so that the tokenizer imports numba only when a pre-token of NUMBA_MIN bytes appears.
Checked against `merge_heap` and `tokenizer_reference.bpe_merge` (tests/test_bpe_encode.py).

Legend: the pre-token's parts live in `ids` (int32, one slot per byte, modified in place): a part starting at byte x
holds its token id at ids[x] and spans lengths[ids[x]] bytes, so the next part starts at x + lengths[ids[x]]; the
slots inside a part are negative, and the last slot of a part of 2+ bytes holds -(x + 2), so the part before any
part is found in O(1) too (no link arrays). v(x): the rank of the merge of the pair at part x (x and the next part),
_NONE when there is none. The next merge is the leftmost part with the lowest v, which is a *local minimum*: v(x) <
v(previous part) and v(x) <= v(next part). The heap holds (rank << 32 | x) for every local minimum (so a run of one
byte keeps it tiny, and it never needs more than one entry per two parts), and entries gone stale, which are
skipped when popped: a popped entry is merged only if the pair at x still has that rank. `slots` is
`_piece_table.IntMap`'s open-addressing table of pair key -> (rank << shift | merged id).
"""

import numpy as np
from numba import njit

from cs336_basics._piece_table import _K1  # IntMap's Fibonacci hashing constant: the kernel must hash as IntMap does

_LOW32 = (1 << 32) - 1
_NONE = 1 << 62  # v of a part whose pair has no merge, or that is the last part


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
def _rank(ids, lengths, slots, bits, shift, x):
    """v(x): the rank of the pair at part x (x < 0: no part), or _NONE."""
    if x < 0:
        return _NONE
    a = ids[x]
    y = x + lengths[a]
    if y >= ids.size:
        return _NONE
    v = _get(slots, bits, (np.int64(a) << shift) | np.int64(ids[y]))
    return _NONE if v < 0 else v >> shift


@njit(cache=True, inline="always")
def _prev(ids, x):
    """The part before part x, or -1."""
    if x <= 0:
        return -1
    y = np.int64(ids[x - 1])
    return x - 1 if y >= 0 else -y - 2


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
def _fill_heap(ids, lengths, heap, slots, bits, shift):
    """(heap, size): every local minimum's entry, heapified, in `heap` or a larger array. The array returned has
    room for at least half as many entries again plus 1/16 of the parts (so refills are amortized O(1) a push)."""
    n = ids.size
    size = 0
    parts = 0
    x = 0
    v_before = _NONE
    v = _rank(ids, lengths, slots, bits, shift, 0)
    while x < n:
        y = x + lengths[ids[x]]
        v_after = _rank(ids, lengths, slots, bits, shift, y) if y < n else _NONE
        if v < v_before and v <= v_after:
            if size == heap.size:
                bigger = np.empty(2 * heap.size + 16, dtype=np.int64)
                bigger[:size] = heap[:size]
                heap = bigger
            heap[size] = (v << 32) | x
            size += 1
        v_before, v, x = v, v_after, y
        parts += 1
    want = size + size // 2 + parts // 16 + 16
    if heap.size < want:
        bigger = np.empty(want, dtype=np.int64)
        bigger[:size] = heap[:size]
        heap = bigger
    for k in range(size // 2 - 1, -1, -1):
        _sift_down(heap, size, k)
    return heap, size


@njit(cache=True)
def merge_heap_kernel(ids, slots, bits, shift, lengths):
    """BPE of the byte ids `ids` (int32, modified): the ids left after merging (leftmost lowest rank first), as a new
    int32 array. lengths[t]: the byte length of token t (a merge's token is its parts' bytes, so lengths add up)."""
    n = ids.size
    if n == 0:
        return ids.copy()
    mask = (1 << shift) - 1
    heap, size = _fill_heap(ids, lengths, np.empty(16, dtype=np.int64), slots, bits, shift)
    while size:
        top = heap[0]
        size -= 1
        heap[0] = heap[size]
        _sift_down(heap, size, 0)
        i = top & _LOW32
        a = np.int64(ids[i])
        if a < 0:
            continue
        j = i + lengths[a]
        if j >= n:
            continue
        b = np.int64(ids[j])
        v = _get(slots, bits, (a << shift) | b)
        if v < 0 or (v >> shift) != (top >> 32):
            continue  # stale: the pair changed since this entry was pushed
        k = j + lengths[b]  # the part after the merged one
        ids[j] = -1
        ids[i] = v & mask
        ids[k - 1] = -(i + 2)
        if size + 4 > heap.size:  # full of stale entries: refill (it then holds every local minimum already)
            heap, size = _fill_heap(ids, lengths, heap, slots, bits, shift)
            continue
        # v changed at p (pair p, new part) and i (new part, k); so the parts whose local-minimum status can change
        # are pp, p, i and k. Push those that are local minima now and did not already have a valid entry.
        p = _prev(ids, i)
        pp = _prev(ids, p)
        vi = _rank(ids, lengths, slots, bits, shift, i)
        vp = _rank(ids, lengths, slots, bits, shift, p)
        vk = _rank(ids, lengths, slots, bits, shift, k) if k < n else _NONE
        if vi < vp and vi <= vk:
            _push(heap, size, (vi << 32) | i)
            size += 1
        vpp = _rank(ids, lengths, slots, bits, shift, pp)
        if vp < vpp and vp <= vi:
            _push(heap, size, (vp << 32) | p)
            size += 1
        if k < n and vk < vi:
            kk = k + lengths[ids[k]]
            if vk <= (_rank(ids, lengths, slots, bits, shift, kk) if kk < n else _NONE):
                old = _get(slots, bits, (b << shift) | np.int64(ids[k]))  # v(j) before: was k a minimum already?
                if old >= 0 and vk >= (old >> shift):
                    _push(heap, size, (vk << 32) | k)
                    size += 1
        if vpp <= vp and vpp < _rank(ids, lengths, slots, bits, shift, _prev(ids, pp)):
            old = _get(slots, bits, (np.int64(ids[p]) << shift) | a)  # v(p) before: was pp a minimum already?
            if old >= 0 and vpp > (old >> shift):
                _push(heap, size, (vpp << 32) | pp)
                size += 1
    w = 0
    x = 0
    while x < n:  # the parts left, moved to the front
        t = ids[x]
        ids[w] = t
        w += 1
        x += lengths[t]
    return ids[:w].copy()
